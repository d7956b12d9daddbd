"""Epochs at equal wall-clock for the rows of a sweep: each row's engine step ÷ the baseline row's, at its geometry.

Each row's first stage is built with the sweep's overrides and its own, then stepped (fp32, augmentation included)
on a fixed batch of the bundled CIFAR-10 sample stored at the row's image size, with the row's model and patch size:
a step's cost depends on the geometry, the model and the objectives, not on which images it sees. Timings are
interleaved (baseline, then each row, repeated) as in ``bench_objectives.py``. A row's equal-time epochs are the
baseline's epochs divided by its step ratio, rounded: what the sweep's equal-time rows train, so that every row gets
the time of the baseline's epochs. By default the ratio is of process CPU time with one thread, the setting the
experiment queues run in (one thread per run), which other processes on the machine disturb least.

    python benchmarks/bench_equal_time.py results/sweeps/caltech101-40ep.yaml [--rows NAME ...] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from bench_objectives import engine_step, interleaved_seconds
from common import record

from smallvit.config import load_recipe
from smallvit.data import get_dataset_info
from smallvit.sweep import load_sweep


def sample_overrides(recipe: str, overrides: list[str]) -> list[str]:
    """``overrides`` with the dataset swapped for the bundled sample at the same image size."""
    stage = load_recipe(recipe, overrides).stages[0]
    image_size = stage.data.image_size or get_dataset_info(stage.data.dataset).image_size
    return [*overrides, "dataset=cifar10-sample", f"data.image_size={image_size}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("--rows", nargs="+", default=None, help="rows to time (default: all); the baseline always")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu_min", "wall_min", "cpu", "wall"], default="cpu_min")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sweep = load_sweep(args.sweep)
    baseline = next(run for run in sweep.runs if run.baseline)
    rows = [baseline] + [r for r in sweep.runs if not r.baseline and (args.rows is None or r.name in args.rows)]
    configs = {r.name: (r.recipe, [*sweep.overrides, *r.overrides]) for r in rows}
    steps = {name: engine_step(recipe, sample_overrides(recipe, over), args.batch_size) for name, (recipe, over) in
             configs.items()}  # fmt: skip
    measured = interleaved_seconds(steps, args.repeats, 1, 1)
    base_epochs = load_recipe(*configs[baseline.name]).stages[0].train.epochs
    ratios = {name: m[args.clock] / measured[baseline.name][args.clock] for name, m in measured.items()}
    equal_epochs = {name: max(1, round(base_epochs / ratio)) for name, ratio in ratios.items()}
    print(f"{sweep.name}: step time against {baseline.name} ({base_epochs} epochs), {args.clock}, {args.threads} thr")
    for name, ratio in ratios.items():
        print(f"  {name:<44}{measured[name][args.clock]:>8.3f} s{ratio:>7.2f}x  equal-time epochs {equal_epochs[name]}")
    figures = {
        "sweep": sweep.name,
        "baseline": baseline.name,
        "baseline_epochs": base_epochs,
        "clock": args.clock,
        "seconds_per_step": {name: {k: round(v, 4) for k, v in m.items()} for name, m in measured.items()},
        "step_ratio": {name: round(ratio, 3) for name, ratio in ratios.items()},
        "equal_time_epochs": equal_epochs,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads,
    }
    entry = record("equal_time_epochs", figures)
    print(f"device: {entry['device']}")


if __name__ == "__main__":
    main()
