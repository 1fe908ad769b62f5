"""The one error the store raises for a failure of the database itself."""


class StoreError(RuntimeError):
    """A storage failure worded for a lab user (the database is down, a value is too large...)."""
