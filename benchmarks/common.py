"""Shared by the benchmark scripts: where results go and what machine produced them."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

from smallvit.engine.provenance import git_commit

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def device_description(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {torch.get_num_threads()} threads"


def record(benchmark: str, figures: dict, device: str = "cpu") -> dict:
    """Append one result line (with command, device, code commit, versions and date) to benchmarks/results.jsonl."""
    entry = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "device": device_description(device),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        **figures,
    }
    with RESULTS.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry
