"""The one error type the command line shows to users as a plain message (no traceback)."""


class UsageError(ValueError):
    """Bad input from the user: the message names the bad value and what is accepted."""
