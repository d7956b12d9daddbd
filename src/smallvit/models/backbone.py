"""Backbones: timm ViTs, Swins and ResNets behind one small forward that every objective reads.

:func:`build_backbone` is the one entry point: it builds ViTs here and hands Swin and CNN presets to
:mod:`~smallvit.models.swin` and :mod:`~smallvit.models.resnet`. A backbone returns :class:`BackboneOutput`
(pooled feature, final patch tokens, token grid); objectives never reach into the timm model. The wrapped timm
model keeps timm's own parameter names, so its state dict loads in timm unchanged, after the named architecture
changes of :mod:`~smallvit.models.layers` where a preset has them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smallvit.errors import ConfigError
from smallvit.models.layers import ConvStem, ConvTokenizer, create_timm, tokenizer_stages
from smallvit.models.presets import PRESETS, BackboneOutput, Preset, TimmBackbone
from smallvit.models.resnet import ResNetBackbone, build_resnet
from smallvit.models.swin import SwinBackbone, build_swin

__all__ = ["PRESETS", "BackboneOutput", "Preset", "ViTBackbone", "build_backbone", "no_weight_decay_names"]


class ViTBackbone(TimmBackbone):
    """A timm ``VisionTransformer`` with no classifier head and access to its tokens."""

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.model.patch_embed.grid_size)

    @property
    def has_cls_token(self) -> bool:
        return self.model.cls_token is not None

    @property
    def has_pos_embed(self) -> bool:
        return self.model.pos_embed is not None

    def forward(self, images: Tensor, keep: Tensor | None = None) -> BackboneOutput:
        """Encode images; with ``keep`` [B, K] (patch indices), only those patch tokens enter the encoder (MAE)."""
        vit = self.model
        if keep is not None and isinstance(vit.patch_embed, (ConvTokenizer, ConvStem)):
            raise ConfigError(
                "a convolutional tokenizer's or stem's tokens see neighbouring patches, so masked patches would leak "
                "into the visible ones (MAE): use a patch-projection ViT preset (e.g. model.preset=vit_lite)"
            )
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
) -> ViTBackbone | SwinBackbone | ResNetBackbone:
    """Build a backbone from a preset name.

    Args:
        preset: one of :data:`PRESETS` (``vit_lite``, ``vit_lite_conv``, ``vit_lite_stem``, ``vit_tiny``, ...,
            ``swin_lite``, ..., ``resnet18_cifar``).
        img_size: input resolution in pixels (square).
        patch_size: patch side in pixels; must divide ``img_size`` (``vit_lite_conv``, ``vit_lite_stem``: the stride, a
            power of two). Ignored by CNN presets.
        in_chans: input channels.
        pos_embed: ``False`` gives a ViT with no positional information at all (RelViT, position labels); for a
            Swin, zeroed relative position bias. Ignored by CNN presets.
        cls_token: ``False`` drops the CLS token; the pooled feature is then the mean of the patch tokens.
            Ignored by Swin and CNN presets (they have none).
        drop_path: stochastic depth rate.
        overrides: any other keyword of the timm model (``depth``, ``num_heads``, ``reg_tokens``, ...).

    Example:
        >>> backbone = build_backbone("vit_lite", img_size=32, patch_size=4)
        >>> out = backbone(torch.zeros(2, 3, 32, 32))
        >>> out.patch_tokens.shape, out.grid
        (torch.Size([2, 64, 192]), (8, 8))
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown backbone preset '{preset}': choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    if spec.family == "cnn":
        return build_resnet(spec, img_size=img_size, in_chans=in_chans, drop_path=drop_path, **overrides)
    if spec.family == "swin":
        return build_swin(
            spec,
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
    if "embed_layer" in spec.changes:
        try:
            tokenizer_stages(patch_size)
        except ValueError:
            raise ConfigError(
                f"model.patch_size={patch_size} is not a power of two >= 2, which {preset}'s convolutional layers need "
                "(it halves the image log2(patch_size) times): use 2, 4, 8, ..."
            ) from None
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
        model = create_timm(spec.arch, spec.changes, **model_args)
    except TypeError as err:
        raise ConfigError(f"invalid backbone option for '{preset}': {err}") from None
    return ViTBackbone(model, spec.arch, model_args, spec.changes)


def no_weight_decay_names(backbone: nn.Module) -> set[str]:
    """Parameter names (relative to ``backbone``) that take no weight decay: position embeddings and tokens."""
    inner = getattr(backbone, "model", backbone)
    names = set(getattr(inner, "no_weight_decay", lambda: set())())
    prefix = "model." if inner is not backbone else ""
    return {prefix + name for name in names}
