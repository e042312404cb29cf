"""Errors a user can cause and fix. Each message is one line that names the file or
key and says what to do; the CLI prints it without a traceback and exits 1."""


class FewstepError(Exception):
    """Base of every user-fixable error."""


class ConfigError(FewstepError, ValueError):
    """A bad configuration key or value."""


class InputError(FewstepError, ValueError):
    """Bad input data: an unreadable image, no face, a corrupt output."""


class WeightsError(FewstepError, RuntimeError):
    """Model weights missing, gated or unusable."""


class NetworkError(WeightsError):
    """A download failed on the way (unreachable hub, dropped connection): a retry may succeed."""


class DiskFullError(FewstepError, OSError):
    """No space left while writing an output; finished outputs stay as they are."""

    def __init__(self, path: object):
        super().__init__(f"disk full while writing {path}; free space, then rerun (finished work is kept)")


class OutOfMemoryError(FewstepError, RuntimeError):
    """The GPU ran out of memory for this batch size."""
