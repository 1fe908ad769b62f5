"""bloodcells home page: choose a mode; see which models, database and device are in use."""

import platform

import streamlit as st

from ui.common import get_store, page

page("Home")
st.title("bloodcells")
st.caption("Find, count, classify and explain blood and bone-marrow cells in microscope images.")

st.subheader("Choose a mode")
modes = st.columns(3)
modes[0].page_link("pages/1_Detection.py", label="**Detection** — smear fields: find, count and type cells", icon="🔎")
modes[1].page_link("pages/2_Classification.py", label="**Classification** — zips of single cells", icon="🧫")
modes[2].page_link("pages/3_Explanation.py", label="**Explanation** — what the model looks at", icon="🔥")

st.subheader("System")
store = get_store()
if store is not None:
    st.write(f"Database: `{store.display_url}` ({store.backend})")
    models = store.list_models()
    if models:
        st.dataframe([{"kind": m.kind, "node": m.node_code, "architecture": m.model_type.architecture,
                       "trained": m.created_at.strftime("%Y-%m-%d %H:%M"),
                       "accuracy": m.metrics.get("test_accuracy")} for m in models], hide_index=True)
    else:
        st.info("No models are registered yet.")
try:
    import torch

    device = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
except ImportError:
    device = "CPU"
st.write(f"Compute: {device}")
