"""Keyboard review: one cell at a time, large, with its neighbours; a key per cell type.

Each key is a Streamlit button with that key as its ``shortcut``: pressing it reclassifies the
current cell (a review, with who and when) and moves to the next one. ← and → move, Backspace undoes
this session's last change by recording a new review that restores the old type (the audit trail
keeps both). The layout comes from ``bloodcells.keyboard``; a user may change it for the session.
"""

from __future__ import annotations

import time

import streamlit as st

from bloodcells.keyboard import (
    FIRST,
    LAST,
    NEXT,
    PREVIOUS,
    UNDO,
    KeyLayoutError,
    current_position,
    default_layout,
    layout_text,
    parse_layout,
)
from bloodcells.store import ChangedSince, Store
from bloodcells.taxonomy import Tree
from ui.results import cell_image_bytes
from ui.signoff import attempt

LAYOUT = "review_keys"  # session key: this user's layout, {KEY: code}
NEIGHBOURS = 2  # cells shown on each side of the current one
KEYS_PER_ROW = 4  # wide enough for "NGS · segmented neutrophil" and its key


def key_layout() -> dict[str, str]:
    return st.session_state.get(LAYOUT) or default_layout()


def cursor_key(analysis_id: int) -> str:
    return f"keyboard_cell_{analysis_id}"


def _undo_key(analysis_id: int) -> str:
    return f"keyboard_undo_{analysis_id}"


# Keys pressed faster than the page runs reach the server as clicks of the buttons last drawn, for the
# cell those showed: three keys in a row were three reviews of the first cell, the next two left
# unreviewed. Each drawing of a cell takes one key; the others are counted and said, never applied.
DRAWING = "keyboard_drawing"  # session keys: the number of the latest drawing,
KEYED = "keyboard_keyed"  # the drawing a key was taken for,
IGNORED = "keyboard_ignored"  # and (count, monotonic time of the last) keys that came too early to be taken
# The warning stays this long after the last key not applied: said once, it was drawn away by the next
# key of the same burst (or never reached the browser when that key interrupted the page's run).
IGNORED_SHOWN_SECONDS = 10.0
# A drawing takes no key until this long after the server finished it: the browser shows a cell 0.1-0.3 s
# after that, and a person answers what they see no sooner than 0.2 s later. A second key 30-400 ms after
# the first reached the buttons already drawn for the next cell, before it was on the screen, and
# reviewed it unseen.
SEEN_SECONDS = 0.4
DRAWN = "keyboard_drawn"  # session key: (the latest drawing, the monotonic time the server finished it)


def record_change(analysis_id: int, prediction_id: int, review) -> None:
    """Remember a change this session made (its review: the label it replaced, the review it followed) for
    Undo, in either review mode: Undo takes back the last change, whichever way it was made."""
    st.session_state.setdefault(_undo_key(analysis_id), []).append(
        (prediction_id, review.replaced, review.id, review.previous))


def changed_since(analysis_id: int, start: int) -> set[int]:
    """The cells (prediction ids) this session changed, from its ``start``-th change on (``changes``)."""
    return {change[0] for change in st.session_state.get(_undo_key(analysis_id), [])[start:]}


def changes(analysis_id: int) -> int:
    """How many changes of this session Undo holds for the analysis."""
    return len(st.session_state.get(_undo_key(analysis_id), []))


def undo_button(store: Store, analysis_id: int, reviewer: str, disabled: bool, key: str,
                shortcut: str | None = None) -> None:
    """"Undo my last change": gives the last changed cell back its label before (kept to retry when refused,
    unless someone changed the cell since: their change stands)."""
    stack = _undo_key(analysis_id)

    def undo_last() -> None:
        prediction_id, before, review_id, previous = st.session_state[stack][-1]

        def undo():
            try:
                return store.undo_review(prediction_id, before, reviewer, review_id)
            except ChangedSince:  # their change stands: this session's is no longer there to undo
                st.session_state[stack].pop()
                raise

        if (undoing := attempt(undo)) is not None:
            st.session_state[stack].pop()
            # the cell is as this session's change before left it: that change can be undone in turn
            st.session_state[stack] = [(p, b, undoing.id if (p, r) == (prediction_id, previous) else r, f)
                                       for p, b, r, f in st.session_state[stack]]
        st.session_state[cursor_key(analysis_id)] = prediction_id  # the keyboard view shows that cell

    st.button("Undo my last change", key=key, icon=":material/undo:", shortcut=shortcut,
              disabled=disabled or not st.session_state.get(stack), on_click=undo_last,
              help="Gives the cell back the type it had before, unreviewed if it was (both stay in the audit trail).")


