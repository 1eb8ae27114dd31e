"""The one exception type for mistakes a user can fix (bad path, unknown column, missing weights).

The CLI prints these as a single line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class AuditError(Exception):
    """A user-facing error: the message says what is wrong and what to do about it."""


def internal_errors_note(n: int) -> str:
    """The sentence every output gives next to a count of images audit failed on through its own fault."""
    return (f"{n} image(s) failed through a fault of audit, not of your data: this is a bug of audit (please "
            "report it with the reason stored in the errors table); once fixed, `audit scan --retry-errors` "
            "scans exactly those again")
