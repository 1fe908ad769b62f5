"""The errors the store raises: a failure of the database itself, a record that is not there, and the
migrations' own check."""


class StoreError(RuntimeError):
    """A storage failure worded for a lab user (the database is down, a value is too large...)."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached, or its disk is full: try again once it is back. Other StoreErrors
    (an analysis deleted or marked failed meanwhile, a value too large) are not an outage."""


class NoDatabase(StoreError):
    """An SQLite file that is not there, opened to be read, not created (``open_store(create=False)``)."""


class NotFound(KeyError):
    """No such analysis, cell or stored content: deleted meanwhile (in History, in another tab), or never
    stored. A KeyError of its own so that a page says "deleted meanwhile" for this and for no other
    KeyError (a slip in the code is not worded as a colleague's delete)."""

    def __str__(self) -> str:  # KeyError's own quotes the message: "'no analysis 5'"
        return str(self.args[0]) if self.args else ""


class MigrationCheckError(RuntimeError):
    """A schema migration left the data inconsistent; it is rolled back (``Store.upgrade`` words it)."""
