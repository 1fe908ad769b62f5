"""Classification page."""

import streamlit as st

from ui.common import page

page("Classification")
st.title("Classification")
st.info("This page is being built.")
