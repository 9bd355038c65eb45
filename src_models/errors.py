"""The one exception type the user sees.

Every problem a user can fix (bad input, a stopped run, a mismatched checkpoint) raises
:class:`SemisegError` with a one-line message that names the problem and the fix. The CLI
prints it without a traceback; the plugin shows it as a notification.
"""


class SemisegError(Exception):
    """A problem with the user's input or run, with a message that says how to fix it."""


class NonFiniteLossError(SemisegError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(SemisegError):
    """A checkpoint could not be written (e.g. a full disk); the previous one is intact."""
