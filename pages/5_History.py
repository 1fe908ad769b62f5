"""History page: past analyses from the database (open, download again, delete with confirmation), and the
count log of past differentials (filter, CSV)."""

import streamlit as st

from bloodcells import report
from bloodcells.clock import stamp
from bloodcells.store import AnalysisLocked, StoreError
from ui.common import (
    LISTED,
    choose_analysis,
    find_analyses,
    forget_open_analysis,
    link_to,
    listed_note,
    one_of,
    open_analysis,
    page,
    require_store,
    reviewer_name,
)
from ui.countlog import show_count_log
from ui.results import show_analysis

page("History")
st.title("History")
store = require_store()
reviewer_name()  # who signs off or reopens an analysis shown here
if deleted := st.session_state.pop("deleted", None):
    st.toast(f"Analysis #{deleted} deleted.")

view = one_of("View", ["analyses", "count log"], default="analyses", key="history_view",
              help="Count log: past differentials by category, date and reviewer, as CSV.")
if view == "count log":
    show_count_log(store)
    st.stop()
show, find = st.columns(2, vertical_alignment="bottom")
kind = one_of("Show", ["all", "classification", "detection"], default="all", key="history_kind", container=show)
with find:
    search = find_analyses("history_search")
rows = report.analysis_overview(store, kind=None if kind == "all" else kind, limit=LISTED, search=search,
                                also=open_analysis())
listed_note(len(rows), search)
if search and not rows:
    st.stop()
if not rows:
    st.info("No analyses yet. Classify a zip of cells or detect cells on a smear field, and it will be listed here.")
    link_to("pages/2_Classification.py")
    link_to("pages/1_Detection.py")
    st.stop()

st.dataframe(rows, hide_index=True, key="history_table",
             column_config={"id": st.column_config.NumberColumn("id", format="#%d"),
                            "count": st.column_config.NumberColumn("cells / boxes")})

labels = {row["id"]: f"#{row['id']} · {row['date']} · {row['kind']} · {row['name']} ({row['status']})" for row in rows}
analysis = choose_analysis(store, labels, "Open", "history_open")

header, actions = st.columns([4, 2])
header.subheader(f"#{analysis.id} {analysis.name}")
header.caption(f"{analysis.kind}, {stamp(analysis.created_at)} · models: "
               f"{report.model_versions_text(analysis.model_versions) or 'not recorded'}")
if analysis.kind == "classification" and analysis.status == "done":
    link_to("pages/4_Review.py", "Review this analysis", actions)

confirming = st.session_state.get("confirm_delete") == analysis.id
if refused := st.session_state.pop("delete_refused", None):
    st.error(refused)
if not confirming:
    signed = analysis.signed_off
    why_not = ("Signed off: reopen it (below) to delete it." if signed else
               "Still running: delete it once it has finished or failed." if analysis.being_stored else None)
    if actions.button("Delete…", key="delete", icon=":material/delete:", disabled=why_not is not None,
                      help=why_not):
        st.session_state["confirm_delete"] = analysis.id
        st.rerun()
else:
    st.warning(f"Delete analysis #{analysis.id} ({analysis.name}) with all its results and reviews? "
               "This cannot be undone.")
    yes, no = st.columns(2)

    def delete() -> None:  # a callback: the "Open" box can be set to the analysis shown next before it is drawn
        st.session_state.pop("confirm_delete", None)
        try:
            store.delete_analysis(analysis.id)
        except (AnalysisLocked, StoreError) as error:  # signed off in another tab since; the database full or lost
            # said in the page drawn again (stopped here, it showed a live "Yes, delete" and no analysis)
            st.session_state["delete_refused"] = f"Not deleted: {error}."
            return
        forget_open_analysis()
        # the newest one left, set rather than forgotten: forgotten, the browser's box kept naming the deleted
        # analysis above the page of another, under its Delete button
        if left := [other for other in labels if other != analysis.id]:
            st.session_state["history_open"] = left[0]
        else:
            st.session_state.pop("history_open", None)
        st.session_state["deleted"] = analysis.id

    yes.button(f"Yes, delete #{analysis.id}", type="primary", key="delete_confirmed", on_click=delete)
    if no.button("Cancel", key="delete_cancelled"):
        st.session_state.pop("confirm_delete", None)
        st.rerun()

show_analysis(store, analysis)
