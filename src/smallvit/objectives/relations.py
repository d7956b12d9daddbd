"""RelViT: spatial-relation tasks on every output patch token.

Camporese, Izzo, Ballan, "Where are my Neighbors? Exploiting Patches Relations in Self-Supervised Vision
Transformer", BMVC 2022 (https://arxiv.org/abs/2206.00481). Released code: https://github.com/guglielmocamporese/relvit.

Tasks on the final (post-norm) patch tokens of an ``h × w`` token grid, CLS and register tokens excluded:

- ``relations``: for every ordered token pair (x, y), x = y included, a 9-way class saying where x lies with respect
  to y: ``3·(sign(r_x − r_y) + 1) + (sign(c_x − c_y) + 1)``, i.e. LU, CU, RU, LC, CC, RC, LD, CD, RD (rows grow
  downward, columns rightward). Logits are 9 bilinear scores per pair, ``⟨W_q^k z_x, W_k^k z_y⟩ / √d`` with
  ``d = D // 9`` and no bias; cross-entropy at every pair (:func:`relation_loss`, which the objective computes
  over all pairs with :meth:`PairScores.loss`, a chunk of images at a time), optional label smoothing; metric
  ``acc1`` (pair accuracy).
- ``abs_position``: each token's grid index from ``Linear(D, N)``; it is the position-label objective with a linear
  head on all channels, registered under this name in :mod:`smallvit.objectives.position_labels`.
- ``distances`` and ``angles`` (off by default): MSE regression from one bilinear score per pair (``d = D``), with
  the paper's targets: the Euclidean distance between the two grid coordinates divided by its maximum over the grid;
  the angle between the two grid-coordinate vectors, with coordinates shifted by half the grid side (so every
  vector lies in the positive quadrant), divided by π and by its maximum; both then rescaled from [0, 1] to [−1, 1]
  (:func:`pair_regression_loss`).

When patches were shuffled (``patch_shuffle``) the labels follow the view's ``patch_order``: a token's labels are
those of the grid position its patch came from. With ``mega_patches`` the tasks live on the K × K mega-patch grid.
``max_pairs`` bounds the memory of the pair tasks on large grids (Swin, 224 px / patch 8): each image scores that
many random pairs instead of all N × N (all pairs are used when N × N <= max_pairs). ``masked_by: mae`` puts a task
on the visible tokens of MAE's masked encoding.

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
    >>> out.loss.backward(); out.metrics["acc1"]
    >>> head = PairScores(embed_dim=192, num_scores=9)              # in your own loop:
    >>> loss = relation_loss(head(tokens), pair_targets(relation_labels(8, 8), len(tokens)))
"""

from __future__ import annotations

import math
from typing import ClassVar

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
    top1,
)
from smallvit.objectives.grid import choose_pairs, grid_coords, pair_offsets, pair_targets, take_tokens

RELATION_NAMES = ("LU", "CU", "RU", "LC", "CC", "RC", "LD", "CD", "RD")
"""Relation classes in label order: where token x lies with respect to token y (left/center/right, up/center/down)."""


def relation_labels(h: int, w: int) -> Tensor:
    """[h·w, h·w] int64: ``label[x, y]`` = class in :data:`RELATION_NAMES` of token x relative to token y."""
    offsets = pair_offsets(h, w)
    return 3 * (offsets[..., 0].sign() + 1) + (offsets[..., 1].sign() + 1)


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


