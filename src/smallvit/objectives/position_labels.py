"""Position labels: each output token must say where its patch came from, absolutely (APL) or relative to another.

Zhang, Gong, Wu, "Position Label for Self-Supervised Vision Transformer", AAAI 2023. On an h × w token grid,
*absolute* position labels (APL) classify every final patch token into its grid index (N = h·w classes) from
the first ``channel_split`` of its channels; *relative* position labels (RPL) classify every ordered token pair
(i, j) into its offset class ``(r_i − r_j + h − 1)·(2w − 1) + (c_i − c_j + w − 1)`` from
``concat(z_i[:k], z_j[k:])``, (2h − 1)(2w − 1) classes (for a square S × S grid, Swin's relative position
index). Both are added to supervised training (weight 0.5 as released) or to MAE pre-training on the visible
tokens (see :mod:`smallvit.objectives.mae`).

Matches the released code in the labels, the channel split and the head shapes (APL: D/2 → D/2 → D/4 → N with
GELU). Differs on purpose: labels are built once per grid and broadcast over any batch (the released tensors
are batch-sized), heads are sized from the backbone width (the released RPL head fits Swin-T only), the RPL
head uses the same D/2 → D/4 widths as APL, and its first layer is factorised: ``W·concat(a, b) = W_a·a + W_b·b``
is computed per token and broadcast-added, so the [B, N, N, D] pair concatenation is never built.
``max_pairs`` samples pairs per image when N² is too many. Labels follow ``View.patch_order``.

With a position embedding, APL is solved by reading the embedding back: train these with ``model.pos_embed:
false`` (ViT) or the Swin relative position bias off, as the recipes do.

Example:
    >>> objective = RelativePositionLabel(RelativePositionLabel.Config(name="rpl"), setup)
    >>> out = objective(StepContext(batch, backbone))
    >>> out.loss.backward(); out.metrics["acc1"]
    >>> relative_labels(2, 2)  # [4, 4] classes in range(9)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

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
    pair_labels,
    pair_offsets,
    sample_pairs,
    sampled_pair_labels,
    take_tokens,
    token_index,
    token_labels,
)

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
    if not 0 < index < embed_dim:
        raise ValueError(
            f"channel_split={channel_split} leaves no channel on one side of {embed_dim}: choose 0 < channel_split < 1"
        )
    return index


def _classifier(width: int, embed_dim: int, num_classes: int) -> nn.Sequential:
    """GELU MLP ``width → D/2 → D/4 → num_classes`` (D = backbone width), the shape of the released APL head."""
    hidden, narrow = max(embed_dim // 2, 1), max(embed_dim // 4, 1)
    return nn.Sequential(
        nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, narrow), nn.GELU(), nn.Linear(narrow, num_classes)
    )


class AbsolutePositionHead(nn.Module):
    """Logits [B, K, N] over the N grid positions from the first ``channel_split`` of each token's channels.

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
        mlp = _classifier(embed_dim, embed_dim, num_classes)
        self.first, self.rest = mlp[0], mlp[1:]

    def _token_projections(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """First-layer contributions [B, N, H₁] of each token as the pair's first and as its second member."""
        weight, k = self.first.weight, self.split
        as_first = F.linear(tokens[..., :k], weight[:, :k], self.first.bias)
        as_second = F.linear(tokens[..., k:], weight[:, k:])
        return as_first, as_second

    def forward(self, tokens: Tensor, first: Tensor | None = None, second: Tensor | None = None) -> Tensor:
        """Logits of every ordered pair [B, N, N, C], or of the pairs (``first``, ``second`` [B, P]): [B, P, C]."""
        as_first, as_second = self._token_projections(tokens)
        if first is None:
            hidden = as_first[:, :, None] + as_second[:, None, :]
        else:
            hidden = take_tokens(as_first, first) + take_tokens(as_second, second)
        return self.rest(hidden)

    def forward_concatenated(self, tokens: Tensor) -> Tensor:
        """The same all-pair logits computed the direct way, building the [B, N, N, D] concatenation.

        The reference the factorised forward is tested and benchmarked against; memory grows as N²·D.
        """
        n, k = tokens.shape[1], self.split
        pairs = torch.cat(
            [tokens[:, :, None, :k].expand(-1, -1, n, -1), tokens[:, None, :, k:].expand(-1, n, -1, -1)], dim=-1
        )
        return self.rest(self.first(pairs))


def _accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == targets).float().mean()


