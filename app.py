"""Streamlit entry point of the explorer: `streamlit run app.py`.

Each view is one thin page in app_pages/; the shared sidebar (run, seed) and the
caches live in ui/. The folder is deliberately not called `pages/`: Streamlit treats a
`pages/` folder as a v1 multipage app and, on a fresh server, runs a deep link such as
/generate without this script (no st.navigation, no page config). Runs come from
assets/ (the shipped one is assets/default) and from the folder in TDA_RUNS.
"""

import streamlit as st

st.set_page_config(page_title="tda explorer", page_icon=":material/blur_on:", layout="wide")

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/generate.py", title="Generate", icon=":material/auto_awesome:"),
    st.Page("app_pages/attribution.py", title="Attribution", icon=":material/leaderboard:"),
    st.Page("app_pages/ablation.py", title="Ablation lab", icon=":material/toggle_on:"),
    st.Page("app_pages/training_set.py", title="Training set", icon=":material/photo_library:"),
    st.Page("app_pages/diagnostics.py", title="Diagnostics", icon=":material/analytics:"),
]

st.navigation(PAGES).run()
