"""Relative position labels: the factorised RPL head against the direct concatenation MLP, and RPL's cost in a step.

1. head: forward + backward of the RPL head over all N² ordered pairs (vit_lite width 192, 8×8 grid, 225
   classes), factorised (first layer per token, broadcast-add) and direct (builds the [B, N, N, D] concatenation).
   Time is the fastest of the repeats after a first run; peak memory is how much that first run raised the
   process's peak resident set, each variant in its own fresh process (CPU), or ``torch.cuda.max_memory_allocated``
   growth (GPU).
2. step: one engine optimizer step (augmentation, forward, backward, AdamW) of the poslabel-rpl-vit recipe
   (vit_lite, 32 px, patch 4: 64 tokens) with supervised alone, + RPL (all 4096 pairs, or 1024 sampled pairs
   per image), + APL and + DRLoc, measured interleaved so machine noise hits all alike; ratios are of the
   fastest repeat of each (the one least disturbed by other processes), medians are recorded too.
   Target: supervised + RPL ≤ 1.25 × supervised.

    python benchmarks/bench_rpl_head.py [--part head|step|all] [--batch-size 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import record

from smallvit.config import load_recipe
from smallvit.engine.experiment import build_experiment
from smallvit.engine.trainer import build_optimizer, objective_weights, optimizer_step
from smallvit.objectives.position_labels import RelativePositionHead, relative_label_count

EMBED_DIM, GRID = 192, (8, 8)
SUPERVISED = "{name: supervised, label_smoothing: 0.1}"
STEP_VARIANTS = {
    "supervised": f"[{SUPERVISED}]",
    "supervised+rpl": f"[{SUPERVISED}, {{name: rpl, weight: 0.5}}]",
    "supervised+rpl_1024_pairs": f"[{SUPERVISED}, {{name: rpl, weight: 0.5, max_pairs: 1024}}]",
    "supervised+apl": f"[{SUPERVISED}, {{name: apl, weight: 0.5}}]",
    "supervised+drloc": f"[{SUPERVISED}, {{name: drloc, weight: 0.1}}]",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_head(variant: str, batch_size: int, repeats: int, device: str) -> dict:
    """Seconds per forward + backward (median) and peak memory growth in MB of one head variant."""
    torch.manual_seed(0)
    head = RelativePositionHead(EMBED_DIM, relative_label_count(*GRID)).to(device)
    tokens = torch.randn(batch_size, GRID[0] * GRID[1], EMBED_DIM, device=device, requires_grad=True)
    forward = head if variant == "factorised" else head.forward_concatenated

    def run() -> float:
        start = time.perf_counter()
        forward(tokens).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    if device.startswith("cuda"):
        run()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = peak_rss_mb()
        run()  # the first, cold run reaches the peak; later runs reuse the freed memory
        peak = peak_rss_mb() - base
    times = [run() for _ in range(repeats)]
    return {"seconds": min(times), "peak_mb": round(peak, 1)}


def head_benchmark(args) -> dict:
    results = {}
    for variant in ("factorised", "concatenated"):
        command = [sys.executable, __file__, "--part", "head-worker", "--variant", variant]
        command += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--device", args.device]
        results[variant] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    factorised, concatenated = results["factorised"], results["concatenated"]
    return {
        "part": "head",
        "shape": {"batch": args.batch_size, "tokens": GRID[0] * GRID[1], "dim": EMBED_DIM, "classes": 225},
        "seconds": {k: round(v["seconds"], 4) for k, v in results.items()},
        "peak_mb": {k: v["peak_mb"] for k, v in results.items()},
        "speedup": round(concatenated["seconds"] / factorised["seconds"], 2),
        "memory_ratio": round(concatenated["peak_mb"] / max(factorised["peak_mb"], 1e-9), 2),
        "repeats": args.repeats,
    }


def step_benchmark(args) -> dict:
    steps = {}
    for name, objectives in STEP_VARIANTS.items():
        overrides = [
            f"objectives={objectives}",
            f"train.batch_size={args.batch_size}",
            f"train.precision={args.precision}",
        ]
        config = load_recipe("poslabel-rpl-vit", overrides).stages[0]
        torch.manual_seed(0)
        exp = build_experiment(config, torch.device(args.device))
        optimizer = build_optimizer(exp.model, config)
        gen = torch.Generator(device=args.device).manual_seed(0)
        data = (exp.train_images[: args.batch_size], exp.train_labels[: args.batch_size], torch.arange(args.batch_size))
        weights = objective_weights(config, 0)
        steps[name] = (exp, optimizer, gen, data, weights)
        optimizer_step(exp, exp.model, optimizer, data, gen, 0, weights, args.precision)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (exp, optimizer, gen, data, weights) in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer_step(exp, exp.model, optimizer, data, gen, 0, weights, args.precision)
            times[name].append((time.perf_counter() - start) / args.steps)
    fastest = {name: min(values) for name, values in times.items()}
    base = fastest["supervised"]
    return {
        "part": "step",
        "model": "vit_lite 32px patch4 (64 tokens), recipe poslabel-rpl-vit",
        "batch_size": args.batch_size,
        "precision": args.precision,
        "seconds_per_step": {k: round(v, 4) for k, v in fastest.items()},
        "median_seconds_per_step": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "ratio_to_supervised": {k: round(v / base, 3) for k, v in fastest.items()},
        "steps": args.steps,
        "repeats": args.repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["head", "step", "all", "head-worker"], default="all")
    parser.add_argument("--variant", choices=["factorised", "concatenated"], help="head-worker only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per timing (step part)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="step part")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.part == "head-worker":
        print(json.dumps(measure_head(args.variant, args.batch_size, args.repeats, args.device)))
        return
    if args.part in ("head", "all"):
        entry = record("rpl_head", head_benchmark(args), args.device)
        print(f"RPL head fwd+bwd, batch {args.batch_size}, 64 tokens, D={EMBED_DIM} ({entry['device']})")
        for variant, seconds in entry["seconds"].items():
            print(f"  {variant:<13}{seconds * 1000:>9.1f} ms{entry['peak_mb'][variant]:>10.1f} MB")
        print(f"  factorised: {entry['speedup']}x faster, {entry['memory_ratio']}x less peak memory")
    if args.part in ("step", "all"):
        entry = record("rpl_step", step_benchmark(args), args.device)
        print(f"engine step, batch {args.batch_size}, {args.precision} ({entry['device']})")
        for name, seconds in entry["seconds_per_step"].items():
            print(f"  {name:<27}{seconds:>8.3f} s{entry['ratio_to_supervised'][name]:>8.2f}x")


if __name__ == "__main__":
    main()
