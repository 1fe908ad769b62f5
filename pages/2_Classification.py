"""Classification page: drop a zip (or images) of single cells; get the differential, saved as an analysis."""

import streamlit as st

from bloodcells.classify import classify
from ui.common import page, remembered_analysis, require_store, reviewer_name
from ui.models import get_classifier
from ui.progress import cancel_button, progress_bar
from ui.results import show_analysis
from ui.uploads import ACCEPTED, upload_label, uploaded_source
from ui.work import run_safely

page("Classification")
st.title("Classification")
st.caption("Drop one .zip of single-cell images, or several images. Every cell goes down the tree of "
           "models (lineage → stage → type); the result is saved as an analysis you can review later.")
store = require_store()
reviewer_name()  # who signs off or reopens an analysis shown here
classifier = get_classifier()

files = st.file_uploader("Cell images", accept_multiple_files=True, key="cells_upload", help=ACCEPTED)
if st.button("Classify", type="primary", disabled=not files, key="classify"):
    with cancel_button("cancel_classify"), run_safely("Classification") as outcome:
        with uploaded_source(files) as source, progress_bar("Classifying cells…") as progress:
            result = classify(source, classifier=classifier, store=store, name=upload_label(files), progress=progress)
        outcome.update(analysis_id=result.analysis_id)
    if outcome:
        st.session_state["classification"] = outcome
        st.session_state["analysis_id"] = outcome["analysis_id"]
    else:  # its error stood over the last run's "Saved as analysis #6" and counts, as if they were its own
        st.session_state.pop("classification", None)

if st.session_state.pop("cancelled", False):
    st.session_state.pop("classification", None)
    st.info("Classification cancelled. Nothing half-done was kept: the analysis is marked as failed in History.")

shown = st.session_state.get("classification")
if shown:
    analysis = remembered_analysis(store, "classification", shown["analysis_id"], "classify again to see its cells")
    if analysis is None:
        st.stop()
    st.success(f"Saved as analysis #{analysis.id} ({analysis.name}).")
    show_analysis(store, analysis)
