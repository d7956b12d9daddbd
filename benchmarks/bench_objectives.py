"""Step-time overhead of auxiliary objectives: each recipe's engine step ÷ the supervised step, one run.

Every recipe's first stage is stepped on the same fixed batch of the bundled CIFAR-10 sample (vit_lite, 32 px,
patch 4, 64 tokens), fp32, including augmentation; measurements are interleaved (supervised, then each recipe,
repeated) and the ratios are of medians, so machine noise hits all alike.

    python benchmarks/bench_objectives.py [--steps 5] [--repeats 3] [--batch-size 128] [RECIPE ...]
"""

from __future__ import annotations

import argparse

import torch
from bench_train_step import interleaved_medians, smallvit_step
from common import record

DEFAULT = [
    "results/recipes/cmp-relvit-joint.yaml",
    "results/recipes/cmp-apl.yaml",
    "results/recipes/cmp-rpl.yaml",
    "results/recipes/cmp-drloc.yaml",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=DEFAULT)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    steps = {name: smallvit_step("fp32", args.batch_size, name)[0] for name in ["quickstart", *args.recipes]}
    medians = interleaved_medians(steps, args.repeats, args.steps, args.warmup, args.batch_size)
    base = medians["quickstart"]
    figures = {
        "images_per_s": {k: round(v, 1) for k, v in medians.items()},
        "step_time_ratio_vs_supervised": {k: round(base / v, 3) for k, v in medians.items()},
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "precision": "fp32",
        "model": "vit_lite 32px patch4 (64 tokens)",
    }
    entry = record("objective_overhead", figures)
    print(f"{'recipe':<45}{'images/s':>10}{'step time ÷ supervised':>25}")
    for name, value in medians.items():
        print(f"{name:<45}{value:>10.1f}{base / value:>25.2f}")
    print(f"device: {entry['device']}")


if __name__ == "__main__":
    main()
