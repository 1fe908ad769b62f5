"""Explanation page."""

import streamlit as st

from ui.common import page

page("Explanation")
st.title("Explanation")
st.info("This page is being built.")
