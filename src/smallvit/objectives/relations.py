"""RelViT: spatial-relation tasks on every output patch token.

Camporese, Izzo, Ballan, "Where are my Neighbors? Exploiting Patches Relations in Self-Supervised Vision
Transformer", BMVC 2022 (https://arxiv.org/abs/2206.00481). Released code: https://github.com/guglielmocamporese/relvit.

Four objectives on the final (post-norm) patch tokens of an ``h × w`` token grid, CLS and register tokens excluded:

- ``relations``: for every ordered token pair (x, y), x = y included, a 9-way class saying where x lies with respect
  to y: ``3·(sign(r_x − r_y) + 1) + (sign(c_x − c_y) + 1)``, i.e. LU, CU, RU, LC, CC, RC, LD, CD, RD (rows grow
  downward, columns rightward). Logits are 9 bilinear scores per pair, ``⟨W_q^k z_x, W_k^k z_y⟩ / √d`` with
  ``d = D // 9`` and no bias; cross-entropy at every pair, optional label smoothing; metric ``acc`` (pair accuracy).
- ``abs_position``: ``Linear(D, N)`` on each token, cross-entropy against its grid index; metric ``acc``.
- ``distances`` and ``angles`` (off by default): MSE regression from one bilinear score per pair (``d = D``), with
  the paper's targets: the Euclidean distance between the two grid coordinates divided by its maximum over the grid;
  the angle between the two grid-coordinate vectors, with coordinates shifted by half the grid side (so every
  vector lies in the positive quadrant), divided by π and by its maximum; both then rescaled from [0, 1] to [−1, 1].

When patches were shuffled (``patch_shuffle``) the labels follow the view's ``patch_order``: a token's labels are
those of the grid position its patch came from. With ``mega_patches`` the tasks live on the K × K mega-patch grid.
``max_pairs`` bounds the memory of the pair tasks on large grids (Swin, 224 px / patch 8): each image scores that
many random pairs instead of all N × N (all pairs are used when N × N <= max_pairs).

Matches the released code: label matrices (``datasets/encode_locations.py``), the score head
(``models/layers.py: MultiHeadAttentionScores``, whose value projection is unused and left out here), label
smoothing as its ``cross_entropy`` (the same as PyTorch's ``label_smoothing``). Deliberate differences:

- labels are defined on any ``h × w`` grid; the released code assumes a square one.
- angles are the difference of the two vectors' polar angles, exact for vectors in one quadrant; the released code
  uses ``acos(⟨p, q⟩ / (|p||q| + 1e-4))``, which differs by less than 1e-3 after rescaling.
- its relation-loss dropout (``--dropout_rel``, 0 in every released script) is not offered.
- data-side differences (per-patch augmentation on [0, 1] images, independent mega-patch column cuts) are listed
  in :mod:`smallvit.data.patch_ops`.

Example:
    >>> objective = Relations(Relations.Config(name="relations"), setup)
    >>> out = objective(StepContext(batch, backbone))
    >>> out.loss.backward(); out.metrics["acc"]
    >>> head = PairScores(embed_dim=192, num_scores=9)              # in your own loop:
    >>> loss = F.cross_entropy(head(tokens), pair_labels(relation_labels(8, 8), patch_order, len(tokens)))
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from smallvit.data.batch import View
from smallvit.errors import ConfigError
from smallvit.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    ObjectiveSetup,
    StepContext,
    register_objective,
)
from smallvit.objectives.grid import (
    grid_coords,
    pair_labels,
    pair_offsets,
    sample_pairs,
    sampled_pair_labels,
    take_tokens,
    token_index,
    token_labels,
)

RELATION_NAMES = ("LU", "CU", "RU", "LC", "CC", "RC", "LD", "CD", "RD")
"""Relation classes in label order: where token x lies with respect to token y (left/center/right, up/center/down)."""


def relation_labels(h: int, w: int) -> Tensor:
    """[h·w, h·w] int64: ``label[x, y]`` = class in :data:`RELATION_NAMES` of token x relative to token y."""
    offsets = pair_offsets(h, w)
    return 3 * (offsets[..., 0].sign() + 1) + (offsets[..., 1].sign() + 1)


abs_position_labels = token_index  # [h·w]: each token's row-major grid index is its class


def _to_unit_range(values: Tensor) -> Tensor:
    """Divide by the maximum, then map [0, 1] to [−1, 1] (RelViT's ``vmin=-1, vmax=1`` scaling)."""
    return values / values.max() * 2 - 1


def distance_targets(h: int, w: int) -> Tensor:
    """[h·w, h·w] float: Euclidean distance between the grid coordinates of x and y, scaled to [−1, 1]."""
    return _to_unit_range(pair_offsets(h, w).float().norm(dim=-1))


def angle_targets(h: int, w: int) -> Tensor:
    """[h·w, h·w] float: angle between the coordinate vectors of x and y (shifted by half the side), / π, in [−1, 1].

    Coordinates are (column + w/2, row + h/2) as in the released code; all such vectors lie in the positive
    quadrant, so the angle between two of them is the difference of their polar angles.
    """
    coords = grid_coords(h, w).float() + torch.tensor([h / 2, w / 2])
    polar = torch.atan2(coords[:, 0], coords[:, 1])
    return _to_unit_range((polar[:, None] - polar[None, :]).abs() / math.pi)


class PairScores(nn.Module):
    """``num_scores`` bilinear scores for every ordered pair of tokens: attention logits without the softmax.

    ``score_k(x, y) = ⟨W_q^k z_x, W_k^k z_y⟩ / √d`` with ``d = embed_dim // num_scores`` and no bias.

    Args:
        embed_dim: token width D.
        num_scores: scores per pair (9 for relations, 1 for distances and angles).
    """

    def __init__(self, embed_dim: int, num_scores: int):
        super().__init__()
        if not 1 <= num_scores <= embed_dim:
            raise ValueError(f"num_scores must be in [1, embed_dim={embed_dim}], got {num_scores}")
        self.num_scores = num_scores
        self.head_dim = embed_dim // num_scores
        self.query = nn.Linear(embed_dim, num_scores * self.head_dim, bias=False)
        self.key = nn.Linear(embed_dim, num_scores * self.head_dim, bias=False)

    def forward(self, tokens: Tensor, pairs: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Scores [B, S, N, N] of all pairs of ``tokens`` [B, N, D], or [B, S, P] of ``pairs`` = (first, second)."""
        batch, num_tokens, _ = tokens.shape
        shape = (batch, num_tokens, self.num_scores, self.head_dim)
        query = self.query(tokens).view(shape) / math.sqrt(self.head_dim)
        key = self.key(tokens).view(shape)
        if pairs is None:
            return torch.einsum("bxsd,bysd->bsxy", query, key)
        first, second = pairs
        return (take_tokens(query, first) * take_tokens(key, second)).sum(-1).transpose(1, 2)


def check_token_grid(objective: str, grid: tuple[int, int]) -> None:
    """Reject a grid with a single token, on which every position task is trivial."""
    if grid[0] * grid[1] < 2:
        raise ConfigError(
            f"objective '{objective}' needs at least 2 patch tokens but the token grid is {grid[0]}×{grid[1]}: "
            "use a smaller model.patch_size (or mega_patches k >= 2)"
        )


def check_view_grid(view: View, view_name: str, setup: ObjectiveSetup) -> None:
    """A view whose ops set its own token grid (mega-patches) must match the backbone's input size."""
    if view.grid is not None and tuple(view.grid) != tuple(setup.grid):
        k = view.grid[0]
        raise ConfigError(
            f"view '{view_name}' has a {k}×{view.grid[1]} mega-patch grid but the backbone's is "
            f"{setup.grid[0]}×{setup.grid[1]}: set model.img_size={k * setup.patch_size} (k × patch size)"
        )


class PairTaskConfig(ObjectiveConfig):
    max_pairs: int | None = Field(None, gt=0, description="random pairs scored per image; None: all N × N pairs")


class PairTask(Objective):
    """A task scored on token pairs by a :class:`PairScores` head; subclasses give the targets and the loss."""

    Config = PairTaskConfig
    num_scores: ClassVar[int]
    requires_patch_tokens = True

    def __init__(self, config: PairTaskConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        check_token_grid(self.name, setup.grid)
        self.head = PairScores(setup.embed_dim, self.num_scores)

    def targets(self, h: int, w: int) -> Tensor:
        """Targets [N, N] of every ordered pair of grid positions."""
        raise NotImplementedError

    def loss(self, scores: Tensor, targets: Tensor, training: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and metrics from ``scores`` [B, S, ...] and ``targets`` [B, ...] (all pairs or sampled ones)."""
        raise NotImplementedError

    def forward(self, ctx: StepContext) -> ObjectiveOutput:
        losses, metrics = [], {}
        for view_name in self.config.views:
            view = ctx.view(view_name)
            check_view_grid(view, view_name, self.setup)
            encoded = ctx.encode(view_name)
            tokens = encoded.patch_tokens
            batch, num_tokens = tokens.shape[:2]
            grid_targets = self.targets(*encoded.grid).to(tokens.device)
            max_pairs = self.config.max_pairs
            if max_pairs is None or num_tokens * num_tokens <= max_pairs:
                scores = self.head(tokens)
                targets = pair_labels(grid_targets, view.patch_order, batch)
            else:
                pairs = sample_pairs(batch, num_tokens, max_pairs, device=tokens.device)
                scores = self.head(tokens, pairs)
                targets = sampled_pair_labels(grid_targets, view.patch_order, *pairs)
            loss, metrics = self.loss(scores.float(), targets, ctx.training)
            losses.append(loss)
        return ObjectiveOutput(torch.stack(losses).mean(), metrics)


class RelationsConfig(PairTaskConfig):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="applied in training only")


@register_objective
class Relations(PairTask):
    """9-way spatial relation of every ordered pair of patch tokens (RelViT's main task)."""

    name = "relations"
    Config = RelationsConfig
    num_scores = len(RELATION_NAMES)

    def targets(self, h: int, w: int) -> Tensor:
        return relation_labels(h, w)

    def loss(self, scores: Tensor, targets: Tensor, training: bool) -> tuple[Tensor, dict[str, Tensor]]:
        smoothing = self.config.label_smoothing if training else 0.0
        loss = F.cross_entropy(scores, targets, label_smoothing=smoothing)
        return loss, {"acc": (scores.argmax(1) == targets).float().mean()}


class PairRegression(PairTask):
    """A pair task regressing one scalar per ordered pair with MSE (RelViT's distance and angle tasks)."""

    num_scores = 1

    def loss(self, scores: Tensor, targets: Tensor, training: bool) -> tuple[Tensor, dict[str, Tensor]]:
        return F.mse_loss(scores.squeeze(1), targets), {}


@register_objective
class Distances(PairRegression):
    """Regression of the scaled grid distance of every ordered pair of patch tokens."""

    name = "distances"

    def targets(self, h: int, w: int) -> Tensor:
        return distance_targets(h, w)


@register_objective
class Angles(PairRegression):
    """Regression of the scaled angle between the grid-coordinate vectors of every ordered pair of patch tokens."""

    name = "angles"

    def targets(self, h: int, w: int) -> Tensor:
        return angle_targets(h, w)


@register_objective
class AbsPosition(Objective):
    """Classification of each patch token's grid index by a linear head."""

    name = "abs_position"
    requires_patch_tokens = True

    def __init__(self, config: ObjectiveConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        check_token_grid(self.name, setup.grid)
        self.head = nn.Linear(setup.embed_dim, setup.grid[0] * setup.grid[1])

    def forward(self, ctx: StepContext) -> ObjectiveOutput:
        losses, metrics = [], {}
        for view_name in self.config.views:
            view = ctx.view(view_name)
            check_view_grid(view, view_name, self.setup)
            encoded = ctx.encode(view_name)
            logits = self.head(encoded.patch_tokens).float()
            grid_labels = abs_position_labels(*encoded.grid).to(logits.device)
            labels = token_labels(grid_labels, view.patch_order, len(logits))
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels.flatten()))
            metrics["acc"] = (logits.argmax(-1) == labels).float().mean()
        return ObjectiveOutput(torch.stack(losses).mean(), metrics)
