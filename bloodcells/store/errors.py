"""The one error the store raises for a failure of the database itself, and the migrations' own check."""


class StoreError(RuntimeError):
    """A storage failure worded for a lab user (the database is down, a value is too large...)."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached, or its disk is full: try again once it is back. Other StoreErrors
    (an analysis deleted or marked failed meanwhile, a value too large) are not an outage."""


class MigrationCheckError(RuntimeError):
    """A schema migration left the data inconsistent; it is rolled back (``Store.upgrade`` words it)."""
