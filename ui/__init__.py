"""Streamlit glue shared by the pages: cached resources, the password gate, page set-up.

The computing lives in ``bloodcells`` (which never imports streamlit); this package only adapts it
to Streamlit's caching and session model.
"""
