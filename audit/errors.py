"""The one exception type for mistakes a user can fix (bad path, unknown column, missing weights).

The CLI prints these as a single line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class AuditError(Exception):
    """A user-facing error: the message says what is wrong and what to do about it."""
