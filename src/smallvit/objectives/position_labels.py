"""Position labels: each output token must say where its patch came from, absolutely (APL) or relative to another.

Zhang, Gong, Wu, "Position Label for Self-Supervised Vision Transformer", AAAI 2023. On an h × w token grid,
*absolute* position labels (APL) classify every final patch token into its grid index (N = h·w classes) from
the first ``channel_split`` of its channels; *relative* position labels (RPL) classify every ordered token pair
(i, j) into its offset class ``(r_i − r_j + h − 1)·(2w − 1) + (c_i − c_j + w − 1)`` from
``concat(z_i[:k], z_j[k:])``, (2h − 1)(2w − 1) classes (for a square S × S grid, Swin's relative position
index). Both are added to supervised training (weight 0.5 as released) or, listed beside ``mae`` with
``masked_by: mae``, to MAE pre-training on the visible tokens of its masked encoding.

Matches the released code in the labels, the channel split and the head shapes (APL: D/2 → D/2 → D/4 → N with
GELU). Differs on purpose: labels are built once per grid and broadcast over any batch (the released tensors
are batch-sized), heads are sized from the backbone width (the released RPL head fits Swin-T only), the RPL
head uses the same D/2 → D/4 widths as APL, and its first layer is factorised: ``W·concat(a, b) = W_a·a + W_b·b``
is computed per token and broadcast-added, so the [B, N, N, D] pair concatenation is never built, and its last
layer is computed together with the cross-entropy (:meth:`RelativePositionHead.loss`), so the logits are not kept.
``max_pairs`` samples pairs per image when N² is too many. Labels follow ``View.patch_order``.

RelViT's absolute-position task (Camporese et al., BMVC 2022; ``abs_position``) is the same objective with a
linear head on all channels, ``head: linear, channel_split: 1.0`` (the released ``Linear(D, N)``), registered
under its own name with RelViT's weight 1.

With a position embedding, APL is solved by reading the embedding back: train these with ``model.pos_embed:
false`` (ViT) or the Swin relative position bias off, as the recipes do.

Example:
    >>> objective = RelativePositionLabel(RelativePositionLabel.Config(name="rpl"), setup)
    >>> out = objective(StepContext(batch, backbone))
    >>> out.loss.backward(); out.metrics["acc1"]
    >>> relative_labels(2, 2)  # [4, 4] classes in range(9)
"""

from __future__ import annotations

from typing import Literal

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
from smallvit.objectives.grid import choose_pairs, pair_offsets, pair_targets, take_tokens, token_index, token_labels

absolute_labels = token_index  # [h·w]: APL's class of every token is its row-major index


def relative_label_count(h: int, w: int) -> int:
    """Number of relative position classes on an h × w grid: (2h − 1)(2w − 1)."""
    return (2 * h - 1) * (2 * w - 1)


def relative_labels(h: int, w: int) -> Tensor:
    """[N, N] class of every ordered token pair (i, j): ``(r_i − r_j + h − 1)·(2w − 1) + (c_i − c_j + w − 1)``."""
    offsets = pair_offsets(h, w)
    return (offsets[..., 0] + h - 1) * (2 * w - 1) + offsets[..., 1] + w - 1


def channel_split_index(embed_dim: int, channel_split: float) -> int:
    """Channel index splitting a token into the part APL (and RPL's first token) reads and the rest."""
    index = round(embed_dim * channel_split)
    if not 0 < index <= embed_dim:
        raise ValueError(
            f"channel_split={channel_split} leaves no channel to read of {embed_dim}: choose 0 < channel_split <= 1"
        )
    return index


def absolute_position_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of position logits [B, K, N] against the grid index [B, K] of the patch at each token.

    Usage::

        head = AbsolutePositionHead(embed_dim=192, num_positions=64)
        tokens = backbone(images).patch_tokens                                       # [B, 64, 192], 8×8 grid
        targets = token_labels(absolute_labels(8, 8), patch_order, len(tokens))      # [B, 64]
        loss = absolute_position_loss(head(tokens), targets)
        loss.backward()
    """
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def relative_position_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of relative-position logits [B, ..., C] against offset classes [B, ...].

    ``...`` is (K, K) for all ordered pairs of K tokens or (P,) for sampled pairs. Usage::

        head = RelativePositionHead(embed_dim=192, num_classes=relative_label_count(8, 8))
        tokens = backbone(images).patch_tokens                                       # [B, 64, 192], 8×8 grid
        pairs = sample_pairs(len(tokens), 64, 1024)                                  # or None: all 64² pairs
        targets = pair_targets(relative_labels(8, 8), len(tokens), patch_order, pairs)
        loss = relative_position_loss(head(tokens, pairs), targets)
    """
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def _classifier(width: int, embed_dim: int, num_classes: int) -> nn.Sequential:
    """GELU MLP ``width → D/2 → D/4 → num_classes`` (D = backbone width), the shape of the released APL head."""
    hidden, narrow = max(embed_dim // 2, 1), max(embed_dim // 4, 1)
    return nn.Sequential(
        nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, narrow), nn.GELU(), nn.Linear(narrow, num_classes)
    )


