"""What a ViT learned about space: how far each head attends, how its position embeddings relate, where its tokens
think they are.

Tensors in, numbers out (the attention weights and embeddings come from :mod:`smallvit.models.inspection`).

- Mean attention distance (Dosovitskiy et al., ICLR 2021, Fig. 7; Raghu et al., NeurIPS 2021): per head, the
  attention-weighted distance in pixels between a query patch and the patches it attends to, averaged over query
  patches and images — the ViT analogue of a receptive field. Prefix tokens (CLS) are left out and each query's
  weights over the patches are renormalised to sum to 1.
- Cosine similarity of position embeddings: entry (i, j) is the cosine of patch i's and patch j's embeddings; a
  model that learned the 2-D layout shows each patch most similar to its row, its column and its neighbours.

Example:
    >>> distances = mean_attention_distance(maps[0], grid=(8, 8), patch_size=4, prefix=1)   # [heads], in pixels
    >>> similarity = cosine_similarity_matrix(patch_position_embedding(backbone))          # [64, 64]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_centres(grid: tuple[int, int], patch_size: int) -> Tensor:
    """[h·w, 2] (y, x) pixel centre of every patch, row-major."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return (torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).float() + 0.5) * patch_size


def mean_attention_distance(attention: Tensor, grid: tuple[int, int], patch_size: int, prefix: int = 0) -> Tensor:
    """[heads] mean attention distance in pixels of one block's ``attention`` [B, heads, T, T] (T = prefix + h·w)."""
    patches = attention[:, :, prefix:, prefix:].float()
    if patches.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"attention over {patches.shape[-1]} patch tokens does not fit a {grid[0]}x{grid[1]} grid")
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    centres = patch_centres(grid, patch_size).to(patches.device)
    distance = torch.cdist(centres, centres)  # [N, N]
    return (patches * distance).sum(dim=-1).mean(dim=(0, 2)).cpu()


def cosine_similarity_matrix(embeddings: Tensor) -> Tensor:
    """[N, N] cosine similarity between every pair of rows of ``embeddings`` [N, D]."""
    unit = F.normalize(embeddings.float(), dim=-1)
    return (unit @ unit.T).cpu()


def position_accuracy(logits: Tensor) -> Tensor:
    """[B] fraction of each image's tokens whose predicted grid index (argmax of ``logits`` [B, N, N] over N grid
    positions) is its own position (token t sits at index t, as in the un-shuffled evaluation view)."""
    return (logits.argmax(dim=-1) == torch.arange(logits.shape[1], device=logits.device)).float().mean(dim=1)
