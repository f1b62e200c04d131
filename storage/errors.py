"""Errors about stored results that the command line shows as one plain message."""


class StorageError(ValueError):
    """A table file or query that cannot be used; the message names the file or query."""
