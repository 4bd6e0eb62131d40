"""Streamlit entry point of the explorer: `streamlit run app.py`.

Each view is one thin page in pages/; the shared sidebar (run, seed) and the caches
live in ui/. Runs come from assets/ (the shipped one is assets/default) and from the
folder in the environment variable TDA_RUNS.
"""

import streamlit as st

st.set_page_config(page_title="tda explorer", page_icon=":material/blur_on:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/generate.py", title="Generate", icon=":material/auto_awesome:"),
    st.Page("pages/attribution.py", title="Attribution", icon=":material/leaderboard:"),
    st.Page("pages/ablation.py", title="Ablation lab", icon=":material/toggle_on:"),
    st.Page("pages/training_set.py", title="Training set", icon=":material/photo_library:"),
    st.Page("pages/diagnostics.py", title="Diagnostics", icon=":material/analytics:"),
]

st.navigation(PAGES).run()
