"""Long work started from a page: every failure a user can cause becomes a message, never a traceback."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from bloodcells.inputs import InputError
from bloodcells.settings import settings
from bloodcells.store import DatabaseUnavailable, StoreError
from bloodcells.taxonomy import UnknownLabelError

log = logging.getLogger("bloodcells.app")


@contextmanager
def run_safely(what: str) -> Iterator[dict]:
    """Run the block; on failure show why and leave the yielded dict empty (so it reads as false).

    Streamlit's own stop/rerun exceptions are not ``Exception``s and pass through untouched.
    """
    outcome: dict = {}
    try:
        yield outcome
    except DatabaseUnavailable as error:
        outcome.clear()
        st.error(f"The database is not available: {error}. Nothing was half-stored; try again when it is back.")
    except StoreError as error:  # not an outage ("analysis #5 was marked failed meanwhile"): said as what it is
        outcome.clear()
        st.error(f"{what} failed: {error}. Nothing was half-stored.")
    except Exception as error:
        outcome.clear()
        if isinstance(error, InputError | UnknownLabelError):  # the user's files
            st.error(f"{what}: {error}")
        elif isinstance(error, OSError) and error.errno == errno.ENOSPC:  # the server's disk, not the user's files
            st.error(f"{what} failed: the server's disk is full (the data folder is {settings().data_dir}). "
                     "Nothing was half-stored; ask whoever runs the server to free space, then try again.")
        else:  # a message in words for the user; the traceback goes to the server log
            # bloodcells' own ValueErrors say what the user asked wrong (too few cells, a version decided
            # already): no traceback for them (six in the log for one afternoon's adapting)
            if not (isinstance(error, ValueError) and type(error).__module__.startswith("bloodcells.")):
                log.exception("%s failed", what)
            st.error(f"{what} failed: {error}")
