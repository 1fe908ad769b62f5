"""Training page."""

import streamlit as st

from ui.common import page

page("Training")
st.title("Training")
st.info("This page is being built.")
