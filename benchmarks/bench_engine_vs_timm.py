"""Training throughput: smallvit's engine against a hand-written timm loop fed by a torchvision DataLoader.

What a user weighs before adopting smallvit: is its loop (the dataset decoded once into memory as uint8, on the
training device, augmented in batches there) faster than the loop they would write themselves? That loop is the
baseline: ``ImageFolder`` over the prepared cifar10-jpeg files (PIL decodes every image every epoch),
RandomCrop + horizontal flip + ToTensor + Normalize in ``--workers`` DataLoader workers with pinned memory (on
CUDA), a timm ViT, AdamW with PyTorch's defaults, cross-entropy with label smoothing 0.1, and bf16 autocast where
smallvit's ``precision: auto`` picks bf16 (a CUDA GPU with bf16; fp32 on a CPU without AMX), fp32 elsewhere.
smallvit runs the same model, crop, flip and normalisation (the quickstart recipe's) through its own loader and
``optimizer_step`` (fused AdamW on CUDA).

At 224 px both upsample the 32 px images: torchvision with ``Resize`` per image in the workers, smallvit with its
batched ``resize`` op on the device (the images stay 32 px in memory). The crop's padding scales with the size
(4 px at 32, 28 at 224). The model is ``--preset`` (default vit_lite: 192-d, 9 layers, 2.7 M parameters) at patch
4 for 32 px (64 tokens) and patch 16 above 64 px (196 tokens at 224).

The two loops are timed in turn, ``--repeats`` segments each with the order alternating, so machine noise hits
both alike; every segment starts with ``--warmup`` untimed steps, which also drain the batches the DataLoader
prefetched while the other loop ran. Both read their loss back every 10 steps, as a loop that logs does. The
figures are medians of the segments' images/s, appended to benchmarks/results.jsonl (or ``--results``).

    python benchmarks/bench_engine_vs_timm.py --device cuda --image-size 32 224 [--steps 100 --warmup 30 --repeats 3]
    python benchmarks/bench_engine_vs_timm.py --device cpu --image-size 32 --steps 5 --warmup 2 --repeats 2 --workers 2

Needs cifar10-jpeg prepared: ``smallvit prepare cifar10-jpeg --source cifar10-jpeg.tar.gz``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import common
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from smallvit.config import load_recipe
from smallvit.data.datasets import MARKER, data_root, get_dataset_info
from smallvit.data.loader import InMemoryLoader
from smallvit.engine.experiment import build_experiment
from smallvit.engine.logging import LogWindow
from smallvit.engine.trainer import build_optimizer, objective_weights, optimizer_step, resolve_precision

DATASET = "cifar10-jpeg"
LOG_EVERY = 10  # steps between reading the loss back to the host, as the engine's default train.log_every


def endless(batches: Callable[[int], Iterator]) -> Iterator:
    """Batches of epoch 0, 1, 2, … without end; ``batches(epoch)`` gives one epoch's iterator."""
    epoch = 0
    while True:
        yield from batches(epoch)
        epoch += 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Callable[[], int], steps: int, warmup: int, device: torch.device) -> float:
    """Images per second of ``steps`` calls of ``step`` (which returns its batch size) after ``warmup`` untimed."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    images = sum(step() for _ in range(steps))
    synchronize(device)
    return images / (time.perf_counter() - start)


def smallvit_step(
    size: int, patch: int, preset: str, batch_size: int, precision: str, device: torch.device, extra: list[str]
):
    """One engine step per call: a batch from smallvit's in-memory loader, then ``optimizer_step`` (augment, forward,
    backward, update), as ``smallvit train`` runs it; the quickstart recipe's crop and flip, scaled to ``size``."""
    stored = get_dataset_info(DATASET).image_size
    ops = [{"op": "resize", "size": size}] if size != stored else []
    ops += [{"op": "random_crop", "padding": round(4 * size / stored)}, {"op": "hflip"}]
    overrides = [
        f"dataset={DATASET}",
        f"model.preset={preset}",
        f"model.img_size={size}",
        f"model.patch_size={patch}",
        "augment.main.ops=" + json.dumps(ops),
        f"precision={precision}",
        f"batch_size={batch_size}",
        f"device={device}",
        *extra,
    ]
    config = load_recipe("quickstart", overrides).stages[0]
    exp = build_experiment(config, device)
    optimizer = build_optimizer(exp.model, config)
    loader = InMemoryLoader(exp.train_images, exp.train_labels, batch_size=batch_size, seed=0, drop_last=True)

    def epoch_batches(epoch: int) -> Iterator:
        loader.set_epoch(epoch)
        return iter(loader)

    batches = endless(epoch_batches)
    gen = torch.Generator(device=device).manual_seed(0)
    weights = objective_weights(config, 0)
    resolved = resolve_precision(precision, device)
    window = LogWindow()

    def step() -> int:
        data = next(batches)
        metrics, _ = optimizer_step(exp, exp.model, optimizer, data, gen, 0, weights, resolved)
        window.add(metrics, len(data[0]))
        if window.steps == LOG_EVERY:
            window.record()
        return len(data[0])

    return step, exp


