"""History page."""

import streamlit as st

from ui.common import page

page("History")
st.title("History")
st.info("This page is being built.")
