"""The dashboard's entry point (`streamlit run app/main.py`, started by `opd-lab`): page setup and navigation.

`opd-lab` puts the dashboard's folder on the server's import path (see ``app/server.py``); run by hand
from a checkout, use ``PYTHONPATH=. streamlit run app/main.py``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.navigation import build_navigation
from opd_core.collector import paused_until_frozen

FAVICON = Path(__file__).resolve().parent / "static" / "favicon.png"  # shipped: nothing fetched from the internet

st.set_page_config(page_title="OPD Lab", page_icon=str(FAVICON), layout="wide")
# The first page run imports what the server keeps (pandas, plotly, the app) and builds Streamlit's state: no
# collections meanwhile, then freeze it. Without this, full collections walking those objects were 41% of the
# server's CPU on page changes; the first page also renders 0.3-0.6 s sooner.
with paused_until_frozen():
    st.navigation(build_navigation(), position="sidebar").run()
