"""The explorer's pages and the setup every page starts with: page config and navigation.

Streamlit's native multipage layout: `app.py` is Home and `pages/` holds the other
views; a page's URL is its file name without the number (`pages/1_generate.py` is
/generate). Streamlit runs a deep link such as /generate straight from the page file,
without app.py, so everything a page shares with the others (page config, navigation,
run and seed) is set by the call at the top of every page, `ui.sidebar.sidebar(title)`.
Streamlit's own file-name navigation is hidden (`client.showSidebarNavigation = false`
in .streamlit/config.toml) and drawn here with titles and icons instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

APP_TITLE = "tda explorer"
APP_ICON = ":material/blur_on:"


@dataclass(frozen=True)
class Page:
    path: str  # relative to app.py
    title: str
    icon: str

    @property
    def url(self) -> str:
        """The URL path Streamlit gives the file: its name without number and .py."""
        if self.path == "app.py":
            return ""
        return self.path.split("/")[-1].removesuffix(".py").split("_", 1)[1]


PAGES = (
    Page("app.py", "Home", ":material/home:"),
    Page("pages/1_generate.py", "Generate", ":material/auto_awesome:"),
    Page("pages/2_attribution.py", "Attribution", ":material/leaderboard:"),
    Page("pages/3_ablation.py", "Ablation lab", ":material/toggle_on:"),
    Page("pages/4_training_set.py", "Training set", ":material/photo_library:"),
    Page("pages/5_diagnostics.py", "Diagnostics", ":material/analytics:"),
    Page("pages/6_ladder.py", "Ladder", ":material/stairs:"),
)
BY_URL = {p.url: p for p in PAGES}


def configure(title: str) -> None:
    """Page config of a page (call first): its title in the browser tab, wide layout."""
    tab = APP_TITLE if title == "Home" else f"{title} · {APP_TITLE}"
    st.set_page_config(page_title=tab, page_icon=APP_ICON, layout="wide")


def navigation(container, view: dict[str, str]) -> None:
    """Links to every page, each carrying the current view (run, seed, rule) in its URL."""
    for p in PAGES:
        container.page_link(p.path, label=p.title, icon=p.icon, query_params=view)
