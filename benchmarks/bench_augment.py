"""Augmentation throughput: smallvit's batched tensor ops against per-image PIL transforms in a DataLoader.

Two recipes, each in both forms: "supervised" (random crop with padding 4, flip, timm's RandAugment
rand-m9-mstd0.5-inc1, colour jitter, normalize, random erasing) and "ssl" (random resized crop, flip, colour
jitter, grayscale, Gaussian blur, normalize). Mixup/CutMix is left out of both (it runs on batches either way).
Figures are medians over epochs of the bundled CIFAR-10 sample on the CPU, the pipelines timed alternately:
images per second of wall-clock time (batched pipeline on ``--threads``, PIL in a DataLoader with ``--workers``)
and images per second of CPU time (both in this process, PIL without workers), which is robust to other load on
the machine. They are printed as a table and appended to benchmarks/results.jsonl.

    PYTHONPATH=src python benchmarks/bench_augment.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import record
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from smallvit.data import load_dataset
from smallvit.data.loader import InMemoryLoader
from smallvit.data.pipeline import ViewSpec, build_augmentation

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

BATCHED = {
    "supervised": [
        {"op": "random_crop", "padding": 4},
        {"op": "hflip"},
        {"op": "rand_augment", "num_ops": 2, "magnitude": 9, "magnitude_std": 0.5},
        {"op": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
        {"op": "random_erasing", "p": 0.25},
    ],
    "ssl": [
        {"op": "random_resized_crop", "size": 32, "scale": [0.2, 1.0]},
        {"op": "hflip"},
        {"op": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "p": 0.8},
        {"op": "grayscale", "p": 0.2},
        {"op": "gaussian_blur", "p": 0.5, "kernel_size": 3},
    ],
}

PER_IMAGE = {
    "supervised": T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            # mmax9: at magnitude 10 timm asks Pillow to posterize to 0 bits, which Pillow 13 rejects.
            rand_augment_transform("rand-m9-mstd0.5-inc1-mmax9", {"img_mean": tuple(round(255 * m) for m in MEAN)}),
            T.ColorJitter(0.4, 0.4, 0.4),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
            T.RandomErasing(p=0.25, value="random"),
        ]
    ),
    "ssl": T.Compose(
        [
            T.RandomResizedCrop(32, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    ),
}


class PILImages(Dataset):
    """The dataset as PIL images, transformed one at a time (the torchvision way)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: T.Compose):
        self.images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


def batched_epoch(recipe: str, images, labels, batch_size: int):
    """A function that augments one epoch with the batched pipeline and returns the number of images."""
    augment = build_augmentation({"main": ViewSpec(ops=BATCHED[recipe])}, MEAN, STD)
    loader = InMemoryLoader(images, labels, batch_size, drop_last=True)
    gen = torch.Generator().manual_seed(0)

    def epoch() -> int:
        return sum(len(augment(*batch, gen)) for batch in loader)

    return epoch


def per_image_epoch(recipe: str, images, labels, batch_size: int, workers: int):
    """A function that augments one epoch with PIL transforms in a DataLoader and returns the number of images."""
    dataset = PILImages(images, labels, PER_IMAGE[recipe])
    loader = DataLoader(
        dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )

    def epoch() -> int:
        return sum(len(batch) for batch, _ in loader)

    return epoch


def rates(epoch) -> tuple[float, float]:
    """Images per second of wall-clock time, and per second of this process's CPU time, for one epoch."""
    wall, cpu = time.perf_counter(), time.process_time()
    seen = epoch()
    return seen / (time.perf_counter() - wall), seen / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per pipeline, alternating")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-image pipeline")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the batched pipeline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("cifar10-sample", "train")
    header = ["recipe", "batched img/s", "PIL img/s", "ratio", "batched img/CPU-s", "PIL img/CPU-s", "ratio"]
    print("".join(f"{h:>18}" for h in header))
    for recipe in BATCHED:
        pipelines = [
            batched_epoch(recipe, data.images, data.labels, args.batch_size),
            per_image_epoch(recipe, data.images, data.labels, args.batch_size, args.workers),
            per_image_epoch(recipe, data.images, data.labels, args.batch_size, workers=0),
        ]
        for epoch in pipelines:  # warm-up, and the workers start
            epoch()
        # Alternate the pipelines so that load from elsewhere on the machine hits all alike; take medians.
        measured = [[rates(epoch) for epoch in pipelines] for _ in range(args.repeats)]
        median = [[statistics.median(m[i][j] for m in measured) for j in range(2)] for i in range(3)]
        (batched, batched_cpu), (per_image, _), (_, per_image_cpu) = median
        figures = {"batched_img_s": batched, "per_image_img_s": per_image, "ratio": batched / per_image}
        figures |= {"batched_img_cpu_s": batched_cpu, "per_image_img_cpu_s": per_image_cpu}
        figures |= {"cpu_ratio": batched_cpu / per_image_cpu}
        print(f"{recipe:>18}" + "".join(f"{v:>18,.1f}" if "ratio" in k else f"{v:>18,.0f}" for k, v in figures.items()))
        figures = {k: round(v, 2) if "ratio" in k else round(v) for k, v in figures.items()}
        setup = {"recipe": recipe, "data": repr(data), "batch_size": args.batch_size}
        record("augment", setup | {"batched_threads": args.threads, "per_image_workers": args.workers} | figures)


if __name__ == "__main__":
    main()
