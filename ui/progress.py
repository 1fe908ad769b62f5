"""Progress bars for long work, and cancelling it cleanly.

Streamlit stops a running script (the user pressed Stop, clicked Cancel or another widget) by
raising a ``ScriptControlException``, a ``BaseException``, at the script's next Streamlit call,
which in long work is usually the progress update. The package's clean-up runs on any exception,
``BaseException`` included: classification and detection mark their analysis failed with the
error (nothing half-stored remains), and ``with`` blocks remove spools and uploads. The update
raises ``Cancelled`` (an ``Exception``) instead, so that the work unwinds with an error that says
what happened (a cancelled analysis reads "Cancelled: cancelled by the user"), and
``progress_bar`` re-raises Streamlit's own exception once it has, for Streamlit to stop or rerun.
An interruption at another Streamlit call (a live chart) unwinds as Streamlit's exception itself:
the same clean-up runs, and the error names that exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException


@contextmanager
def cancel_button(key: str) -> Iterator[None]:
    """A Cancel button shown while the block runs. Clicking it reruns the page, which stops the work
    at its next progress update, and sets ``st.session_state["cancelled"]`` for the page to say so."""
    slot = st.empty()
    slot.button("Cancel", key=key, icon=":material/stop_circle:", on_click=st.session_state.update,
                args=({"cancelled": True},))
    try:
        yield
    finally:
        slot.empty()


class Cancelled(Exception):
    """The user stopped the page while long work was running."""


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[..., None]]:
    """Yield a ``progress(done, total, text="")`` callback drawing a progress bar; the bar goes when done."""
    bar = st.progress(0.0, text=label)
    interruption: list[ScriptControlException] = []

    def update(done: int, total: int | None, detail: str = "") -> None:
        fraction = min(done / total, 1.0) if total else 0.0
        text = f"{label} {done} of {total}" if total else f"{label} {done}"
        text += f" · {detail}" if detail else ""
        try:
            bar.progress(fraction, text=text)
        except ScriptControlException as error:
            interruption.append(error)
            raise Cancelled("cancelled by the user") from error

    try:
        yield update
    except Cancelled:
        if interruption:
            raise interruption[0] from None
        raise
    finally:
        bar.empty()
