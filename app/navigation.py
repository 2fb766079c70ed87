"""The dashboard's page list in one place: the entry point builds navigation from it and widgets link
to pages by title (e.g. a health finding's ``page``) without knowing file paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parents[1] / "pages"


@dataclass(frozen=True)
class PageSpec:
    """One page: its file in ``pages/``, title, URL path, icon and sidebar section."""

    file: str
    title: str
    url_path: str
    icon: str
    section: str
    optional: bool = False  # shown only when the file exists (pages other helpers add)


PAGE_SPECS: tuple[PageSpec, ...] = (
    PageSpec("runs.py", "Runs", "runs", ":material/list:", "Runs"),
    PageSpec("compare.py", "Compare", "compare", ":material/compare_arrows:", "Runs"),
    PageSpec("launch.py", "Launch", "launch", ":material/rocket_launch:", "Runs", optional=True),
    PageSpec("live.py", "Live", "live", ":material/monitoring:", "Runs", optional=True),
    PageSpec("health.py", "Health", "health", ":material/health_and_safety:", "Diagnose"),
    PageSpec("inspector.py", "Token inspector", "inspector", ":material/text_fields:", "Diagnose"),
    PageSpec("side_by_side.py", "Side by side", "side-by-side", ":material/splitscreen_right:", "Diagnose"),
    PageSpec("imbalance.py", "Imbalance", "imbalance", ":material/equalizer:", "Diagnose"),
    PageSpec("drift.py", "Teacher under drift", "drift", ":material/trending_up:", "Diagnose"),
    PageSpec("mismatch.py", "Tokenizer mismatch", "mismatch", ":material/join_inner:", "Diagnose"),
    PageSpec("lab.py", "Bias/variance lab", "lab", ":material/science:", "Theory", optional=True),
)

# The page that shows the evidence of each failure mode a health finding names (its ``view``,
# one of opd_core.diagnostics.health.MODES): diagnostics name modes, only the dashboard knows pages.
MODE_PAGES: dict[str, str] = {"imbalance": "Imbalance", "drift": "Teacher under drift",
                              "mismatch": "Tokenizer mismatch", "collapse": "Teacher under drift",
                              "training": "Compare"}


_registry: dict[str, st.Page] = {}


def available_specs(pages_dir: Path = PAGES_DIR) -> list[PageSpec]:
    """The pages whose files exist (optional pages appear once their helper has added them)."""
    return [s for s in PAGE_SPECS if (pages_dir / s.file).exists() or not s.optional]


def build_navigation() -> dict[str, list]:
    """st.Page objects grouped by section, for ``st.navigation``; also remembered for :func:`page`."""
    sections: dict[str, list] = {}
    for spec in available_specs():
        page_obj = st.Page(PAGES_DIR / spec.file, title=spec.title, url_path=spec.url_path, icon=spec.icon,
                           default=spec.file == "runs.py")
        _registry[spec.title] = page_obj
        sections.setdefault(spec.section, []).append(page_obj)
    return sections


def page(title: str) -> st.Page | None:
    """The registered page with this title (None when it does not exist in this install)."""
    return _registry.get(title)
