"""The README's promises that can be checked mechanically."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _python_block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLVIT_CACHE", str(tmp_path))
    scope: dict = {}
    exec(_python_block_after("## Python API"), scope)
    out = scope["out"]
    assert torch.isfinite(out.loss) and "acc1" in out.metrics


def test_ci_runs_the_readme_test_command():
    command = re.search(r"(python -m pytest[^\n`]*)", README).group(1).strip()
    assert command in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
