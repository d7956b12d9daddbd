"""Fixtures for the fault tests: fast real command-line processes (see ``cli_processes.py``) and one decoded-data
cache for the whole fault suite, so that each run does not decode the bundled CIFAR-10 sample again."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cli_processes import CliServer  # noqa: E402


@pytest.fixture(scope="package")
def cli():
    """``smallvit ARGS`` in a fresh process: ``cli.run(*args, env=...)`` → ``Result(returncode, stdout, stderr)``."""
    server = CliServer()
    yield server
    server.close()


@pytest.fixture(scope="package")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def env(tmp_path, data_cache, monkeypatch) -> dict:
    """The environment of a command: an empty data root, the suite's decoded-data cache; also set in this process."""
    monkeypatch.setenv("SMALLVIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SMALLVIT_CACHE", str(data_cache))
    return dict(os.environ)


@pytest.fixture
def no_pictures(monkeypatch):
    """Training in this process skips drawing the run's pictures, as the command-line children do."""
    import smallvit.engine.trainer as trainer

    for name in ("plot_curves", "draw_run_pictures"):
        if hasattr(trainer, name):
            monkeypatch.setattr(trainer, name, lambda *args, **kwargs: None)
