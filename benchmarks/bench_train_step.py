"""Training-step throughput: smallvit's engine step vs a minimal hand-written timm + AdamW + CE loop.

Same model (vit_lite, 32 px, patch 4, 64 tokens), same in-memory data (the bundled CIFAR-10 sample), same batch.
The hand-written loop is the baseline a user would write: fp32, no augmentation, plain AdamW. smallvit's step
includes its batched augmentation (random crop + flip, as the quickstart recipe) and runs in fp32 and in bf16
autocast. Measurements are interleaved (baseline, fp32, bf16, repeated) so machine noise hits all alike, and
the ratios are of medians measured in this one run.

    python benchmarks/bench_train_step.py [--steps 10] [--repeats 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from common import record

from smallvit.config import load_recipe
from smallvit.engine.experiment import build_experiment
from smallvit.engine.trainer import build_optimizer, objective_weights, optimizer_step, resolve_precision


def time_steps(step, steps: int, warmup: int, batch_size: int) -> float:
    """Images per second of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def interleaved_medians(steps: dict, repeats: int, count: int, warmup: int, batch_size: int) -> dict[str, float]:
    """Median images/s of each step function, timed in turn ``repeats`` times so machine noise hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            rates[name].append(time_steps(step, count, warmup, batch_size))
    return {name: statistics.median(values) for name, values in rates.items()}


def smallvit_step(precision: str, batch_size: int, recipe: str = "quickstart"):
    """One engine optimizer step of ``recipe``'s first stage on a fixed batch of the bundled sample."""
    config = load_recipe(recipe, [f"train.precision={precision}", f"train.batch_size={batch_size}"]).stages[0]
    exp = build_experiment(config, torch.device("cpu"))
    optimizer = build_optimizer(exp.model, config)
    gen = torch.Generator().manual_seed(0)
    weights = objective_weights(config, 0)
    indices = torch.arange(batch_size)
    data = (exp.train_images[:batch_size], exp.train_labels[:batch_size], indices)
    resolved = resolve_precision(precision, exp.device)
    return lambda: optimizer_step(exp, exp.model, optimizer, data, gen, 0, weights, resolved), exp


def handwritten_step(exp, batch_size: int):
    """What a user writes by hand: timm model, AdamW, cross-entropy, fp32, images normalised once."""
    backbone = exp.model.backbone
    model = timm.create_model(backbone.arch, **dict(backbone.model_args, num_classes=10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = exp.eval_augment(exp.train_images[:batch_size], None, torch.arange(batch_size), None, 0).main.images
    labels = exp.train_labels[:batch_size]

    def step():
        loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    fp32, exp = smallvit_step("fp32", args.batch_size)
    bf16, _ = smallvit_step("bf16", args.batch_size)
    steps = {"handwritten_fp32": handwritten_step(exp, args.batch_size), "smallvit_fp32": fp32, "smallvit_bf16": bf16}
    medians = interleaved_medians(steps, args.repeats, args.steps, args.warmup, args.batch_size)
    base = medians["handwritten_fp32"]
    figures = {
        "images_per_s": {k: round(v, 1) for k, v in medians.items()},
        "ratio_vs_handwritten_fp32": {k: round(v / base, 3) for k, v in medians.items()},
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "model": "vit_lite 32px patch4 (64 tokens)",
    }
    entry = record("train_step", figures)
    print(f"{'loop':<20}{'images/s':>10}{'ratio':>8}")
    for name, value in medians.items():
        print(f"{name:<20}{value:>10.1f}{value / base:>8.2f}")
    print(f"device: {entry['device']}")


if __name__ == "__main__":
    main()
