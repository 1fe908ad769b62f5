"""Review page."""

import streamlit as st

from ui.common import page

page("Review")
st.title("Review")
st.info("This page is being built.")
