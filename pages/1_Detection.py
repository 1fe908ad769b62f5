"""Detection page."""

import streamlit as st

from ui.common import page

page("Detection")
st.title("Detection")
st.info("This page is being built.")
