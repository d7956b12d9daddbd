"""Backbones: timm Vision Transformers behind one small forward that every objective reads.

This file is the only place that knows timm's internals. A backbone returns :class:`BackboneOutput`
(pooled feature, final patch tokens, token grid); objectives never reach into the timm model.
The wrapped timm model keeps timm's own parameter names, so its state dict loads in timm unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import timm
import torch
from torch import Tensor, nn

from smallvit.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """A named backbone configuration: the timm architecture it is built from and its sizes."""

    arch: str
    family: str
    kwargs: dict = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    "vit_lite": Preset(
        "vit_tiny_patch16_224",
        "vit",
        dict(embed_dim=192, depth=9, num_heads=12, mlp_ratio=2.0),
        "192-d, 9 layers, 12 heads, MLP ratio 2 (2.7 M params): the small-dataset ViT of SPT/LSA and RelViT",
    ),
    "vit_tiny": Preset(
        "vit_tiny_patch16_224", "vit", dict(embed_dim=192, depth=12, num_heads=3), "192-d, 12 layers, 3 heads"
    ),
    "vit_small": Preset(
        "vit_small_patch16_224", "vit", dict(embed_dim=384, depth=12, num_heads=6), "384-d, 12 layers, 6 heads"
    ),
    "vit_base": Preset(
        "vit_base_patch16_224", "vit", dict(embed_dim=768, depth=12, num_heads=12), "768-d, 12 layers, 12 heads"
    ),
    "swin_lite": Preset(
        "swin_tiny_patch4_window7_224",
        "swin",
        dict(embed_dim=64, depths=(2, 2, 4), num_heads=(2, 4, 8), window_size=4, mlp_ratio=2.0),
        "Swin for 32-64 px, patch 2: 3 stages 64/128/256-d, depths 2-2-4, window 4 (2.6 M params, like vit_lite)",
    ),
    "swin_tiny": Preset(
        "swin_tiny_patch4_window7_224",
        "swin",
        dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=4),
        "Swin-T widths and depths (96-d, 2-2-6-2) with window 4, for 64 px images at patch 2",
    ),
}


@dataclass
class BackboneOutput:
    """What objectives read from a backbone.

    pooled: [B, D] CLS token, or the mean of the patch tokens when the backbone has no CLS token.
    patch_tokens: [B, N, D] final (post-norm) patch tokens, prefix tokens removed, row-major on ``grid``.
        After a masked forward, only the kept tokens, in the order given by ``keep``.
    grid: (h, w) of the full token grid.
    """

    pooled: Tensor
    patch_tokens: Tensor
    grid: tuple[int, int]


class ViTBackbone(nn.Module):
    """A timm ``VisionTransformer`` with no classifier head and access to its tokens.

    Args:
        model: the timm model, built with ``num_classes=0``.
        arch: timm architecture name the model was created from (for export).
        model_args: the keyword arguments given to ``timm.create_model`` (for export and rebuilding).
    """

    def __init__(self, model: nn.Module, arch: str, model_args: dict):
        super().__init__()
        self.model = model
        self.arch = arch
        self.model_args = dict(model_args)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.model.patch_embed.grid_size)

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    @property
    def has_cls_token(self) -> bool:
        return self.model.cls_token is not None

    @property
    def has_pos_embed(self) -> bool:
        return self.model.pos_embed is not None

    def forward(self, images: Tensor, keep: Tensor | None = None) -> BackboneOutput:
        """Encode images; with ``keep`` [B, K] (patch indices), only those patch tokens enter the encoder (MAE)."""
        vit = self.model
        tokens = vit._pos_embed(vit.patch_embed(images))
        prefix = vit.num_prefix_tokens
        if keep is not None:
            patches = tokens[:, prefix:]
            kept = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            tokens = torch.cat([tokens[:, :prefix], kept], dim=1)
        tokens = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(tokens))))
        patch_tokens = tokens[:, prefix:]
        pooled = tokens[:, 0] if self.has_cls_token else patch_tokens.mean(dim=1)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return BackboneOutput(pooled=pooled, patch_tokens=patch_tokens, grid=grid)


def build_backbone(
    preset: str,
    *,
    img_size: int,
    patch_size: int,
    in_chans: int = 3,
    pos_embed: bool = True,
    cls_token: bool = True,
    drop_path: float = 0.0,
    **overrides,
) -> ViTBackbone:
    """Build a backbone from a preset name.

    Args:
        preset: one of :data:`PRESETS` (``vit_lite``, ``vit_tiny``, ``vit_small``, ``vit_base``).
        img_size: input resolution in pixels (square).
        patch_size: patch side in pixels; must divide ``img_size``.
        in_chans: input channels.
        pos_embed: ``False`` gives a ViT with no positional information at all (RelViT, position labels).
        cls_token: ``False`` drops the CLS token; the pooled feature is then the mean of the patch tokens.
        drop_path: stochastic depth rate.
        overrides: any other ``VisionTransformer`` keyword (``depth``, ``num_heads``, ``reg_tokens``, ...).

    Example:
        >>> backbone = build_backbone("vit_lite", img_size=32, patch_size=4)
        >>> out = backbone(torch.zeros(2, 3, 32, 32))
        >>> out.patch_tokens.shape, out.grid
        (torch.Size([2, 64, 192]), (8, 8))
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown backbone preset '{preset}': choose one of {', '.join(PRESETS)}")
    if PRESETS[preset].family == "swin":
        from smallvit.models.swin import build_swin  # swin.py imports this module

        return build_swin(
            PRESETS[preset],
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            relative_position_bias=pos_embed,
            drop_path=drop_path,
            **overrides,
        )
    if patch_size <= 0 or img_size <= 0 or img_size % patch_size:
        raise ConfigError(
            f"image size {img_size} is not divisible by patch size {patch_size}: "
            "choose model.patch_size that divides data.image_size (e.g. 32 px / patch 4)"
        )
    spec = PRESETS[preset]
    model_args = dict(
        spec.kwargs,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=0,
        class_token=cls_token,
        global_pool="token" if cls_token else "avg",
        pos_embed="learn" if pos_embed else "none",
        fc_norm=False,
        drop_path_rate=drop_path,
    )
    model_args.update(overrides)
    try:
        model = timm.create_model(spec.arch, pretrained=False, **model_args)
    except TypeError as err:
        raise ConfigError(f"invalid backbone option for '{preset}': {err}") from None
    return ViTBackbone(model, spec.arch, model_args)


def no_weight_decay_names(backbone: nn.Module) -> set[str]:
    """Parameter names (relative to ``backbone``) that take no weight decay: position embeddings and tokens."""
    inner = getattr(backbone, "model", backbone)
    names = set(getattr(inner, "no_weight_decay", lambda: set())())
    prefix = "model." if inner is not backbone else ""
    return {prefix + name for name in names}
