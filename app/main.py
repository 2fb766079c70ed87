"""The dashboard's entry point (`streamlit run app/main.py`, started by `opd-lab`): page setup and navigation.

`opd-lab` puts the dashboard's folder on the server's import path (see ``app/server.py``); run by hand
from a checkout, use ``PYTHONPATH=. streamlit run app/main.py``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.navigation import build_navigation
from opd_core.collector import freeze_long_lived_once

FAVICON = Path(__file__).resolve().parent / "static" / "favicon.png"  # shipped: nothing fetched from the internet

st.set_page_config(page_title="OPD Lab", page_icon=str(FAVICON), layout="wide")
st.navigation(build_navigation(), position="sidebar").run()
# After the first page has run, the server holds what it keeps (Streamlit, pandas, plotly, the app): without
# this, full garbage collections over those objects were 41% of the server's CPU on page changes.
freeze_long_lived_once()
