"""bloodcells: the Streamlit entry point. It names the pages, in menu order, and runs the chosen one."""

import streamlit as st

from ui.common import PAGES

st.navigation([st.Page(path, title=title, icon=icon, default=path == "pages/0_Home.py")
               for path, (title, icon) in PAGES.items()]).run()