def relation_loss(scores: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of relation scores [B, 9, ...] (class dimension 1) against relation classes [B, ...].

    ``...`` is (N, N) for all ordered pairs of N tokens or (P,) for sampled pairs; the targets come from
    :func:`~smallvit.objectives.grid.pair_targets` on :func:`relation_labels`. Usage::

        head = PairScores(embed_dim=192, num_scores=9)
        tokens = backbone(images).patch_tokens                       # [B, 64, 192] on an 8×8 grid
        targets = pair_targets(relation_labels(8, 8), len(tokens))   # [B, 64, 64]
        loss = relation_loss(head(tokens), targets, label_smoothing=0.1)
        loss.backward()
    """
    return F.cross_entropy(scores, targets, label_smoothing=label_smoothing)


def pair_regression_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """MSE between one score per pair [B, 1, ...] and its target [B, ...] (RelViT's distances and angles).

    Usage::

        head = PairScores(embed_dim=192, num_scores=1)
        targets = pair_targets(distance_targets(8, 8), len(tokens))  # or angle_targets
        loss = pair_regression_loss(head(tokens), targets)
    """
    return F.mse_loss(scores.squeeze(1), targets)


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

    def project(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Per-score queries (scaled by 1/√d) and keys of ``tokens`` [B, N, D]: each [B, N, S, d]."""
        shape = (*tokens.shape[:2], self.num_scores, self.head_dim)
        return self.query(tokens).view(shape) / math.sqrt(self.head_dim), self.key(tokens).view(shape)

    def forward(self, tokens: Tensor, pairs: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Scores [B, S, N, N] of all pairs of ``tokens`` [B, N, D], or [B, S, P] of ``pairs`` = (first, second)."""
        query, key = self.project(tokens)
        if pairs is None:
            return torch.einsum("bxsd,bysd->bsxy", query, key)
        first, second = pairs
        return (take_tokens(query, first) * take_tokens(key, second)).sum(-1).transpose(1, 2)

    def loss(self, tokens: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """``relation_loss(self(tokens), targets, label_smoothing)`` over all pairs, and the pairs' top-1 accuracy,
        computed a few images at a time (:class:`_ChunkedRelationLoss`): the same values, in less time and memory."""
        return _ChunkedRelationLoss.apply(*self.project(tokens), targets, label_smoothing, torch.is_grad_enabled())


class _ChunkedRelationLoss(torch.autograd.Function):
    """Label-smoothed cross-entropy of the bilinear scores of all pairs, and their top-1 accuracy, a chunk of images
    at a time: the scores [c, S, N, N], their log-softmax and their gradient exist for one chunk only, and the
    gradients of query and key are computed in the forward (the loss is a scalar: the backward only scales them).

    The autograd chain of einsum and cross-entropy keeps four tensors of the scores' size between forward and backward
    and spends most of its time writing and reading them. Forward and backward of the loss of [128, 9, 196, 196]
    scores on one CPU thread: 0.55–0.57 s chunked against 0.89 s (at 64 tokens both about 0.1 s).
    """

    ELEMENTS_PER_CHUNK = 2**22  # 16 MB of float scores: 12 images at 196 tokens, 113 at 64

    @staticmethod
    def forward(
        ctx, query: Tensor, key: Tensor, targets: Tensor, label_smoothing: float, grad_enabled: bool
    ) -> tuple[Tensor, Tensor]:
        batch, num_tokens, num_scores, dim = query.shape
        images = max(1, _ChunkedRelationLoss.ELEMENTS_PER_CHUNK // (num_scores * num_tokens**2))
        want_grad = grad_enabled and any(ctx.needs_input_grad[:2])  # (needs_input_grad ignores torch.no_grad)
        grad_query, grad_key = torch.empty_like(query), torch.empty_like(key)
        total = torch.zeros((), device=query.device)
        hits = torch.zeros((), device=query.device)
        for start in range(0, batch, images):
            chunk = slice(start, start + images)
            q = query[chunk].transpose(1, 2).reshape(-1, num_tokens, dim)  # [c·S, N, d]
            k = key[chunk].transpose(1, 2).reshape(-1, num_tokens, dim)
            scores = torch.bmm(q, k.transpose(1, 2)).view(-1, num_scores, num_tokens, num_tokens).float()
            index = targets[chunk].unsqueeze(1)
            log_probs = scores.log_softmax(1)
            picked = log_probs.gather(1, index)
            total -= (1 - label_smoothing) * picked.sum()
            if label_smoothing:
                total -= label_smoothing / num_scores * log_probs.sum()
            hits += (scores.gather(1, index) == scores.amax(1, keepdim=True)).sum()
            if want_grad:
                grad = log_probs.exp_()  # softmax − smoothed one-hot: d(pair loss)/d(scores)
                if label_smoothing:
                    grad.sub_(label_smoothing / num_scores)
                grad.scatter_add_(1, index, picked.fill_(label_smoothing - 1))
                grad = grad.view(-1, num_tokens, num_tokens).to(q.dtype)
                shape = (-1, num_scores, num_tokens, dim)
                grad_query[chunk] = torch.bmm(grad, k).view(shape).transpose(1, 2)
                grad_key[chunk] = torch.bmm(grad.transpose(1, 2), q).view(shape).transpose(1, 2)
        count = targets.numel()
        ctx.save_for_backward(grad_query / count, grad_key / count)
        accuracy = hits / count
        ctx.mark_non_differentiable(accuracy)
        return total / count, accuracy

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_hits: Tensor):
        grad_query, grad_key = ctx.saved_tensors
        return grad_query * grad_loss, grad_key * grad_loss, None, None, None


class PairTaskConfig(GridObjectiveConfig):
    max_pairs: int | None = Field(None, gt=0, description="random pairs scored per image; None: all N × N pairs")


class PairTask(GridObjective):
    """A task scored on token pairs by a :class:`PairScores` head; subclasses give ``grid_labels`` (the targets
    [N, N] of every ordered pair of grid positions) and the loss."""

    Config = PairTaskConfig
    num_scores: ClassVar[int]

    def __init__(self, config: PairTaskConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        self.head = PairScores(setup.embed_dim, self.num_scores)

    def loss(
        self, tokens: Tensor, pairs: tuple[Tensor, Tensor] | None, targets: Tensor, training: bool
    ) -> ObjectiveOutput:
        """Loss and metrics of ``tokens`` [B, K, D] on all pairs (``pairs=None``) or the sampled ``pairs``, against
        ``targets`` [B, K, K] or [B, P]."""
        raise NotImplementedError

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        tokens = self.tokens(ctx, view)
        batch, num_tokens = tokens.tokens.shape[:2]
        pairs = choose_pairs(batch, num_tokens, self.config.max_pairs, tokens.tokens.device)
        return self.loss(tokens.tokens, pairs, pair_targets(self.labels, batch, tokens.positions, pairs), ctx.training)


class RelationsConfig(PairTaskConfig):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="applied in training only")


@register_objective
class Relations(PairTask):
    """9-way spatial relation of every ordered pair of patch tokens (RelViT's main task)."""

    name = "relations"
    Config = RelationsConfig
    num_scores = len(RELATION_NAMES)
    grid_labels = staticmethod(relation_labels)

    def loss(
        self, tokens: Tensor, pairs: tuple[Tensor, Tensor] | None, targets: Tensor, training: bool
    ) -> ObjectiveOutput:
        smoothing = self.config.label_smoothing if training else 0.0
        if pairs is None:
            loss, accuracy = self.head.loss(tokens, targets, smoothing)
        else:
            scores = self.head(tokens, pairs).float()
            loss, accuracy = relation_loss(scores, targets, smoothing), top1(scores, targets, dim=1)
        return ObjectiveOutput(loss, {"acc1": accuracy})


class PairRegression(PairTask):
    """A pair task regressing one scalar per ordered pair with MSE (RelViT's distance and angle tasks)."""

    num_scores = 1

    def loss(
        self, tokens: Tensor, pairs: tuple[Tensor, Tensor] | None, targets: Tensor, training: bool
    ) -> ObjectiveOutput:
        return ObjectiveOutput(pair_regression_loss(self.head(tokens, pairs).float(), targets))


@register_objective
class Distances(PairRegression):
    """Regression of the scaled grid distance of every ordered pair of patch tokens."""

    name = "distances"
    grid_labels = staticmethod(distance_targets)


@register_objective
class Angles(PairRegression):
    """Regression of the scaled angle between the grid-coordinate vectors of every ordered pair of patch tokens."""

    name = "angles"
    grid_labels = staticmethod(angle_targets)
