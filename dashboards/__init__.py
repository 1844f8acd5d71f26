"""Streamlit dashboard, read-only on the registry."""
