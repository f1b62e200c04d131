"""The error types the command line shows to users as a plain message (no traceback)."""


class UsageError(ValueError):
    """Bad input from the user: the message names the bad value and what is accepted."""


class DriverError(RuntimeError):
    """The sweep's driver could not go on (a worker that cannot start, workers that keep dying):
    not the user's input, but shown like a usage error, with where to look (the run's log)."""
