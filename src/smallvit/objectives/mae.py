"""Masked autoencoding: reconstruct the masked patches from an encoding of the visible ones.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022: mask a random ``mask_ratio`` of the
patches of every image, encode only the visible ones, and let a light decoder (timm ``Block``\\ s, its own
mask token and position embedding) reconstruct the pixels of the masked patches; the loss is the MSE on
per-patch normalised pixels of masked patches only (:func:`mae_loss`).

The objective publishes each view's visible patches (:meth:`StepContext.publish_mask`), so objectives listed after
it with ``masked_by: mae`` read the same masked encoding: ``apl`` / ``rpl`` beside it are MAE with position labels
(Zhang, Gong, Wu, "Position Label for Self-Supervised Vision Transformer", AAAI 2023) on the visible tokens. The
encoder must then have no position embedding (``model.pos_embed: false``), otherwise APL reads it back; the
decoder keeps its own.

Matches the reference MAE (facebookresearch/mae) in masking (per-sample random permutation, the same count
masked in every image), target normalisation (``norm_pix_loss``) and loss. Differs on purpose: the decoder
sees only patch tokens (the reference also passes the CLS token through it), and the masked count is
``round(mask_ratio · N)`` (the reference truncates the visible count). Encoder: smallvit's ViT backbone through
``backbone(images, keep=visible)``, so Swin (windowed attention) cannot be used.

Example (in a recipe: ``objectives: [{name: mae}, {name: apl, weight: 0.5, masked_by: mae}]``):
    >>> mae = MAE(MAE.Config(name="mae", mask_ratio=0.75), setup)
    >>> apl = build_objective(parse_objective_config({"name": "apl", "masked_by": "mae"}), setup)
    >>> ctx = StepContext(batch, backbone)
    >>> loss = mae(ctx).loss + 0.5 * apl(ctx).loss                  # one masked forward, shared
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
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
from smallvit.objectives.grid import take_tokens


def masked_count(num_tokens: int, mask_ratio: float) -> int:
    """Patches masked in every image: ``round(mask_ratio · N)``, keeping at least one masked and one visible."""
    count = round(mask_ratio * num_tokens)
    if not 0 < count < num_tokens:
        raise ValueError(f"mask_ratio={mask_ratio} masks {count} of {num_tokens} patches: use a ratio that masks 1…N−1")
    return count


def random_masking(
    batch: int, num_tokens: int, mask_ratio: float, generator: torch.Generator | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """Per-image random split of the N token indices: (visible [B, N − M], masked [B, M]), each sorted."""
    order = torch.rand(batch, num_tokens, generator=generator, device=device).argsort(dim=1)
    num_visible = num_tokens - masked_count(num_tokens, mask_ratio)
    return order[:, :num_visible].sort(dim=1).values, order[:, num_visible:].sort(dim=1).values


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] → [B, N, p·p·C], patches row-major, pixels within a patch row-major with channels last."""
    b, c, h, w = images.shape
    p = patch_size
    patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(b, (h // p) * (w // p), p * p * c)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Each patch's pixels to zero mean and unit variance (MAE's ``norm_pix_loss`` target)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(predicted: Tensor, images: Tensor, masked: Tensor, patch_size: int, norm_pix_loss: bool = True) -> Tensor:
    """MSE between ``predicted`` pixels [B, M, p·p·C] and the masked patches (indices [B, M]) of ``images``.

    Only masked patches enter; with ``norm_pix_loss`` each target patch is normalised to zero mean, unit variance.
    Usage::

        visible, masked = random_masking(len(images), 64, 0.75)
        tokens = backbone(images, keep=visible).patch_tokens        # [B, 16, D]: the visible patches only
        predicted = decoder(tokens, visible, masked)                  # an MAEDecoder
        loss = mae_loss(predicted, images, masked, patch_size=4)
        loss.backward()
    """
    target = take_tokens(patchify(images, patch_size), masked).float()
    if norm_pix_loss:
        target = normalize_patches(target)
    return F.mse_loss(predicted.float(), target)


class MAEDecoder(nn.Module):
    """Reconstructs every patch from the visible encoder tokens.

    Visible tokens are projected to ``dim``, mask tokens fill the other positions, the decoder position
    embedding is added, ``depth`` timm Blocks run, and a linear layer predicts each patch's pixels.

    Args:
        embed_dim: encoder width.
        grid: (h, w) patch grid.
        patch_dim: pixels per patch (p·p·C).
        dim, depth, num_heads, mlp_ratio: decoder width, blocks, heads and MLP ratio.
        pos_embed: ``sincos`` (fixed 2-D sin-cos, as MAE) or ``learned``.
    """

    def __init__(
        self,
        embed_dim: int,
        grid: tuple[int, int],
        patch_dim: int,
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        pos_embed: Literal["sincos", "learned"] = "sincos",
    ):
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        num_tokens = grid[0] * grid[1]
        if pos_embed == "sincos":
            sincos = build_sincos2d_pos_embed(list(grid), dim).reshape(1, num_tokens, dim)
            self.register_buffer("pos_embed", sincos, persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.predict = nn.Linear(dim, patch_dim)

    def forward(self, visible_tokens: Tensor, visible: Tensor, predict_at: Tensor) -> Tensor:
        """Pixels [B, M, patch_dim] at token indices ``predict_at`` [B, M], from tokens [B, K, D] at ``visible``."""
        batch, dim = len(visible_tokens), self.mask_token.shape[-1]
        tokens = self.mask_token.expand(batch, self.pos_embed.shape[1], dim).to(visible_tokens.dtype)
        index = visible.unsqueeze(-1).expand(-1, -1, dim)
        tokens = tokens.scatter(1, index, self.embed(visible_tokens).to(tokens.dtype)) + self.pos_embed
        decoded = self.norm(self.blocks(tokens))
        return self.predict(take_tokens(decoded, predict_at))


class MAEConfig(ObjectiveConfig):
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of each image's patches masked")
    norm_pix_loss: bool = Field(True, description="reconstruct per-patch normalised pixels")
    decoder_dim: int = Field(128, gt=0, description="decoder width")
    decoder_depth: int = Field(2, ge=1, description="decoder blocks")
    decoder_heads: int = Field(4, gt=0, description="decoder attention heads")
    decoder_mlp_ratio: float = Field(4.0, gt=0, description="decoder MLP ratio")
    decoder_pos_embed: Literal["sincos", "learned"] = Field(
        "sincos", description="the decoder's position embedding: fixed sin-cos or learned"
    )


@register_objective
class MAE(Objective):
    """Masked-patch pixel reconstruction; publishes its mask for objectives ``masked_by: mae``."""

    name = "mae"
    Config = MAEConfig
    publishes_mask = True

    def __init__(self, config: MAEConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        try:
            masked_count(setup.grid[0] * setup.grid[1], config.mask_ratio)
        except ValueError as err:
            raise ConfigError(f"objective mae: {err}") from None
        self.decoder = MAEDecoder(
            setup.embed_dim,
            setup.grid,
            setup.patch_size**2 * setup.in_chans,
            dim=config.decoder_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_heads,
            mlp_ratio=config.decoder_mlp_ratio,
            pos_embed=config.decoder_pos_embed,
        )

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        images, grid = ctx.view(view).images, self.setup.grid
        visible, masked = random_masking(len(images), grid[0] * grid[1], self.config.mask_ratio, device=images.device)
        ctx.publish_mask(self.name, view, visible)
        predicted = self.decoder(ctx.encode(view, visible).patch_tokens, visible, masked)
        return ObjectiveOutput(mae_loss(predicted, images, masked, self.setup.patch_size, self.config.norm_pix_loss))
