"""Errors raised by the data layer."""


class DatasetUnavailableError(RuntimeError):
    """A data set's files are absent (or malformed) and cannot be downloaded.

    The message is always a single line that names ``--data_folder`` and the
    layout expected under it, so entry scripts can print it as is.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
