"""Patch-level augmentations of RelViT (Camporese et al., BMVC 2022): per-patch augmentation, shuffling, mega-patches.

Each op cuts the images into their ViT patches (``patch_size``; the engine fills it from the model when a recipe
omits it) and works on all patches of all images at once, with no Python loop over patches or samples. They run on
[0, 1] images, before ``normalize``; list ``mega_patches`` first, then ``per_patch_augment``, then ``patch_shuffle``
(the order of RelViT's data pipeline)::

    augment:
      main:
        ops:
          - {op: random_crop, padding: 4}
          - {op: hflip}
          - {op: mega_patches, k: 5}        # optional; needs model.img_size = 5 × patch size
          - {op: per_patch_augment}
          - {op: patch_shuffle}             # optional; labels follow view.patch_order

Deliberate differences from the released code (https://github.com/guglielmocamporese/relvit):

- ``per_patch_augment`` jitters colours on [0, 1] images. The released code applies torchvision's ColorJitter and
  Grayscale after ``Normalize``, where they clip negative (below-mean) values to 0. The jitter order is fixed
  (brightness, contrast, saturation, hue) where torchvision shuffles it.
- ``mega_patches`` draws the column cuts independently of the row cuts, as the paper describes. The released
  ``create_megapatches_grid`` splits the columns with the row cuts; ``row_cuts_for_cols: true`` reproduces that.
  Regions are resized by area averaging (exact, since each region is a whole number of patches) where the released
  code uses torchvision's ``Resize``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

from smallvit.data.batch import View
from smallvit.data.transforms import ColorJitter, Grayscale, RandomCrop, Resize, register_op
from smallvit.errors import ConfigError


def patch_grid(images: Tensor, patch_size: int, op: str) -> tuple[int, int]:
    """(rows, columns) of ``patch_size`` patches in ``images`` [B, C, H, W]; both sides must be multiples of it."""
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ConfigError(
            f"{op}: images of {height}×{width} px do not split into patches of {patch_size} px: "
            "choose model.patch_size that divides the image size"
        )
    return height // patch_size, width // patch_size


def to_patches(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] → [B, N, C, p, p], patches in row-major order."""
    b, c, height, width = images.shape
    rows, cols, p = height // patch_size, width // patch_size, patch_size
    return images.view(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c, p, p)


def from_patches(patches: Tensor, rows: int, cols: int) -> Tensor:
    """[B, N, C, p, p] (row-major, N = rows·cols) → [B, C, rows·p, cols·p]; inverse of :func:`to_patches`."""
    b, _, c, p, _ = patches.shape
    return patches.view(b, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * p, cols * p)


def _positive(value: int, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


@register_op("per_patch_augment")
class PerPatchAugment:
    """Augment every patch of every image independently: RelViT's per-patch augmentation.

    Each patch gets a random crop of ``round(p / crop_ratio)`` pixels resized back to ``p``, then colour jitter
    (brightness, contrast, saturation 0.4, hue 0.1) with probability ``color_jitter_p`` and grayscale with
    probability ``grayscale_p`` (0 turns either off; both need RGB). The B·N patches go through the batched ops of
    :mod:`smallvit.data.transforms` as one batch.
    """

    def __init__(
        self, patch_size: int, crop_ratio: float = 1.15, color_jitter_p: float = 0.8, grayscale_p: float = 0.2
    ):
        if crop_ratio < 1:
            raise ValueError(f"crop_ratio must be >= 1 (crop size = patch size / crop_ratio), got {crop_ratio}")
        self.patch_size = _positive(patch_size, "patch_size")
        crop = max(1, round(self.patch_size / crop_ratio))
        self.ops = [RandomCrop(size=crop, padding=0), Resize(self.patch_size)]
        if color_jitter_p > 0:
            self.ops.append(ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=color_jitter_p))
        if grayscale_p > 0:
            self.ops.append(Grayscale(p=grayscale_p))

    def __call__(self, view: View, gen: torch.Generator) -> View:
        images = view.images
        rows, cols = patch_grid(images, self.patch_size, "per_patch_augment")
        patches = to_patches(images, self.patch_size)
        flat = patches.flatten(0, 1)
        patch_view = View(flat, None, torch.arange(len(flat), device=flat.device))
        for op in self.ops:
            patch_view = op(patch_view, gen)
        augmented = patch_view.images.view(patches.shape)
        return view.replace(images=from_patches(augmented, rows, cols))


