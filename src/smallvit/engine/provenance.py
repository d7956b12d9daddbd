"""Where a run's numbers came from: the code's git commit, the library versions, the device, the data and recipe."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import timm
import torch
from rich.console import Console

import smallvit
from smallvit.engine.experiment import Experiment


def git_commit(console: Console | None = None) -> str | None:
    """The commit of the smallvit checkout this code runs from (``+dirty`` with uncommitted changes), else None;
    when the code is in a checkout but git cannot tell, ``console`` gets a one-line warning saying why."""
    source = Path(smallvit.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        if console is not None and any((folder / ".git").exists() for folder in source.parents):
            reason = (getattr(err, "stderr", None) or str(err)).strip().splitlines()[-1]
            console.print(f"warning: git could not tell this checkout's commit ({reason}): the summary will have none")
        return None
    return commit + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    """The versions of smallvit and the libraries whose code decides its numbers."""
    return {"smallvit": smallvit.__version__, "torch": torch.__version__, "timm": timm.__version__}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, the vector instruction set torch's kernels use on it and the threads: on a
    CPU the last two change the rounding of convolutions and reductions, so a run reproduces bit for bit only where
    both are the same (docs/reliability.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {torch.backends.cpu.get_cpu_capability()} ({torch.get_num_threads()} threads)"


def provenance(exp: Experiment, commit: str | None) -> dict:
    """What reproduces a run's numbers: the code's ``commit`` when the run (or its last resume) started, dataset,
    the content of each split, seed and recipe."""
    config = exp.config
    return {
        "git_commit": commit,
        "recipe": config.name,
        "dataset": config.data.dataset,
        "seed": config.train.seed,
        "splits": exp.splits,
    }
