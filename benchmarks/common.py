"""Shared by the benchmark scripts: where results go and what machine produced them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from smallvit.engine.provenance import device_name, git_commit

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def record(benchmark: str, figures: dict, device: str = "cpu") -> dict:
    """Append one result line (with command, device, code commit, versions and date) to benchmarks/results.jsonl."""
    entry = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "device": device_name(torch.device(device)),  # on a CPU: its instruction set and threads too
        "torch": torch.__version__,
        "git_commit": git_commit(),
        **figures,
    }
    with RESULTS.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry
