"""Errors the entry scripts print as one line: the user's input (exit status 2), a failed rank (1)."""


class ConfigError(Exception):
    """Bad options, a teacher that does not fit, impossible settings, a diverged run."""


class DistributedFailure(RuntimeError):
    """A rank ended abnormally (killed, crashed); the message is one line."""
