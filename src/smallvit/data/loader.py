"""Shuffled batches from a dataset held in memory as one uint8 tensor, on the CPU or on the training device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


class InMemoryLoader:
    """Yields ``(images uint8 [b, C, H, W], labels [b] or None, indices [b])`` on ``device``, ``indices`` being the
    dataset positions (0..N-1) of the batch's images.

    Each epoch's order is a permutation drawn from a CPU generator seeded with ``(seed, epoch)`` (call
    :meth:`set_epoch` before each epoch), so that every rank draws the same one. With ``world_size`` > 1, rank r
    takes every ``world_size``-th position of it from r on, as ``DistributedSampler`` does, and all ranks get the
    same number of batches: with ``drop_last`` the permutation is truncated to a multiple of ``world_size``
    (fewer than ``world_size`` samples skipped, different ones each epoch), otherwise padded by repeating its
    start (every sample seen, a few twice: their ``indices`` tell). ``batch_size`` is per rank; ``drop_last``
    also drops the last incomplete batch.

    Example::

        loader = InMemoryLoader(images, labels, batch_size=256, seed=0, device="cuda")
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for images, labels, indices in loader:
                ...
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ):
        if len(images) == 0 or (labels is not None and len(labels) != len(images)):
            raise ValueError(f"need a non-empty dataset with one label per image, got {len(images)} images")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device) if device is not None else images.device
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def samples_per_rank(self) -> int:
        n = len(self.images)
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return -(-self.samples_per_rank // self.batch_size)

    def positions(self) -> Tensor:
        """This rank's dataset positions for the current epoch, in order (int64, CPU)."""
        n = len(self.images)
        if self.shuffle:
            seed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
            order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        else:
            order = torch.arange(n)
        total = self.samples_per_rank * self.world_size
        order = order.repeat(-(-total // n))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
        positions = self.positions()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            indices = positions[start : start + self.batch_size]
            on_data = indices.to(self.images.device)
            images = self.images[on_data].to(self.device, non_blocking=True)
            labels = None if self.labels is None else self.labels[on_data].to(self.device, non_blocking=True)
            yield images, labels, indices.to(self.device)
