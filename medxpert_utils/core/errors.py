"""Errors that are the user's to fix: the CLI and dashboard show their one-line message, no traceback."""


class UserError(Exception):
    """Base of every error caused by input (a bad path, params, image, query or a missing run stage)."""


class ImageLoadError(UserError, ValueError):
    """A file is not a readable image (corrupt, truncated, wrong format); the message names the file."""


class MissingModelError(UserError, OSError):
    """Weights or data could not be loaded (offline, not cached, no access); the message says what to do."""


class RunNotReadyError(UserError, FileNotFoundError):
    """A run lacks what a later stage needs; the message names the notebook to run first."""


class QueryRejectedError(UserError):
    """The query is not like the run's corpus (retrieval.ood): nothing is reported for it; ``check`` says why."""

    def __init__(self, message: str, check: object = None):
        super().__init__(message)
        self.check = check


class AudioError(UserError, ValueError):
    """A spoken query cannot be used (empty, silent, corrupt, too long or too large); the message names the fix."""
