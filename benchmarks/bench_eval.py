"""Evaluation-suite and IDMM pre-training throughput.

- feature extraction (images/s) of vit_lite on the bundled CIFAR-10 sample at the pre-training (16 px, patch 2)
  and fine-tuning (32 px, patch 4) geometries, both 64 tokens;
- weighted kNN (k=20, T=0.07) queries/s against the 2040-image bank and against a 50 000-feature bank;
- linear probe: seconds to select the weight decay and fit on 2040 cached features;
- IDMM pre-training step time per crop configuration (the ablation rows' augmentation: 2 crops at 32 px,
  2 crops at 16 px, 2 + 4 crops at 16 px, and with CutMix), through the engine's own optimizer step.

Timings are medians over repeats that interleave the configurations being compared, so that the load of a shared
machine weighs on all alike; one JSON line per run goes to benchmarks/results.jsonl.

    python benchmarks/bench_eval.py [--batch-size 32] [--steps 2] [--repeats 3] [--warmup 3] [--precision fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import record

from smallvit.config import load_recipe
from smallvit.engine.experiment import build_experiment
from smallvit.engine.trainer import build_optimizer, objective_weights, optimizer_step, resolve_precision
from smallvit.metrics import extract_features, knn_accuracy, linear_probe_accuracy

CROP_CONFIGS = {
    "2x32px (idmm-id)": "idmm-id",
    "2x16px (idmm-id-ls-lowres)": "idmm-id-ls-lowres",
    "2x16px+4x16px (multicrop)": "idmm-id-ls-lowres-multicrop",
    "2x16px+4x16px+cutmix (idmm-pretrain)": "idmm-pretrain",
}


def seconds(fn, repeats: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def feature_figures(repeats: int) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images/s of feature extraction at the pre-training and fine-tuning geometries (repeats interleaved), and
    the 32 px features of the training and test images."""
    recipes = {"16px_patch2": "idmm-id-ls-lowres", "32px_patch4": "idmm-id"}
    exps = {
        geometry: build_experiment(load_recipe(recipe, ["train.precision=fp32"]).stages[0], torch.device("cpu"))
        for geometry, recipe in recipes.items()
    }
    for exp in exps.values():
        extract_features(exp.model.backbone, exp.train_images[:512], exp.eval_augment)  # warm-up, untimed
    times: dict[str, list[float]] = {geometry: [] for geometry in exps}
    for _ in range(repeats):
        for geometry, exp in exps.items():
            backbone, images, augment = exp.model.backbone, exp.train_images, exp.eval_augment
            times[geometry].append(seconds(lambda: extract_features(backbone, images, augment)))  # noqa: B023
    figures = {geometry: round(2040 / statistics.median(values), 1) for geometry, values in times.items()}
    exp = exps["32px_patch4"]
    train = extract_features(exp.model.backbone, exp.train_images, exp.eval_augment)
    query = extract_features(exp.model.backbone, exp.eval_images, exp.eval_augment)
    return figures, train, query, exp


def knn_figures(train: torch.Tensor, query: torch.Tensor, exp, repeats: int) -> dict:
    labels, query_labels = exp.train_labels, exp.eval_labels
    small = seconds(lambda: knn_accuracy(train, labels, query, query_labels, 10), repeats)
    big_bank = torch.randn(50_000, train.shape[1])
    big_labels = torch.randint(0, 10, (50_000,))
    big = seconds(lambda: knn_accuracy(big_bank, big_labels, query, query_labels, 10), repeats)
    return {"bank_2040": round(len(query) / small, 1), "bank_50000": round(len(query) / big, 1)}


def step_function(recipe: str, batch_size: int, precision: str):
    """One IDMM pre-training step (augmentation, forward, backward, AdamW) on ``batch_size`` images, and the
    number of crops it trains on."""
    config = load_recipe(recipe, [f"train.batch_size={batch_size}", f"train.precision={precision}"]).stages[0]
    exp = build_experiment(config, torch.device("cpu"))
    optimizer = build_optimizer(exp.model, config)
    gen = torch.Generator().manual_seed(0)
    weights = objective_weights(config, 0)
    data = (exp.train_images[:batch_size], exp.train_labels[:batch_size], torch.arange(batch_size))

    def step() -> None:
        optimizer_step(exp, exp.model, optimizer, data, gen, 1, weights, resolve_precision(precision, exp.device))

    return step, sum(spec.copies for spec in config.augment.values()) * batch_size


def step_figures(batch_size: int, steps: int, repeats: int, warmup: int, precision: str) -> dict:
    """Seconds per step of each crop configuration, after ``warmup`` untimed steps of each (the first steps of a
    process run several times slower); repeats interleave the configurations so that machine load weighs on all
    of them alike."""
    built = {label: step_function(recipe, batch_size, precision) for label, recipe in CROP_CONFIGS.items()}
    for step, _ in built.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {label: [] for label in built}
    for _ in range(repeats):
        for label, (step, _) in built.items():
            times[label].append(seconds(lambda: [step() for _ in range(steps)]) / steps)  # noqa: B023
    figures = {}
    for label, (_, crops) in built.items():
        per_step = statistics.median(times[label])
        figures[label] = {
            "s_per_step": round(per_step, 3),
            "images_per_s": round(batch_size / per_step, 1),
            "crops_per_s": round(crops / per_step, 1),
            "s_per_2040_image_epoch": round(per_step * 2040 / batch_size, 1),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.manual_seed(0)

    extraction, train, query, exp = feature_figures(args.repeats)
    knn = knn_figures(train, query, exp, args.repeats)
    probe_seconds = seconds(lambda: linear_probe_accuracy(train, exp.train_labels, query, exp.eval_labels, 10))
    steps = step_figures(args.batch_size, args.steps, args.repeats, args.warmup, args.precision)
    figures = {
        "feature_extraction_images_per_s": extraction,
        "knn_queries_per_s": knn,
        "linear_probe_s_2040x192": round(probe_seconds, 2),
        "pretrain_step": steps,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "precision": args.precision,
        "model": "vit_lite (192-d, 9 layers)",
    }
    entry = record("eval_and_idmm_pretrain", figures)
    print(f"feature extraction, images/s: {extraction}")
    print(f"kNN queries/s: {knn}")
    print(f"linear probe (2040 x 192, weight decay selected): {probe_seconds:.2f} s")
    print(f"{'IDMM crops, batch ' + str(args.batch_size):<40}{'s/step':>9}{'crops/s':>9}{'s/epoch':>9}")
    for label, values in steps.items():
        print(f"{label:<40}{values['s_per_step']:>9}{values['crops_per_s']:>9}{values['s_per_2040_image_epoch']:>9}")
    print(f"device: {entry['device']}")


if __name__ == "__main__":
    main()
