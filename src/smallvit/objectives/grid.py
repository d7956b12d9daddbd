"""Token-grid helpers shared by the position objectives (RelViT relations, position labels, DRLoc, MAE).

Tokens are numbered row-major on an ``h × w`` grid; row index grows downward, column index rightward.
A token's *position* is the grid index of the patch it shows: ``View.patch_order[b, t]`` when patches were
shuffled or regrouped, the kept indices of a masked encoding (through :func:`original_positions`), or simply ``t``
(``positions=None``). Per-token labels are gathered through positions, pair labels through them on both axes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from smallvit.errors import ConfigError


def token_index(h: int, w: int) -> Tensor:
    """[h·w] int64: each token's row-major grid index (the absolute-position class of RelViT and APL)."""
    return torch.arange(h * w)


def grid_coords(h: int, w: int) -> Tensor:
    """[h·w, 2] (row, column) of every token, row-major."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def pair_offsets(h: int, w: int) -> Tensor:
    """[N, N, 2] integer offsets ``coords[x] - coords[y]`` (Δrow, Δcol) for every ordered token pair (x, y)."""
    coords = grid_coords(h, w)
    return coords[:, None, :] - coords[None, :, :]


def token_labels(labels: Tensor, patch_order: Tensor | None, batch: int) -> Tensor:
    """Per-token labels [B, N] from grid labels [N], following ``patch_order`` [B, N] when patches were moved."""
    if patch_order is None:
        return labels.expand(batch, -1)
    return labels[patch_order]


def pair_labels(labels: Tensor, patch_order: Tensor | None, batch: int) -> Tensor:
    """Per-pair labels [B, N, N, ...] from grid pair labels [N, N, ...], following ``patch_order`` [B, N]."""
    if patch_order is None:
        return labels.expand(batch, *labels.shape)
    return labels[patch_order[:, :, None], patch_order[:, None, :]]


def sample_pairs(batch: int, num_tokens: int, num_pairs: int, generator: torch.Generator | None = None, device=None):
    """``num_pairs`` random ordered token pairs per image: two index tensors [B, P] (with replacement)."""
    shape = (batch, num_pairs)
    first = torch.randint(num_tokens, shape, generator=generator, device=device)
    second = torch.randint(num_tokens, shape, generator=generator, device=device)
    return first, second


def choose_pairs(batch: int, num_tokens: int, max_pairs: int | None, device=None) -> tuple[Tensor, Tensor] | None:
    """The token pairs a pair task scores: ``None`` for all N × N (``max_pairs`` unset or ≥ N²), else
    ``max_pairs`` random pairs per image from :func:`sample_pairs`."""
    if max_pairs is None or num_tokens * num_tokens <= max_pairs:
        return None
    return sample_pairs(batch, num_tokens, max_pairs, device=device)


def take_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """Rows of ``tokens`` [B, N, ...] at per-image positions ``index`` [B, K]: [B, K, ...].

    One ``index_select`` of whole rows of the flattened batch: on the CPU about 1.5× faster forward and backward than
    ``torch.gather`` with the index expanded over the row (measured on [128, 49, 96] rows, 1024 per image).
    """
    batch, num_tokens, *row = tokens.shape
    flat = (index + torch.arange(batch, device=index.device)[:, None] * num_tokens).reshape(-1)
    return tokens.reshape(batch * num_tokens, *row).index_select(0, flat).view(*index.shape, *row)


def original_positions(token_index: Tensor, patch_order: Tensor | None) -> Tensor:
    """Grid index [B, K] of the patch shown at tokens ``token_index`` [B, K], following ``patch_order`` [B, N]."""
    if patch_order is None:
        return token_index
    return torch.gather(patch_order, 1, token_index)


def sampled_pair_labels(labels: Tensor, patch_order: Tensor | None, first: Tensor, second: Tensor) -> Tensor:
    """Grid pair labels [N, N, ...] of sampled token pairs (``first``, ``second`` [B, P]): [B, P, ...]."""
    return labels[original_positions(first, patch_order), original_positions(second, patch_order)]


def pair_targets(
    labels: Tensor, batch: int, positions: Tensor | None = None, pairs: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Targets of a pair task from its grid pair labels [N, N, ...]: [B, K, K, ...] for all pairs of the K tokens
    (``pairs=None``), or [B, P, ...] for the pairs (first, second [B, P]) of :func:`choose_pairs`.

    ``positions`` [B, K]: the grid index of the patch at each token (``None``: the N tokens in grid order).
    """
    if pairs is None:
        return pair_labels(labels, positions, batch)
    return sampled_pair_labels(labels, positions, *pairs)


def check_min_tokens(objective: str, grid: tuple[int, int]) -> None:
    """Reject a grid with a single token, on which every position task is trivial."""
    if grid[0] * grid[1] < 2:
        raise ConfigError(
            f"objective '{objective}' needs at least 2 patch tokens but the token grid is {grid[0]}×{grid[1]}: "
            "use a smaller model.patch_size (or mega_patches k >= 2)"
        )


def check_grid(objective: str, built_for: tuple[int, int], got: tuple[int, int], patch_size: int) -> None:
    """A position objective's heads and labels are sized for one token grid: the encoded view must have it.

    A view whose ops set their own grid (mega-patches: k × k patches of ``patch_size`` pixels) needs
    ``model.img_size = k · patch_size``, which the message names.
    """
    if tuple(got) != tuple(built_for):
        raise ConfigError(
            f"objective '{objective}' was built for a {built_for[0]}×{built_for[1]} token grid but got "
            f"{got[0]}×{got[1]}: set model.img_size={got[0] * patch_size} (grid side × patch size) for such views, "
            "or train at the model's img_size and patch_size"
        )
