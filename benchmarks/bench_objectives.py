"""Step-time overhead of auxiliary objectives: each recipe's engine step ÷ the supervised step, at several token counts.

Every recipe's first stage is stepped on the same fixed batch of the bundled CIFAR-10 sample (vit_lite, fp32,
including augmentation) at each token count: 49 = 112 px / patch 16, 64 = 32 px / patch 4, 196 = 56 px / patch 4
(the sample stored at that size), at learning rate 0 so that every timing steps the same weights. Measurements are
interleaved (supervised, then each recipe, repeated), each after an untimed step, and the ratios are of medians,
so machine noise hits all alike. Both
wall-clock time and the process's CPU time are measured, their medians and their fastest: on a machine shared with
other jobs the wall-clock ratio drifts with their load (recorded before and after), the CPU-time ratio less (but
with 2 threads it counts a thread's spinning while the other is descheduled; ``--threads 1`` counts work only).

Targets (issue 12): RPL with 1024 sampled pairs ≤ 1.25 × supervised, RelViT-joint ≤ 1.10 ×, at batch 128.

    python benchmarks/bench_objectives.py [--tokens 49 64 196] [--repeats 5] [--threads N] [--note TEXT] [RECIPE ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from common import record

from smallvit.config import load_recipe
from smallvit.engine.experiment import build_experiment
from smallvit.engine.memory import keep_freed_memory
from smallvit.engine.trainer import build_optimizer, objective_weights, optimizer_step

BASELINE = "quickstart"
DEFAULT = ["results/recipes/cmp-relvit-joint.yaml", "results/recipes/cmp-rpl.yaml"]
GEOMETRY = {49: (112, 16), 64: (32, 4), 196: (56, 4)}
"""Token count → (image size, patch size)."""


def geometry_overrides(tokens: int) -> list[str]:
    """The bundled sample stored at the image size of ``tokens`` tokens, with its patch size."""
    image_size, patch_size = GEOMETRY[tokens]
    return [f"data.image_size={image_size}", f"model.patch_size={patch_size}"]


def engine_step(recipe: str, overrides: list[str], batch_size: int):
    """One engine optimizer step (fp32) of ``recipe``'s first stage with ``overrides``, on a fixed batch."""
    overrides = [
        *overrides,
        "train.precision=fp32",
        f"train.batch_size={batch_size}",
        f"data.subset.total={batch_size}",
        "data.eval_subset.total=10",
    ]
    config = load_recipe(recipe, overrides).stages[0]
    torch.manual_seed(0)
    exp = build_experiment(config, torch.device("cpu"), load_init=False)
    optimizer = build_optimizer(exp.model, config)
    for group in optimizer.param_groups:
        group["lr"] = 0.0  # every timing steps the same weights: no drift (e.g. into denormal gradients) across repeats
    gen = torch.Generator().manual_seed(0)
    weights = objective_weights(config, 0)
    data = (exp.train_images[:batch_size], exp.train_labels[:batch_size], torch.arange(batch_size))
    step = lambda: optimizer_step(exp, exp.model, optimizer, data, gen, 0, weights, "fp32")  # noqa: E731
    step()  # warm-up: allocation, first-call dispatch
    return step


def interleaved_seconds(steps: dict, repeats: int, count: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median and fastest wall-clock and CPU seconds per step of each step function, timed in turn ``repeats`` times,
    each timing after ``warmup`` untimed steps (the first step after another recipe's pays for its memory and
    caches). The fastest is the timing least disturbed by other processes."""
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            for _ in range(warmup):
                step()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                step()
            wall[name].append((time.perf_counter() - start_wall) / count)
            cpu[name].append((time.process_time() - start_cpu) / count)
    return {
        name: {
            "wall": statistics.median(wall[name]),
            "cpu": statistics.median(cpu[name]),
            "wall_min": min(wall[name]),
            "cpu_min": min(cpu[name]),
        }
        for name in steps
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=DEFAULT)
    parser.add_argument("--tokens", type=int, nargs="+", choices=sorted(GEOMETRY), default=sorted(GEOMETRY))
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per timing")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timings per recipe; the median is kept")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--note", default="", help="what was measured (e.g. the code state), kept with the figures")
    parser.add_argument(
        "--free-memory",
        action="store_true",
        help="let glibc unmap freed memory (the behaviour before smallvit train called keep_freed_memory)",
    )
    args = parser.parse_args()
    if not args.free_memory:
        keep_freed_memory()  # as smallvit train does
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    seconds, ratios = {}, {}
    for tokens in args.tokens:
        geometry = geometry_overrides(tokens)
        steps = {name: engine_step(name, geometry, args.batch_size) for name in [BASELINE, *args.recipes]}
        measured = interleaved_seconds(steps, args.repeats, args.steps, args.warmup)
        base = measured[BASELINE]
        seconds[tokens] = {name: {k: round(v, 3) for k, v in m.items()} for name, m in measured.items()}
        ratios[tokens] = {name: {k: round(m[k] / base[k], 3) for k in m} for name, m in measured.items()}
        image_size, patch_size = GEOMETRY[tokens]
        print(f"{tokens} tokens ({image_size} px / patch {patch_size}), load {os.getloadavg()[0]:.1f}")
        print(f"  {'recipe':<42}{'wall s':>8}{'ratio':>7}{'(fastest)':>10}{'cpu s':>8}{'ratio':>7}{'(fastest)':>10}")
        for name, m in measured.items():
            r = ratios[tokens][name]
            print(
                f"  {name:<42}{m['wall']:>8.2f}{r['wall']:>7.2f}{r['wall_min']:>10.2f}"
                f"{m['cpu']:>8.2f}{r['cpu']:>7.2f}{r['cpu_min']:>10.2f}"
            )
    figures = {
        "seconds_per_step": seconds,
        "step_time_ratio_vs_supervised": ratios,
        "geometry": {tokens: f"{GEOMETRY[tokens][0]}px patch{GEOMETRY[tokens][1]}" for tokens in args.tokens},
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "precision": "fp32",
        "threads": torch.get_num_threads(),
        "keep_freed_memory": not args.free_memory,
        "model": "vit_lite",
        "note": args.note,
    }
    entry = record("objective_overhead", figures)
    print(f"device: {entry['device']}")


if __name__ == "__main__":
    main()
