"""The dashboard's entry point (`streamlit run app/main.py`, started by `opd-lab`): page setup and navigation."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script from a checkout: make `app` and `opd_core` importable
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app.navigation import build_navigation  # noqa: E402

st.set_page_config(page_title="OPD Lab", page_icon=":material/school:", layout="wide")
st.navigation(build_navigation(), position="sidebar").run()