class AbsolutePositionHead(nn.Module):
    """Logits [B, K, N] over the N grid positions from the first ``channel_split`` of each token's channels (APL).

    Args:
        embed_dim: token width D.
        num_positions: grid size N = h·w.
        channel_split: fraction of the channels the head reads (the first ones).
    """

    def __init__(self, embed_dim: int, num_positions: int, channel_split: float = 0.5):
        super().__init__()
        self.split = channel_split_index(embed_dim, channel_split)
        self.mlp = _classifier(self.split, embed_dim, num_positions)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.mlp(tokens[..., : self.split])


class LinearPositionHead(nn.Linear):
    """Logits [B, K, N] from ``Linear(k, N)`` on the first k = ``channel_split``·D channels (RelViT: all of them)."""

    def __init__(self, embed_dim: int, num_positions: int, channel_split: float = 1.0):
        self.split = channel_split_index(embed_dim, channel_split)
        super().__init__(self.split, num_positions)

    def forward(self, tokens: Tensor) -> Tensor:
        return super().forward(tokens[..., : self.split])


class RelativePositionHead(nn.Module):
    """Logits over relative position classes for token pairs, from ``concat(z_i[:k], z_j[k:])``.

    The first linear layer acts on the concatenation; it is applied as ``W[:, :k]·z_i[:k] + W[:, k:]·z_j[k:] + b``
    with both products computed once per token, so all N² pairs cost [B, N, N, D/2] hidden units and no
    [B, N, N, D] input.

    Args:
        embed_dim: token width D.
        num_classes: (2h − 1)(2w − 1) for an h × w grid.
        channel_split: k / D, where the first token's part ends and the second token's begins.
    """

    def __init__(self, embed_dim: int, num_classes: int, channel_split: float = 0.5):
        super().__init__()
        self.split = channel_split_index(embed_dim, channel_split)
        if self.split == embed_dim:
            raise ValueError(f"channel_split={channel_split} leaves no channel of the second token: choose it < 1")
        mlp = _classifier(embed_dim, embed_dim, num_classes)
        self.first, self.rest = mlp[0], mlp[1:]

    def _token_projections(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """First-layer contributions [B, N, H₁] of each token as the pair's first and as its second member."""
        weight, k = self.first.weight, self.split
        as_first = F.linear(tokens[..., :k], weight[:, :k], self.first.bias)
        as_second = F.linear(tokens[..., k:], weight[:, k:])
        return as_first, as_second

    def _features(self, tokens: Tensor, pairs: tuple[Tensor, Tensor] | None) -> Tensor:
        """Inputs [..., D/4] of the last layer for all pairs or ``pairs``."""
        as_first, as_second = self._token_projections(tokens)
        if pairs is None:
            hidden = as_first[:, :, None] + as_second[:, None, :]
        else:
            hidden = take_tokens(as_first, pairs[0]) + take_tokens(as_second, pairs[1])
        return self.rest[:-1](hidden)

    def forward(self, tokens: Tensor, pairs: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Logits of every ordered pair [B, N, N, C], or of ``pairs`` = (first, second [B, P]): [B, P, C]."""
        return self.rest[-1](self._features(tokens, pairs))

    def loss(
        self, tokens: Tensor, targets: Tensor, pairs: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``relative_position_loss(self(tokens, pairs), targets)`` and the top-1 accuracy, with the last layer and the
        cross-entropy computed together a chunk of pairs at a time (:class:`_ChunkedLinearCrossEntropy`)."""
        last = self.rest[-1]
        features = self._features(tokens, pairs).flatten(0, -2)
        return _ChunkedLinearCrossEntropy.apply(
            features, last.weight, last.bias, targets.flatten(), torch.is_grad_enabled()
        )

    def forward_concatenated(self, tokens: Tensor) -> Tensor:
        """The same all-pair logits computed the direct way, building the [B, N, N, D] concatenation.

        The reference the factorised forward is tested and benchmarked against; memory grows as N²·D.
        """
        n, k = tokens.shape[1], self.split
        pairs = torch.cat(
            [tokens[:, :, None, :k].expand(-1, -1, n, -1), tokens[:, None, :, k:].expand(-1, n, -1, -1)], dim=-1
        )
        return self.rest(self.first(pairs))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of ``features @ weight.T + bias`` [R, C] against ``targets`` [R], and the top-1 accuracy, a chunk
    of rows at a time: the logits, their log-softmax and their gradient exist for one chunk only, and the gradients of
    features, weight and bias are computed in the forward (the loss is a scalar: the backward only scales them).

    RPL's logits are the largest tensor of a step with it (1024 pairs × 128 images × 225 classes at 8 × 8 tokens);
    the autograd chain of linear layer and cross-entropy keeps four tensors of that size. On a shared 2-core CPU,
    forward and backward of RPL's head at 49 tokens took 0.81–0.84 s of CPU time against 0.97–1.02 s unfused on 2
    threads (one chunk), 0.34–0.39 s against 0.52–0.55 s on one thread (chunks of 2²¹ logits, 8 MB).
    """

    ELEMENTS_PER_CHUNK = 2**25  # 128 MB of float logits: one chunk at 49 and 64 tokens, 3 at 196

    @staticmethod
    def forward(
        ctx, features: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, grad_enabled: bool
    ) -> tuple[Tensor, Tensor]:
        rows = max(1, _ChunkedLinearCrossEntropy.ELEMENTS_PER_CHUNK // len(weight))
        want_grad = grad_enabled and any(ctx.needs_input_grad[:3])  # (needs_input_grad ignores torch.no_grad)
        grad_features = torch.empty_like(features)
        grad_weight, grad_bias = (
            torch.zeros_like(weight, dtype=torch.float32),
            torch.zeros_like(bias, dtype=torch.float32),
        )
        total = torch.zeros((), device=features.device)
        hits = torch.zeros((), device=features.device)
        for start in range(0, len(features), rows):
            x, index = features[start : start + rows], targets[start : start + rows, None]
            logits = F.linear(x, weight, bias).float()
            log_probs = logits.log_softmax(-1)
            picked = log_probs.gather(1, index)
            total -= picked.sum()
            hits += (logits.gather(1, index) == logits.amax(1, keepdim=True)).sum()
            if want_grad:
                grad = log_probs.exp_().scatter_add_(1, index, picked.fill_(-1))  # softmax − one-hot
                grad_features[start : start + rows] = grad.to(x.dtype) @ weight
                grad_weight.addmm_(grad.t(), x.float())
                grad_bias += grad.sum(0)
        count = len(targets)
        ctx.save_for_backward(
            grad_features / count, (grad_weight / count).to(weight.dtype), (grad_bias / count).to(bias.dtype)
        )
        accuracy = hits / count
        ctx.mark_non_differentiable(accuracy)
        return total / count, accuracy

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_hits: Tensor):
        return tuple(grad * grad_loss for grad in ctx.saved_tensors) + (None, None)


class AbsolutePositionLabelConfig(GridObjectiveConfig):
    head: Literal["mlp", "linear"] = Field("mlp", description="mlp: APL's D/2 → D/4 MLP; linear: RelViT's Linear")
    channel_split: float = Field(0.5, gt=0, le=1, description="fraction of each token's channels the head reads")


class RelativePositionLabelConfig(GridObjectiveConfig):
    channel_split: float = Field(0.5, gt=0, lt=1, description="channels of the first token; the rest from the second")
    max_pairs: int | None = Field(None, gt=0, description="random pairs per image; None: all N² ordered pairs")


@register_objective
class AbsolutePositionLabel(GridObjective):
    """APL: classify each final patch token into its grid position."""

    name = "apl"
    Config = AbsolutePositionLabelConfig
    default_weight = 0.5
    grid_labels = staticmethod(absolute_labels)

    def __init__(self, config: AbsolutePositionLabelConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        head = AbsolutePositionHead if config.head == "mlp" else LinearPositionHead
        self.head = head(setup.embed_dim, setup.grid[0] * setup.grid[1], config.channel_split)

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        tokens = self.tokens(ctx, view)
        logits = self.head(tokens.tokens).float()
        targets = token_labels(self.labels, tokens.positions, len(logits))
        return ObjectiveOutput(absolute_position_loss(logits, targets), {"acc1": top1(logits, targets)})


class AbsPositionConfig(AbsolutePositionLabelConfig):
    head: Literal["mlp", "linear"] = Field(
        "linear", description="RelViT's `Linear(D, N)` head (`linear`) or APL's MLP (`mlp`)"
    )
    channel_split: float = Field(1.0, gt=0, le=1, description="share of each token's channels the head reads")


@register_objective
class AbsPosition(AbsolutePositionLabel):
    """RelViT's absolute position task: APL with ``Linear(D, N)`` on all channels, weight 1 (Camporese et al.)."""

    name = "abs_position"
    Config = AbsPositionConfig
    default_weight = 1.0


@register_objective
class RelativePositionLabel(GridObjective):
    """RPL: classify each ordered pair of final patch tokens into its relative offset."""

    name = "rpl"
    Config = RelativePositionLabelConfig
    default_weight = 0.5
    grid_labels = staticmethod(relative_labels)

    def __init__(self, config: RelativePositionLabelConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        self.head = RelativePositionHead(setup.embed_dim, relative_label_count(*setup.grid), config.channel_split)

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        tokens = self.tokens(ctx, view)
        batch, num_tokens = tokens.tokens.shape[:2]
        pairs = choose_pairs(batch, num_tokens, self.config.max_pairs, tokens.tokens.device)
        loss, accuracy = self.head.loss(tokens.tokens, pair_targets(self.labels, batch, tokens.positions, pairs), pairs)
        return ObjectiveOutput(loss, {"acc1": accuracy})