def absolute_position_loss(
    head: AbsolutePositionHead, tokens: Tensor, grid: tuple[int, int], patch_order: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of ``head`` on tokens [B, K, D] against their grid positions; returns (loss, top-1 accuracy).

    ``patch_order`` [B, K] is the grid index of the patch at each token (``None``: all N tokens in natural order).
    """
    logits = head(tokens).float()
    targets = token_labels(absolute_labels(*grid).to(tokens.device), patch_order, len(tokens))
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten()), _accuracy(logits, targets)


def relative_position_loss(
    head: RelativePositionHead,
    tokens: Tensor,
    grid: tuple[int, int],
    patch_order: Tensor | None,
    max_pairs: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of ``head`` on the ordered pairs of tokens [B, K, D]; returns (loss, top-1 accuracy).

    All K² pairs, or ``max_pairs`` pairs per image drawn at random (with replacement) when fewer than K².
    ``patch_order`` as in :func:`absolute_position_loss`.
    """
    labels = relative_labels(*grid).to(tokens.device)
    batch, num_tokens = tokens.shape[:2]
    if max_pairs is None or max_pairs >= num_tokens**2:
        logits = head(tokens).float()
        targets = pair_labels(labels, patch_order, batch)
    else:
        first, second = sample_pairs(batch, num_tokens, max_pairs, device=tokens.device)
        logits = head(tokens, first, second).float()
        targets = sampled_pair_labels(labels, patch_order, first, second)
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten()), _accuracy(logits, targets)


def check_grid(objective: str, built_for: tuple[int, int], encoded: tuple[int, int]) -> None:
    """Position heads have one output per position: the view's token grid must be the one they were built for."""
    if tuple(encoded) != tuple(built_for):
        raise ConfigError(
            f"{objective} was built for a {built_for[0]}×{built_for[1]} token grid but got {encoded[0]}×{encoded[1]}: "
            "train at the model's img_size and patch_size"
        )


class AbsolutePositionLabelConfig(ObjectiveConfig):
    weight: float = 0.5
    channel_split: float = Field(0.5, gt=0, lt=1, description="fraction of each token's channels the head reads")


class RelativePositionLabelConfig(ObjectiveConfig):
    weight: float = 0.5
    channel_split: float = Field(0.5, gt=0, lt=1, description="channels of the first token; the rest from the second")
    max_pairs: int | None = Field(None, gt=0, description="random pairs per image; None: all N² ordered pairs")


@register_objective
class AbsolutePositionLabel(Objective):
    """APL: classify each final patch token into its grid position."""

    name = "apl"
    requires_patch_tokens = True
    Config = AbsolutePositionLabelConfig

    def __init__(self, config: AbsolutePositionLabelConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        h, w = setup.grid
        self.head = AbsolutePositionHead(setup.embed_dim, h * w, config.channel_split)

    def forward(self, ctx: StepContext) -> ObjectiveOutput:
        losses, accuracies = [], []
        for view_name in self.config.views:
            encoded = ctx.encode(view_name)
            check_grid(self.name, self.setup.grid, encoded.grid)
            loss, accuracy = absolute_position_loss(
                self.head, encoded.patch_tokens, encoded.grid, ctx.view(view_name).patch_order
            )
            losses.append(loss)
            accuracies.append(accuracy)
        return ObjectiveOutput(torch.stack(losses).mean(), {"acc1": torch.stack(accuracies).mean()})


@register_objective
class RelativePositionLabel(Objective):
    """RPL: classify each ordered pair of final patch tokens into its relative offset."""

    name = "rpl"
    requires_patch_tokens = True
    Config = RelativePositionLabelConfig

    def __init__(self, config: RelativePositionLabelConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        self.head = RelativePositionHead(setup.embed_dim, relative_label_count(*setup.grid), config.channel_split)

    def forward(self, ctx: StepContext) -> ObjectiveOutput:
        losses, accuracies = [], []
        for view_name in self.config.views:
            encoded = ctx.encode(view_name)
            check_grid(self.name, self.setup.grid, encoded.grid)
            loss, accuracy = relative_position_loss(
                self.head, encoded.patch_tokens, encoded.grid, ctx.view(view_name).patch_order, self.config.max_pairs
            )
            losses.append(loss)
            accuracies.append(accuracy)
        return ObjectiveOutput(torch.stack(losses).mean(), {"acc1": torch.stack(accuracies).mean()})
