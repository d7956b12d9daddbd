"""What the data layer hands to objectives: one or more augmented views of a batch.

Every view carries its own labels and dataset indices, so that objectives never need to know how a view
was produced (multi-crop repeats each image, CutMix pairs images, patch shuffling reorders patches).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Mix:
    """Pairing made by mixup/CutMix: sample ``i`` is ``lam[i]`` of itself and ``1 - lam[i]`` of ``partner[i]``.

    Objectives turn this into ``lam * CE(y) + (1 - lam) * CE(y[partner])`` for whatever target they use
    (class labels or instance indices), see :func:`smallvit.data.mixing.mixed_cross_entropy`.
    """

    partner: Tensor  # int64 [B], index into the same view
    lam: Tensor  # float [B], weight of the sample's own target


@dataclass
class View:
    """One augmented view of a batch.

    ``images`` are float [B, C, H, W]; before ``normalize`` they are in [0, 1], after it standardised.
    ``patch_order[b, t]`` is the original grid index (row-major) of the patch shown at token ``t``; it is set by
    patch shuffling and mega-patches and ``None`` when patches are in their natural order.
    ``grid`` is set by ops that define the token grid themselves (mega-patches); ``None`` means the backbone's.
    """

    images: Tensor
    labels: Tensor | None
    indices: Tensor
    mix: Mix | None = None
    patch_order: Tensor | None = None
    grid: tuple[int, int] | None = None

    def replace(self, **changes) -> View:
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> View:
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        mix = None if self.mix is None else Mix(move(self.mix.partner), move(self.mix.lam))
        return replace(
            self,
            images=move(self.images),
            labels=move(self.labels),
            indices=move(self.indices),
            mix=mix,
            patch_order=move(self.patch_order),
        )


@dataclass
class Batch:
    """All views of one batch, by name. Single-view recipes use the name ``"main"``."""

    views: dict[str, View] = field(default_factory=dict)

    @property
    def main(self) -> View:
        return self.views["main"]

    def __len__(self) -> int:
        return len(next(iter(self.views.values())).indices)
