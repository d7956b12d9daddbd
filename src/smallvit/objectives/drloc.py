"""Dense relative localisation (DRLoc): regress the grid offset between random pairs of final tokens.

Liu, Sangineto, Bi, Sebe, Lepri, De Nadai, "Efficient Training of Visual Transformers with Small Datasets",
NeurIPS 2021. For every image, ``num_pairs`` (m = 32) token pairs (i, j) are drawn at random from the final
h × w token grid; an MLP on ``concat(z_i, z_j)`` (2D → 512 → 512 → 2, ReLU) regresses their normalised offset
``((r_i − r_j)/h, (c_i − c_j)/w)`` with an L1 loss. The paper weights it λ = 0.1 for ViTs and 0.5 for Swin,
warmed up over 20 epochs and decayed to 0 at the end: a ``warmup_decay`` weight schedule in the recipe.

Matches the released code (yhlleo/VTs-Drloc, ``DenseRelativeLoc`` in ``l1`` mode) in sampling (uniform, with
replacement, so i = j can occur), head and loss. Differs on purpose: offsets are the paper's signed
Δ/h, Δ/w (the released code can shift and rescale them to [0, 1], an affine change of target), non-square grids
are allowed, and pairs follow ``View.patch_order``.

Example:
    >>> objective = DRLoc(DRLoc.Config(name="drloc"), setup)
    >>> out = objective(StepContext(batch, backbone))
    >>> out.loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from smallvit.objectives.base import (
    GridObjective,
    GridObjectiveConfig,
    ObjectiveOutput,
    ObjectiveSetup,
    StepContext,
    register_objective,
)
from smallvit.objectives.grid import pair_offsets, pair_targets, sample_pairs, take_tokens


def normalized_offsets(h: int, w: int) -> Tensor:
    """[N, N, 2] offset of every ordered token pair (i, j) on an h × w grid: ``((r_i − r_j)/h, (c_i − c_j)/w)``."""
    return pair_offsets(h, w) / torch.tensor([float(h), float(w)])


class DRLocHead(nn.Module):
    """MLP ``2D → hidden → hidden → 2`` (ReLU) from a token pair's concatenated features to its offset."""

    def __init__(self, embed_dim: int, hidden_dim: int = 512):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2),
        )

    def forward(self, first_tokens: Tensor, second_tokens: Tensor) -> Tensor:
        return self.mlp(torch.cat([first_tokens, second_tokens], dim=-1))


def drloc_loss(predicted: Tensor, targets: Tensor) -> Tensor:
    """L1 between predicted offsets [B, P, 2] of token pairs and their true normalised offsets [B, P, 2].

    Usage::

        head = DRLocHead(embed_dim=192)
        pairs = sample_pairs(len(tokens), tokens.shape[1], 32)                          # m = 32 per image
        predicted = head(take_tokens(tokens, pairs[0]), take_tokens(tokens, pairs[1]))
        loss = drloc_loss(predicted, pair_targets(normalized_offsets(8, 8), len(tokens), patch_order, pairs))
        loss.backward()
    """
    return F.l1_loss(predicted, targets)


class DRLocConfig(GridObjectiveConfig):
    num_pairs: int = Field(32, gt=0, description="random token pairs per image (m)")
    hidden_dim: int = Field(512, gt=0, description="width of the offset-regression MLP")


@register_objective
class DRLoc(GridObjective):
    """L1 regression of the normalised grid offset of random final-token pairs."""

    name = "drloc"
    Config = DRLocConfig
    grid_labels = staticmethod(normalized_offsets)

    def __init__(self, config: DRLocConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        self.head = DRLocHead(setup.embed_dim, config.hidden_dim)

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        tokens = self.tokens(ctx, view)
        batch, num_tokens = tokens.tokens.shape[:2]
        pairs = sample_pairs(batch, num_tokens, self.config.num_pairs, device=tokens.tokens.device)
        predicted = self.head(take_tokens(tokens.tokens, pairs[0]), take_tokens(tokens.tokens, pairs[1])).float()
        return ObjectiveOutput(drloc_loss(predicted, pair_targets(self.labels, batch, tokens.positions, pairs)))
