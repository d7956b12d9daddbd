"""Augmentation throughput: smallvit's batched tensor ops against per-image PIL transforms in a DataLoader.

Two recipes, each in both forms: "supervised" (random crop with padding 4, flip, timm's RandAugment
rand-m9-mstd0.5-inc1, colour jitter, normalize, random erasing) and "ssl" (random resized crop, flip, colour
jitter, grayscale, Gaussian blur, normalize). Mixup/CutMix is left out of both (it runs on batches either way).
The figures are images per second on the CPU, printed as a table and appended to benchmarks/results.jsonl.

    PYTHONPATH=src python benchmarks/bench_augment.py
"""

from __future__ import annotations

import argparse
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


def batched_throughput(recipe: str, images, labels, batch_size: int, epochs: int) -> float:
    augment = build_augmentation({"main": ViewSpec(ops=BATCHED[recipe])}, MEAN, STD)
    loader = InMemoryLoader(images, labels, batch_size, drop_last=True)
    gen = torch.Generator().manual_seed(0)
    augment(*next(iter(loader)), gen)  # warm-up
    start, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            seen += len(augment(*batch, gen, epoch))
    return seen / (time.perf_counter() - start)


def per_image_throughput(recipe: str, images, labels, batch_size: int, epochs: int, workers: int) -> float:
    dataset = PILImages(images, labels, PER_IMAGE[recipe])
    loader = DataLoader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=True)
    for _ in loader:  # warm-up: start the workers
        pass
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for batch, _ in loader:
            seen += len(batch)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data per measurement")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-image pipeline")
    args = parser.parse_args()

    data = load_dataset("cifar10-sample", "train")
    print(f"{'recipe':<12}{'batched img/s':>15}{'PIL img/s':>12}{'ratio':>8}")
    for recipe in BATCHED:
        batched = batched_throughput(recipe, data.images, data.labels, args.batch_size, args.epochs)
        per_image = per_image_throughput(recipe, data.images, data.labels, args.batch_size, args.epochs, args.workers)
        print(f"{recipe:<12}{batched:>15,.0f}{per_image:>12,.0f}{batched / per_image:>7.1f}x")
        figures = {"recipe": recipe, "data": repr(data), "batch_size": args.batch_size, "workers": args.workers}
        figures |= {"batched_img_s": round(batched), "per_image_img_s": round(per_image)}
        record("augment", figures | {"ratio": round(batched / per_image, 2)})


if __name__ == "__main__":
    main()
