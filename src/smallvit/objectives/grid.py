"""Token-grid helpers shared by the position objectives (RelViT relations, position labels, DRLoc, MAE).

Tokens are numbered row-major on an ``h × w`` grid; row index grows downward, column index rightward.
When patches were shuffled or regrouped, a view's ``patch_order[b, t]`` is the original grid index of the patch
at token ``t``: per-token labels are gathered through it and pair labels through it on both axes.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def take_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """Rows of ``tokens`` [B, N, ...] at per-image positions ``index`` [B, K]: [B, K, ...]."""
    expanded = index.reshape(*index.shape, *([1] * (tokens.dim() - 2))).expand(-1, -1, *tokens.shape[2:])
    return torch.gather(tokens, 1, expanded)


def original_positions(token_index: Tensor, patch_order: Tensor | None) -> Tensor:
    """Grid index [B, K] of the patch shown at tokens ``token_index`` [B, K], following ``patch_order`` [B, N]."""
    if patch_order is None:
        return token_index
    return torch.gather(patch_order, 1, token_index)


def sampled_pair_labels(labels: Tensor, patch_order: Tensor | None, first: Tensor, second: Tensor) -> Tensor:
    """Grid pair labels [N, N, ...] of sampled token pairs (``first``, ``second`` [B, P]): [B, P, ...]."""
    return labels[original_positions(first, patch_order), original_positions(second, patch_order)]
