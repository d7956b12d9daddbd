"""Fixtures shared by every test folder."""

import pytest


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """An empty data root and decoded-data cache of the test's own (prepared datasets and caches never leak in)."""
    monkeypatch.setenv("SMALLVIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SMALLVIT_CACHE", str(tmp_path / "cache"))
