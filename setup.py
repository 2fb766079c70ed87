"""Which files the distribution ships (the metadata is in pyproject.toml).

The repository keeps the dashboard at the top level (``app/``, ``pages/``), as the product's card names
them; installed, they live under this distribution's own name, ``opd_lab_dashboard``, so no top-level
``app`` or ``pages`` package lands in site-packages to collide with someone else's. ``opd-lab`` loads
``opd_lab_dashboard/app/server.py`` by path and gives the server that folder as its import path.
"""

from setuptools import find_namespace_packages, setup

DASHBOARD = "opd_lab_dashboard"

setup(
    # Namespace discovery also lists the data folders (toy weights, examples), which setuptools wants named.
    packages=[*find_namespace_packages(include=["opd_core", "opd_core.*"], exclude=["*.__pycache__"]),
              f"{DASHBOARD}.app", f"{DASHBOARD}.app.static", f"{DASHBOARD}.pages"],
    package_dir={f"{DASHBOARD}.app": "app", f"{DASHBOARD}.app.static": "app/static", f"{DASHBOARD}.pages": "pages"},
    package_data={"opd_core.toy": ["assets/**/*"], "opd_core": ["examples/*.toml"], f"{DASHBOARD}.app": ["static/*"]},
)
