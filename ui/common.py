"""What every page needs: page config, the optional password, the shared store."""

from __future__ import annotations

import contextlib
import hmac
import os
from pathlib import Path

import streamlit as st

from bloodcells.clock import lab_zone, stamp
from bloodcells.inputs import STORED_PROBLEMS, skipped_counts
from bloodcells.settings import SettingsError, apply_offline_environment, settings
from bloodcells.store import NotFound, ReviewError, Store, StoreError, open_store, person_name
from bloodcells.taxonomy import default_tree

with contextlib.suppress(SettingsError):  # said by page(), on the page, where the user sees it
    apply_offline_environment()

# Every page, in menu order: file -> (title, icon). The menu is drawn by ``page()`` (Streamlit's own
# would call the home page "app", after its file). Material icons ship with Streamlit's frontend, so
# they show on any machine (emoji need a colour emoji font on the user's side).
PAGES = {
    "app.py": ("Home", ":material/home:"),
    "pages/1_Detection.py": ("Detection", ":material/center_focus_strong:"),
    "pages/2_Classification.py": ("Classification", ":material/account_tree:"),
    "pages/3_Explanation.py": ("Explanation", ":material/local_fire_department:"),
    "pages/4_Review.py": ("Review", ":material/fact_check:"),
    "pages/5_History.py": ("History", ":material/history:"),
    "pages/6_Training.py": ("Training", ":material/model_training:"),
}


def link_to(path: str, label: str | None = None, where=st) -> None:
    """A link to one of the app's pages, with its menu icon."""
    title, icon = PAGES[path]
    where.page_link(path, label=label or title, icon=icon)


def page(title: str, icon: str = "🩸") -> None:
    """Set up a page: config, password gate. Stops the script until the user is let in."""
    st.set_page_config(page_title=f"{title} · bloodcells", page_icon=icon, layout="wide")
    with st.sidebar:
        for path in PAGES:
            link_to(path)
        st.divider()
    require_password()
    try:  # a wrong setting is said once, here, rather than as a traceback where it is first used
        apply_offline_environment()
        lab_zone()
    except SettingsError as error:
        st.error(str(error))
        st.stop()


class PasswordSettingsError(RuntimeError):
    """Where the password is set cannot be read: every page stays locked rather than open to anyone."""


def _expected_password() -> str | None:
    """BLOODCELLS_PASSWORD, else ``password`` in Streamlit's secrets.toml, else None (no password)."""
    if os.environ.get("BLOODCELLS_PASSWORD", "").strip():  # blanks are unset, as for every variable
        return os.environ["BLOODCELLS_PASSWORD"]
    try:
        password = st.secrets.get("password")
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError) as error:
        # no secrets file means no password; one that cannot be parsed opened every page to anyone
        if any(Path(path).exists() for path in st.get_option("secrets.files")):
            raise PasswordSettingsError(f"{error}. Every page stays locked until it is fixed.") from error
        return None
    return None if password is None else str(password)  # `password = 1234`, unquoted, is a number


def require_password() -> None:
    try:
        expected = _expected_password()
    except PasswordSettingsError as error:
        st.error(f"The password setting cannot be read: {error}")
        st.stop()
    if not expected or st.session_state.get("authenticated"):
        return
    with st.form("login"):
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Enter"):
            if hmac.compare_digest(given.encode(), expected.encode()):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("Wrong password.")
    st.stop()


@st.cache_resource(show_spinner=False)
def _cached_store(url: str) -> Store:
    store = open_store(url)
    store.sync_cell_types(default_tree())
    return store


def get_store() -> Store | None:
    """The shared store, or None after telling the user the database cannot be reached."""
    url = settings().database_url
    try:
        store = _cached_store(url)
        store.ping()
        return store
    except StoreError as error:
        _cached_store.clear()  # so that the next run retries once the database is back
        st.error(f"The database is not available: {error}")
        return None


