"""What a run's summary records about where its numbers came from."""

import io
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from rich.console import Console

import smallvit
import smallvit.engine.provenance as provenance
from smallvit.engine.provenance import device_name, git_commit, versions


def test_a_checkout_whose_commit_git_cannot_tell_is_said_in_one_line(monkeypatch):
    def git_timing_out(args, **kwargs):
        raise subprocess.TimeoutExpired(args, kwargs["timeout"])

    if not any((folder / ".git").exists() for folder in Path(provenance.__file__).resolve().parents):
        pytest.skip("smallvit is not installed from a checkout here")
    monkeypatch.setattr(provenance.subprocess, "run", git_timing_out)
    out = io.StringIO()
    assert git_commit(Console(file=out, width=400)) is None
    said = out.getvalue().strip()
    assert said.startswith("warning: git could not tell this checkout's commit (") and "timed out" in said
    assert "\n" not in said and said.endswith("the summary will have none")


def test_the_commit_is_git_heads_with_dirty_marked(monkeypatch):
    answers = {"rev-parse": "abc123\n", "status": " M src/smallvit/engine/trainer.py\n"}

    def git(args, **kwargs):
        return subprocess.CompletedProcess(args, 0, stdout=answers[args[1]])

    monkeypatch.setattr(provenance.subprocess, "run", git)
    assert git_commit() == "abc123+dirty"
    answers["status"] = ""
    assert git_commit() == "abc123"


def test_versions_and_the_cpu_device_are_named():
    assert versions() == {"smallvit": smallvit.__version__, "torch": torch.__version__, "timm": timm.__version__}
    name = device_name(torch.device("cpu"))
    assert name.startswith("cpu: ")
    assert name.endswith(f", {torch.backends.cpu.get_cpu_capability()} ({torch.get_num_threads()} threads)")
