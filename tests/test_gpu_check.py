"""``benchmarks/gpu_check.sh --tiny``: the prepared GPU check runs every section on the CPU with tiny sizes, on the
bundled cifar10-sample written out as cifar10-jpeg files, and records every section's figures."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smallvit.data.sample import SAMPLE_FILE

REPO = Path(__file__).resolve().parents[1]
FIGURES = {
    "env": ["cpu_count"],
    "tests": ["collected", "passed", "failed", "error", "skipped"],
    "data": ["train_images", "test_images"],
    "bench": [f"{figure}_{size}" for size in (32, 224) for figure in ("smallvit_img_s", "timm_img_s", "ratio")],
    "train": ["epochs", "images_per_s", "val_acc1", "test_acc1"],
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the check is a bash script")
@pytest.mark.skipif(not SAMPLE_FILE.is_file(), reason="the bundled cifar10-sample, the check's data, is missing")
def test_tiny_gpu_check_runs_every_section_and_records_its_figures(tmp_path):
    out = tmp_path / "out"
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        SMALLVIT_DATA=str(tmp_path / "data"),
        SMALLVIT_CACHE=str(tmp_path / "cache"),
    )
    command = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny", "--out", str(out), "--work", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    entries = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [e["section"] for e in entries] == list(FIGURES)
    for entry in entries:
        assert entry["status"] == "ok", entry
        for key in FIGURES[entry["section"]]:
            assert _is_number(entry.get(key)), (entry["section"], key, entry.get(key))
    found = {e["section"]: e for e in entries}
    tests = found["tests"]
    assert tests["collected"] >= 5 and tests["failed"] == tests["error"] == 0
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["collected"] and tests["skip_reasons"] == ["needs a CUDA GPU"]
    assert found["data"]["train_images"] == 2540 and found["data"]["test_images"] == 2000
    assert found["data"]["data_source"].startswith("bundled cifar10-sample")
    assert found["bench"]["model_224"].startswith("vit_lite patch 16 (196 tokens)")
    summary = json.loads((out / "train-summary.json").read_text())
    assert found["train"]["epochs"] == summary["epochs"] == 1
    assert found["train"]["test_acc1"] == summary["final"]["test/supervised/acc1"]  # the run's own figure, reported
    assert "summary" in (out / "gpu_check.log").read_text()
    # --tiny leaves the repository's benchmark record alone
    assert str(tmp_path) not in (REPO / "benchmarks" / "results.jsonl").read_text()
