"""The explorer's Streamlit helpers (the `tda` core never imports Streamlit)."""
