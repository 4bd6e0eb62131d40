"""The explorer's Streamlit helpers (the `tda` core never imports Streamlit)."""

# Imported whole here, under Python's import lock, by whichever page comes first: plotly
# looks pandas up lazily in sys.modules, and a page thread could otherwise find it
# half-imported by another and fail (20 visitors opening Diagnostics at once did).
import pandas  # noqa: F401
