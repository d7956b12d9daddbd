"""Fixtures of the engine's tests."""

import pytest


@pytest.fixture
def no_pictures(monkeypatch):
    """Runs trained in the test skip the curves and pictures of their summary (most of a tiny run's time)."""
    import smallvit.engine.trainer as trainer

    monkeypatch.setattr(trainer, "plot_curves", lambda *args, **kwargs: None)
    monkeypatch.setattr(trainer, "draw_run_pictures", lambda *args, **kwargs: None)
