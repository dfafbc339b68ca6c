"""One exception type for problems the user can fix.

The CLI catches it and prints its message as a single line (no traceback) with a non-zero exit,
so every message should name the problem *and* the fix.
"""


class UserError(Exception):
    """Bad input or state that the user can correct; the message is shown as is."""
