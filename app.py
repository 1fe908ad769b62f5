"""bloodcells home page (the Streamlit entry point): choose a mode; see which models, database and device are in use."""

import platform

import streamlit as st

from bloodcells import report
from bloodcells.versions import version_of
from ui.common import get_store, link_to, page
from ui.models import get_classifier, get_detector, model_problem

page("Home")
st.title("bloodcells")
st.caption("Find, count, classify and explain blood and bone-marrow cells in microscope images.")

st.subheader("Choose a mode")
modes = st.columns(3)
with modes[0].container(border=True):
    link_to("pages/1_Detection.py", "**Detection**")
    st.caption("Smear fields: find the white cells, red cells and platelets, count them, and type every "
               "white cell through the tree.")
with modes[1].container(border=True):
    link_to("pages/2_Classification.py", "**Classification**")
    st.caption("A zip of single-cell images: the differential count, ready to review and export.")
with modes[2].container(border=True):
    link_to("pages/3_Explanation.py", "**Explanation**")
    st.caption("What each model of the tree looks at, level by level, and the cell's morphology in words.")
others = st.columns(3)
link_to("pages/4_Review.py", "Review and correct an analysis", others[0])
link_to("pages/5_History.py", "History of analyses", others[1])
link_to("pages/6_Training.py", "Train new models (admin)", others[2])

st.subheader("Models")
classifier = get_classifier(required=False)
if classifier is not None:
    st.markdown(f"**Classifier tree** `{classifier.tree.name}`, version `{version_of(classifier.models_dir)}`: "
                f"{len(classifier.nodes)} trained nodes, review threshold {classifier.review_threshold:.2f}")
    st.dataframe(report.classifier_overview(classifier), hide_index=True, key="classifier_models",
                 column_config={"val accuracy": st.column_config.NumberColumn(format="%.3f")})
else:
    st.warning(f"Classifier: {model_problem('classifier')}")
detector = get_detector(required=False)
if detector is not None:
    st.markdown("**Detector**")
    st.dataframe([report.detector_overview(detector)], hide_index=True, key="detector_model")
else:
    st.warning(f"Detector: {model_problem('detector')}")

st.subheader("System")
store = get_store()
if store is not None:
    st.markdown(f"Database: `{store.display_url}` ({store.backend})")
try:
    import torch

    threads = torch.get_num_threads()
    device = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"
except ImportError:
    device = "CPU"
st.markdown(f"Compute: {device}")
