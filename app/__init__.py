"""OPD Lab's dashboard: the Streamlit entry point, the data layer pages read through, and reusable widgets.

Pages (in ``pages/``) stay thin: they pick data through :mod:`app.state`, call ``opd_core.diagnostics``
(through the cached views here) and hand DataFrames to the figure builders in :mod:`app.charts`.
"""
