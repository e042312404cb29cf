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