def require_store() -> Store:
    """The shared store; stops the page (after saying why) when the database cannot be reached."""
    store = get_store()
    if store is None:
        st.info("Check BLOODCELLS_DATABASE_URL and that the database server is running, then reload the page.")
        st.stop()
    return store


def reviewer_name() -> str:
    """Who is reviewing, asked once per session in the sidebar (every review and sign-off records it).
    A name the store would refuse (no letter or digit, a control character) is said at once and counts as
    none: refused only when recorded, it threw away an hour of training, or switched the models in use
    before the acceptance failed to be recorded."""
    # A keyed field: given value= instead, it was a new widget whenever the name changed, and a second edit made
    # before anything else reran the page (a typo put right) was dropped. Set again before it is drawn, its
    # value carries to the field of the next page (each page's is a widget of its own).
    st.session_state["reviewer_field"] = st.session_state.get("reviewer_field", st.session_state.get("reviewer", ""))
    name = st.sidebar.text_input("Your name (recorded with each review and sign-off)", key="reviewer_field",
                                 max_chars=128)
    try:
        checked = person_name(name, "review or sign-off") if name.strip() else ""
    except ReviewError as error:
        st.sidebar.error(sentence(str(error)))
        checked = ""
    st.session_state["reviewer"] = checked  # what the sign-off panel and the review buttons go by
    return checked


LISTED = 200  # analyses a list shows, newest first; older ones are found by name or id


def skipped_files(problems: list, total: int | None = None) -> None:
    """The files an upload held that were not used, each with why (the first STORED_PROBLEMS: an upload of
    100,000 unreadable files made one 14 MB block of text), folded
    away (nothing when none); ``total``: how many there were, when ``problems`` are the first of them (a stored
    analysis keeps STORED_PROBLEMS). The later pages of a multi-page file are said apart: the file was used
    (counted as a file skipped, 6 cells and "4 files were skipped" were shown for 9 files)."""
    if problems:
        count = total or len(problems)
        files, pages = skipped_counts(problems, total)
        said = ([f"{files} file{'s were' if files > 1 else ' was'} skipped"] if files else []) + (
            [f"{'later pages' if files else 'Later pages'} of {pages} file{'s' if pages > 1 else ''} not read"]
            if pages else [])
        with st.expander("; ".join(said), icon=":material/warning:"):
            listed = min(len(problems), STORED_PROBLEMS)
            st.write("\n".join(f"- {problem}" for problem in problems[:listed])
                     + (f"\n\n... and {count - listed} more" if count > listed else ""))


def find_analyses(key: str) -> str:
    """The search box of an analysis list: what to look for (name or #id), or ''."""
    return st.text_input("Find analyses", key=key, placeholder="name or #id",
                         help=f"The lists show the newest {LISTED} analyses; find older ones by name or number.")


def listed_note(shown: int, search: str) -> None:
    """Say so when a list stops at LISTED (a lab passes it in a few weeks), or when a search found none."""
    if shown >= LISTED:
        st.caption(f"The newest {LISTED} are listed: find older analyses by name or #id.")
    elif search and not shown:
        st.info(f"No analysis matches “{search}”.")


OPEN_PARAM = "analysis"  # the analysis a page has open, in its address: a reload keeps it


def open_analysis() -> int | None:
    """The analysis this session has open (chosen on another page, or by a link such as History's "Review
    this analysis"), for a list to hold even when it is older than the newest LISTED: else the list's select
    box fell back to its newest, and another analysis was opened without a word. A reload of the tab starts a
    new session: the page's address keeps the analysis (reloaded, Review showed the newest one instead, and a
    reviewer could go on reviewing or sign off another patient's cells)."""
    if (kept := st.session_state.get("analysis_id")) is not None:
        return kept
    value = st.query_params.get(OPEN_PARAM, "")
    return int(value) if value.isdecimal() and len(value) <= 18 and int(value) > 0 else None  # an id, or none


def forget_open_analysis() -> None:
    st.session_state.pop("analysis_id", None)
    st.query_params.pop(OPEN_PARAM, None)