def keyboard_review(store: Store, analysis, order: list, shown: list, reviewer: str, tree: Tree,
                    locked: bool) -> None:
    """Review ``shown`` (predictions, in ``order``'s order) one by one with the keyboard."""
    layout = key_layout()
    layout_settings(tree)
    disabled = locked or not reviewer
    if not shown:  # the last cell of the view was just changed: a mis-key must still be undoable
        undo_button(store, analysis.id, reviewer, disabled, "keyboard_undo", UNDO)
        return
    cursor = cursor_key(analysis.id)
    index = current_position([p.id for p in order], [p.id for p in shown], st.session_state.get(cursor))
    cell = shown[index]
    seen = cell.last_review_id  # a key applies to the cell as drawn: a colleague's review since is not overwritten
    st.session_state[cursor] = cell.id
    following = shown[index + 1].id if index + 1 < len(shown) else cell.id
    drawing = st.session_state[DRAWING] = st.session_state.get(DRAWING, 0) + 1
    ignored, last_ignored = st.session_state.get(IGNORED, (0, 0.0))
    if ignored and time.monotonic() - last_ignored > IGNORED_SHOWN_SECONDS:
        del st.session_state[IGNORED]  # said long enough: the next early key starts a new count
    elif ignored:
        st.warning(f"{ignored} key{'s' if ignored > 1 else ''} pressed before this cell was shown "
                   f"{'were' if ignored > 1 else 'was'} not applied: press again for the cell you see.")

    def name(code: str) -> str:
        return tree[code].title

    def classify(code: str) -> None:
        drawn, drawn_at = st.session_state.get(DRAWN, (None, 0.0))
        if (st.session_state.get(DRAWING) != drawing or st.session_state.get(KEYED) == drawing
                or drawn != drawing or time.monotonic() - drawn_at < SEEN_SECONDS):
            st.session_state[IGNORED] = (st.session_state.get(IGNORED, (0, 0.0))[0] + 1, time.monotonic())
            return
        st.session_state[KEYED] = drawing
        if (review := attempt(store.review, cell.id, code, reviewer, seen=seen)) is not None:
            record_change(analysis.id, cell.id, review)
            st.session_state[cursor] = following

    def move(prediction_id: int) -> None:
        st.session_state[cursor] = prediction_id

    images = st.columns([1] * NEIGHBOURS + [3] + [1] * NEIGHBOURS, vertical_alignment="center")
    for offset, column in zip(range(-NEIGHBOURS, NEIGHBOURS + 1), images, strict=True):
        if not 0 <= index + offset < len(shown):
            continue
        neighbour = shown[index + offset]
        png = cell_image_bytes(store, neighbour, 256 if offset == 0 else 96)
        with column:
            if png:
                st.image(png, width=256 if offset == 0 else 96)
            if offset == 0:
                now = f"**now {cell.final_code} · {name(cell.final_code)}**" if cell.reviewed else "not reviewed"
                st.markdown(f"Cell **{index + 1} of {len(shown)}** · {cell.filename}  \n"
                            f"predicted {cell.code} · {name(cell.code)} ({cell.confidence:.2f}) · {now}")
            else:
                st.caption(f"{neighbour.final_code} · {neighbour.filename}")

    with st.container(horizontal=True, key="keyboard_navigation"):
        st.button("First", key="keyboard_first", icon=":material/first_page:", shortcut=FIRST,
                  disabled=index == 0, on_click=move, args=(shown[0].id,))
        st.button("Previous", key="keyboard_previous", icon=":material/arrow_back:", shortcut=PREVIOUS,
                  disabled=index == 0, on_click=move, args=(shown[max(index - 1, 0)].id,))
        st.button("Next", key="keyboard_next", icon=":material/arrow_forward:", shortcut=NEXT,
                  disabled=index + 1 == len(shown), on_click=move, args=(following,))
        st.button("Last", key="keyboard_last", icon=":material/last_page:", shortcut=LAST,
                  disabled=index + 1 == len(shown), on_click=move, args=(shown[-1].id,))
        undo_button(store, analysis.id, reviewer, disabled, "keyboard_undo", UNDO)
    entries = list(layout.items())
    for start in range(0, len(entries), KEYS_PER_ROW):
        row = st.columns(KEYS_PER_ROW)
        for column, (key, code) in zip(row, entries[start:start + KEYS_PER_ROW], strict=False):
            column.button(f"{code} · {name(code)}", key=f"keyboard_key_{key}", shortcut=key, disabled=disabled,
                          type="primary" if cell.reviewed and cell.final_code == code else "secondary",
                          on_click=classify, args=(code,), width="stretch")
    st.session_state[DRAWN] = (drawing, time.monotonic())  # every key drawn: from now (and SEEN_SECONDS) on
    # A button keeps the focus once clicked: a view or mode button took ← and → for itself (the cells no longer
    # moved), and after a click on a type, Enter typed the next cell too. Given back to the page at each drawing
    # (the drawing's number makes it new, so that it runs again); a text box keeps it.
    st.html(f"<script>/* {drawing} */ if (document.activeElement?.tagName === 'BUTTON') "
            "document.activeElement.blur();</script>", unsafe_allow_javascript=True)


def layout_settings(tree: Tree) -> None:
    """Change the key layout for this session: lines of KEY: CODE, checked before use."""
    with st.expander("Key layout", icon=":material/keyboard:"):
        st.caption(f"One line per key: `KEY: CODE` (a letter or digit, not C or R, which Streamlit keeps). "
                   f"{PREVIOUS} and {NEXT} arrows move, {FIRST} and {LAST} go to the first and last cell, {UNDO} "
                   "undoes your last change.")
        text = st.text_area("Keys", layout_text(key_layout(), tree), height=240, key="review_keys_text")
        apply, reset = st.columns(2)
        if apply.button("Use this layout", key="review_keys_apply"):
            try:
                st.session_state[LAYOUT] = parse_layout(text, tree)
                st.rerun()
            except KeyLayoutError as error:
                st.error(f"This layout cannot be used: {error}")
        if reset.button("Default layout", key="review_keys_reset"):
            st.session_state.pop(LAYOUT, None)
            st.session_state.pop("review_keys_text", None)
            st.rerun()
