"""One exception type for problems a user can fix (bad names, missing files, bad checkpoints)."""


class SrqError(Exception):
    """A user-facing error: the message names the problem and the fix, on one line."""
