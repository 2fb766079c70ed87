"""A missing real asset skips on a developer's machine but fails where the run requires the assets (CI)."""

from __future__ import annotations

import pytest

from tests.real_assets import unavailable


def test_a_missing_real_asset_skips_by_default(monkeypatch):
    monkeypatch.delenv("OPD_REQUIRE_REAL_ASSETS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="npm not found"):
        unavailable("npm not found")


def test_a_missing_real_asset_fails_where_the_run_requires_them(monkeypatch):
    monkeypatch.setenv("OPD_REQUIRE_REAL_ASSETS", "1")
    with pytest.raises(pytest.fail.Exception, match="npm not found.*requires the real assets"):
        unavailable("npm not found")
