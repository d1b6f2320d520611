"""Errors caused by the user's input: the entry scripts print them as one line and exit 2."""


class ConfigError(Exception):
    """Bad options, a teacher that does not fit, impossible settings, a diverged run."""