def handwritten_step(exp, folder: Path, workers: int, batch_size: int, precision: str, device: torch.device):
    """One step per call of the loop a user writes by hand: torchvision DataLoader over the JPEG files, timm model,
    AdamW, cross-entropy, autocast."""
    backbone = exp.model.backbone
    size = exp.config.model.img_size
    info = get_dataset_info(DATASET)
    resize = [transforms.Resize(size)] if size != info.image_size else []
    transform = transforms.Compose(
        [
            *resize,
            transforms.RandomCrop(size, padding=round(4 * size / info.image_size)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(info.mean, info.std),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )
    model = timm.create_model(backbone.arch, **dict(backbone.model_args, num_classes=len(dataset.classes)))
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    bf16 = resolve_precision(precision, device) == "bf16"
    batches = endless(lambda epoch: iter(loader))
    count = 0

    def step() -> int:
        nonlocal count
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count += 1
        if count % LOG_EVERY == 0:
            loss.item()
        return len(images)

    return step, len(dataset)


def measure(size: int, args: argparse.Namespace, device: torch.device, folder: Path) -> dict:
    """The two loops at ``size`` px, timed in turn; the figures that go to the results file."""
    patch = args.patch_size or (4 if size <= 64 else 16)
    load_before = os.getloadavg()
    engine, exp = smallvit_step(size, patch, args.preset, args.batch_size, args.precision, device, args.override)
    handwritten, files = handwritten_step(exp, folder, args.workers, args.batch_size, args.precision, device)
    loops = {"smallvit": engine, "timm_dataloader": handwritten}
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for repeat in range(args.repeats):
        order = list(loops) if repeat % 2 == 0 else list(loops)[::-1]
        for name in order:
            rates[name].append(images_per_s(loops[name], args.steps, args.warmup, device))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "image_size": size,
        "model": f"{args.preset} patch {patch} ({(size // patch) ** 2} tokens)",
        "precision": resolve_precision(args.precision, device),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "overrides": args.override,
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],  # 1-minute, before and after
        "data": f"{DATASET}: smallvit {len(exp.train_labels)} train images in memory (val held out), "
        f"DataLoader {files} JPEG files",
        "images_per_s": {name: round(value, 1) for name, value in medians.items()},
        "segments_images_per_s": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "ratio_smallvit_vs_timm": round(medians["smallvit"] / medians["timm_dataloader"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--image-size", type=int, nargs="+", default=[32], help="one result per size")
    parser.add_argument("--patch-size", type=int, default=None, help="default: 4 up to 64 px, else 16")
    parser.add_argument("--preset", default="vit_lite")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per segment")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps at the start of each segment")
    parser.add_argument("--repeats", type=int, default=3, help="segments per loop")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the hand-written loop")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for smallvit's run, e.g. model.overrides.depth=1; the timm model is built from the same "
        "model arguments",
    )
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="JSON-lines file the results go to")
    args = parser.parse_args()
    device = torch.device(args.device)
    folder = data_root() / DATASET
    if not (folder / MARKER).exists():
        parser.error(f"{DATASET} is not prepared in {folder.parent}: run `smallvit prepare {DATASET} --source PATH`")
    common.RESULTS = args.results  # record() appends to common.RESULTS
    for size in args.image_size:
        torch.manual_seed(0)
        figures = measure(size, args, device, folder / DATASET / "train")
        entry = common.record("engine_vs_timm", figures, device=args.device)
        print(f"{'loop':<18}{'images/s':>10}   segments")
        for name, value in figures["images_per_s"].items():
            print(f"{name:<18}{value:>10.1f}   {', '.join(map(str, figures['segments_images_per_s'][name]))}")
        print(
            f"smallvit / timm: {figures['ratio_smallvit_vs_timm']:.2f}x at {size} px, {figures['model']}, "
            f"{figures['precision']}, {entry['device']}, load average {figures['load_average']}"
        )
        gc.collect()  # the DataLoader's workers and the models of this size go before the next
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