def choose_analysis(store: Store, labels: dict[int, str], prompt: str, key: str):
    """A select box over analyses (id -> label) that remembers the choice across pages; returns the
    chosen analysis, or stops the page with a warning when it was deleted meanwhile."""
    ids = list(labels)
    previous = st.session_state.get(key)  # what this box showed last time
    remembered = open_analysis()  # or the page's address, reloaded
    for gone in sorted({previous, remembered} - {None} - set(ids)):
        if not store.count_analyses(search=f"#{gone}"):
            st.info(f"Analysis #{gone} was deleted meanwhile.")  # rather than another one shown without a word
    chosen = st.selectbox(prompt, ids, index=ids.index(remembered) if remembered in ids else 0,
                          format_func=labels.__getitem__, key=key)
    st.session_state["analysis_id"] = chosen
    st.query_params[OPEN_PARAM] = str(chosen)
    try:
        return store.get_analysis(chosen)
    except NotFound:
        st.warning(f"Analysis #{chosen} was deleted meanwhile.")
        st.stop()


def choose_cells_analysis(store: Store, key: str, nothing_yet: str):
    """Find (the newest LISTED finished ones; older ones by name or #id, in ``<key>_search``) and choose
    (``<key>_analysis``) a finished analysis with cells: a classification, or a detection's typed white cells;
    returns it with its cells loaded, or None after saying why there is none (``nothing_yet`` and a link to
    classify, when nothing was searched)."""
    search = find_analyses(f"{key}_search")
    analyses = store.list_analyses(limit=LISTED, search=search, done=True, with_cells=True, also=open_analysis())
    if len(analyses) >= LISTED:
        listed_note(len(analyses), search)
    if analyses:
        return choose_analysis(store, {a.id: f"#{a.id} · {stamp(a.created_at)} · {a.name}"
                                              + (" (white cells of smear fields)" if a.kind == "detection" else "")
                                       for a in analyses}, "Analysis", f"{key}_analysis")
    if not search:
        st.info(nothing_yet)
        link_to("pages/2_Classification.py")
    else:
        st.info(f"No finished analysis with cells matches “{search}”.")
    return None


def remembered_analysis(store: Store, state_key: str, analysis_id: int, again: str):
    """Analysis ``analysis_id``, the one this session ran last on a page (its outcome in
    ``st.session_state[state_key]``), or None after saying it was deleted since (``again``: what to
    do). Ids are never reused (store migration 0005), so a deleted one names no other analysis."""
    try:
        return store.get_analysis(analysis_id)
    except NotFound:
        st.session_state.pop(state_key)
        st.info(f"Analysis #{analysis_id} was deleted in History: {again}.")
        return None


def one_of(label: str, options: list[str], *, default: str, key: str, container=st, on_change=None,
           **options_of_the_control) -> str:
    """A segmented control that always has one option chosen. Streamlit's lets the chosen option be clicked
    off, and the page fell back to a default with none lit: "flagged" clicked again on Review showed every
    cell, "keyboard" clicked again went back to the mouse. ``on_change`` runs only when the choice changes.
    The choice outlives a visit to another page (Streamlit forgets the state of a widget a page run does not
    draw: back from History, Review was in mouse mode again)."""
    chosen = f"{key}-chosen"
    default = st.session_state.get(chosen, default)

    def changed() -> None:
        if st.session_state[key] is None:  # the chosen option clicked again: it stays chosen
            st.session_state[key] = st.session_state.get(chosen, default)
        elif on_change is not None:
            on_change()

    value = container.segmented_control(label, options, default=default, key=key, on_change=changed,
                                        **options_of_the_control) or default
    st.session_state[chosen] = value
    return value


def sentence(text: str) -> str:
    """``text`` as a sentence: its first letter upper case and a full stop, the rest as written
    (``str.capitalize`` lowered the rest: the morphology's "N:C ratio" read "n:c ratio")."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