@register_op("patch_shuffle")
class PatchShuffle:
    """Show each image's patches in a random order of its own; ``view.patch_order`` records where each came from."""

    def __init__(self, patch_size: int):
        self.patch_size = _positive(patch_size, "patch_size")

    def __call__(self, view: View, gen: torch.Generator) -> View:
        images = view.images
        rows, cols = patch_grid(images, self.patch_size, "patch_shuffle")
        order = torch.rand(len(images), rows * cols, generator=gen, device=gen.device).argsort(1)
        shuffled = to_patches(images, self.patch_size)[torch.arange(len(images), device=images.device)[:, None], order]
        if view.patch_order is not None:
            order = view.patch_order.gather(1, order)
        return view.replace(images=from_patches(shuffled, rows, cols), patch_order=order)


@register_op("mega_patches")
class MegaPatches:
    """Regroup each image's patch grid into K × K random rectangles, each resized to one patch: a K·p image.

    Per sample, K − 1 distinct cut points are drawn on the native patch grid for the rows and, independently, K − 1
    for the columns (``row_cuts_for_cols: true``: the columns reuse the row cuts, as the released code does). The
    resulting image is K·p pixels wide, so the backbone needs ``model.img_size = k × patch_size``; the view's token
    grid becomes (K, K). It must come before ``patch_shuffle``.
    """

    def __init__(self, k: int, patch_size: int, row_cuts_for_cols: bool = False):
        self.k = _positive(k, "k")
        self.patch_size = _positive(patch_size, "patch_size")
        self.row_cuts_for_cols = bool(row_cuts_for_cols)

    def __call__(self, view: View, gen: torch.Generator) -> View:
        images = view.images
        rows, cols = patch_grid(images, self.patch_size, "mega_patches")
        if self.k > min(rows, cols):
            raise ConfigError(
                f"mega_patches k={self.k} exceeds the native {rows}×{cols} patch grid "
                f"({images.shape[-2]}×{images.shape[-1]} px, patch {self.patch_size}): choose k <= {min(rows, cols)}"
            )
        if self.row_cuts_for_cols and rows != cols:
            raise ConfigError(f"mega_patches row_cuts_for_cols needs a square patch grid, got {rows}×{cols}")
        if view.patch_order is not None:
            raise ConfigError("mega_patches must come before patch_shuffle in the view's ops")
        b, p = len(images), self.patch_size
        row_edges = self._edges(gen, b, rows) * p
        col_edges = row_edges if self.row_cuts_for_cols else self._edges(gen, b, cols) * p
        top, bottom = row_edges[:, :-1, None], row_edges[:, 1:, None]  # [B, K, 1]: region row i
        left, right = col_edges[:, None, :-1], col_edges[:, None, 1:]  # [B, 1, K]: region column j
        index = torch.arange(b, device=images.device)[:, None, None]
        boxes = torch.stack(torch.broadcast_tensors(index, left, top, right, bottom), -1).view(-1, 5)
        regions = roi_align(images, boxes.to(images.dtype), (p, p), spatial_scale=1.0, aligned=True)
        mega = from_patches(regions.view(b, self.k * self.k, images.shape[1], p, p), self.k, self.k)
        return view.replace(images=mega, grid=(self.k, self.k), patch_order=None)

    def _edges(self, gen: torch.Generator, batch: int, cells: int) -> Tensor:
        """[B, K + 1] region boundaries in patches, 0 < cuts < ``cells``: K − 1 distinct random cuts per sample."""
        scores = torch.rand(batch, cells - 1, generator=gen, device=gen.device)
        cuts = (scores.argsort(1)[:, : self.k - 1] + 1).sort(1).values
        return torch.cat([cuts.new_zeros(batch, 1), cuts, cuts.new_full((batch, 1), cells)], 1)
