"""Does `smallvit fit --budget B` spend its budget and end annealed, also when the machine slows down mid-run?

Writes a folder of ``--classes`` × ``--per-class`` images (from a prepared dataset, default the bundled CIFAR-10
sample), runs ``smallvit fit FOLDER --budget B`` in a subprocess and, ``--hog-after`` seconds after fit starts
training, starts one CPU-bound process per core that runs until fit ends (a machine that becomes busy). Then reads
fit's record: the wall-clock of fit after decoding against B, the training loop's time against the budget it was
given, the optimizer steps, and the learning rate of the last step against the schedule's minimum.

Targets: at least 90 % of B used, at most B + 20 %, the last learning rate at the minimum (a step schedule cut off
by a slower machine would end above it), at least 100 optimizer steps for a 200-image folder at B = 15 minutes.

    python benchmarks/bench_fit_budget.py [--budget 15m] [--hog-after 120] [--dataset cifar10-sample]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import record
from PIL import Image

from smallvit.data import load_dataset


def write_folder(folder: Path, dataset: str, classes: int, per_class: int) -> None:
    """``folder/<class>/<n>.png``: the first ``per_class`` training images of the first ``classes`` classes."""
    data = load_dataset(dataset, "train")
    for label in range(classes):
        indices = (data.labels == label).nonzero().flatten()[:per_class]
        (folder / data.classes[label]).mkdir(parents=True)
        for n, index in enumerate(indices.tolist()):
            pixels = data.images[index].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / data.classes[label] / f"{n:03d}.png")


def busy(stop_at: float) -> None:
    """Keep one core busy until ``stop_at`` (a ``time.time()``) or until killed."""
    x = 0
    while time.time() < stop_at:
        x = (x * 31 + 7) % 1_000_003


def run_fit(folder: Path, output: Path, budget: str, hog_after: float | None, extra: list[str]) -> float:
    """Run fit; start the hog ``hog_after`` seconds after the training loop's first line. Returns fit's seconds."""
    command = [sys.executable, "-m", "smallvit.cli", "fit", str(folder), "--budget", budget, "--output", str(output)]
    start = time.perf_counter()
    fit = subprocess.Popen([*command, "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hogs: list[multiprocessing.Process] = []
    hog_at = None
    for line in fit.stdout:
        print(line, end="")
        if hog_after is not None and hog_at is None and line.startswith("epoch "):
            hog_at = time.perf_counter() + hog_after
        if hog_at is not None and not hogs and time.perf_counter() >= hog_at:
            print(f"-- a CPU hog starts on {os.cpu_count()} cores")
            hogs = [multiprocessing.Process(target=busy, args=(time.time() + 86400,)) for _ in range(os.cpu_count())]
            for hog in hogs:
                hog.start()
    fit.wait()
    seconds = time.perf_counter() - start
    for hog in hogs:
        hog.kill()
    if fit.returncode:
        raise SystemExit(f"fit ended with status {fit.returncode}")
    return seconds


def last_lr(run_dir: Path) -> float | None:
    """The learning rate of the last record that has one in the run's metrics."""
    lrs = [r["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "lr" in (r := json.loads(line))]
    return lrs[-1] if lrs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--hog-after", type=float, default=120.0, help="seconds of training before the hog; -1: none")
    parser.add_argument("--dataset", default="cifar10-sample")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("fit_args", nargs="*", help="more arguments for fit (e.g. overrides)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, output = Path(tmp) / "images", Path(tmp) / "fit"
        write_folder(folder, args.dataset, args.classes, args.per_class)
        hog_after = None if args.hog_after < 0 else args.hog_after
        wall_s = run_fit(folder, output, args.budget, hog_after, args.fit_args)
        fit = json.loads((output / "fit.json").read_text())
        summary = json.loads((output / "summary.json").read_text())
        config = yaml.safe_load((output / "config.yaml").read_text())
        lr_end = last_lr(output)
    budget_s, after_decoding = fit["budget_s"], fit["seconds"]["after_decoding"]
    min_lr = config["optim"]["min_lr"]
    figures = {
        "budget_s": budget_s,
        "folder": f"{args.classes} classes x {args.per_class} images of {args.dataset}",
        "hog_after_s": hog_after,
        "fit_wall_s": round(wall_s, 1),
        "after_decoding_s": after_decoding,
        "used_fraction": round(after_decoding / budget_s, 3),
        "training_loop_s": fit["seconds"]["training_loop"],
        "time_budget": fit["time_budget"],
        "steps": fit["steps_run"],
        "epochs_run": fit["epochs_run"],
        "batch": fit["batch"],
        "last_lr": lr_end,
        "min_lr": min_lr,
        "val_top1": summary["final"].get("val/supervised/acc1"),
        "test_top1": summary["final"].get("test/supervised/acc1"),  # None: the folder has no test split
        "threads": torch.get_num_threads(),
    }
    entry = record("fit_budget", figures)
    print(json.dumps({k: v for k, v in entry.items() if k not in ("command", "torch")}, indent=1))


if __name__ == "__main__":
    main()
