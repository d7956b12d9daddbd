"""Two CPU processes under torchrun (gloo): the same loop, sharded data, one run folder."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, SMALLVIT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    args = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "smallvit.cli", "train", "quickstart"]
    args += ["epochs=1", "data.subset.per_class=10", "data.eval_subset.per_class=5", "model.overrides.depth=1"]
    args += ["train.batch_size=25", "--runs-dir", str(tmp_path / "runs"), "--name", "ddp", "--quiet"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert {"val/supervised/acc1", "test/supervised/acc1"} <= set(summary["final"])
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 2  # 100 images, 25 per rank and step, 2 ranks
