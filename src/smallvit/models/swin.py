"""Swin Transformer backbones: timm's ``SwinTransformer`` behind the same forward as the ViT backbones.

The output follows :class:`~smallvit.models.presets.BackboneOutput`: ``patch_tokens`` are the final stage's
(post-norm) tokens, row-major on the final stage's grid, and ``pooled`` is their mean (Swin has no CLS token).

timm's Swin has no absolute position embedding; its only position information is the relative position bias
added to every window's attention logits. ``relative_position_bias=False`` sets every bias table to zero and
freezes it (also after loading weights), so the model is left with no learned position information, as in the
released position-label code, which comments the bias out. The window layout stays: attention is local, and
the shifted-window mask separates the wrapped-around border windows, so border tokens can still differ from
interior ones (as zero padding does in a CNN). Zeroed tables keep the state dict timm's, so an exported model
loads in plain timm unchanged.
"""

from __future__ import annotations

import timm
from timm.layers import to_2tuple
from torch import Tensor, nn

from smallvit.errors import ConfigError
from smallvit.models.presets import BackboneOutput, Preset, TimmBackbone


def remove_position_bias(model: nn.Module) -> None:
    """Zero and freeze every relative position bias table of a timm Swin: no learned position information left."""
    for name, param in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            param.data.zero_()
            param.requires_grad_(False)


def _remove_position_bias_after_load(model: nn.Module, incompatible_keys) -> None:
    remove_position_bias(model)


def stage_grids(grid: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
    """Token grid of every stage: patch merging halves the grid between stages."""
    return [(grid[0] // 2**i, grid[1] // 2**i) for i in range(num_stages)]


class SwinBackbone(TimmBackbone):
    """A timm ``SwinTransformer`` with no classifier head, returning its final-stage tokens.

    ``relative_position_bias=False`` zeroes and freezes every relative position bias table (the other arguments are
    :class:`~smallvit.models.presets.TimmBackbone`'s).
    """

    def __init__(self, model: nn.Module, arch: str, model_args: dict, relative_position_bias: bool = True):
        super().__init__(model, arch, model_args)
        self.relative_position_bias = relative_position_bias
        if not relative_position_bias:
            remove_position_bias(model)
            model.register_load_state_dict_post_hook(_remove_position_bias_after_load)

    @property
    def num_stages(self) -> int:
        return len(self.model.layers)

    @property
    def grid(self) -> tuple[int, int]:
        """Final-stage token grid."""
        return stage_grids(tuple(self.model.patch_embed.grid_size), self.num_stages)[-1]

    @property
    def has_pos_embed(self) -> bool:
        return self.relative_position_bias

    def forward(self, images: Tensor, keep: Tensor | None = None) -> BackboneOutput:
        """Encode images; ``keep`` (token subsets, MAE) is not possible with windowed attention."""
        if keep is not None:
            raise ConfigError(
                "Swin cannot encode a subset of tokens (MAE): use a ViT preset (e.g. model.preset=vit_lite)"
            )
        features = self.model.forward_features(images)  # [B, h, w, D], post-norm
        patch_tokens = features.flatten(1, 2)
        return BackboneOutput(
            pooled=patch_tokens.mean(dim=1), patch_tokens=patch_tokens, grid=tuple(features.shape[1:3])
        )


def build_swin(
    spec: Preset,
    *,
    img_size: int,
    patch_size: int,
    in_chans: int = 3,
    relative_position_bias: bool = True,
    drop_path: float = 0.0,
    **overrides,
) -> SwinBackbone:
    """Build a Swin backbone from a ``family="swin"`` preset (called by ``build_backbone``).

    ``overrides`` are ``SwinTransformer`` keywords (``depths``, ``num_heads``, ``window_size``, ...). The image
    must split into whole windows at every stage: ``img_size / patch_size / 2**stage`` divisible by the window,
    or no larger than it (the stage is then one window).
    """
    model_args = dict(
        spec.kwargs,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=0,
        drop_path_rate=drop_path,
    )
    model_args.update(overrides)
    num_stages = len(model_args.get("depths", (2, 2, 6, 2)))
    reduction = patch_size * 2 ** (num_stages - 1)
    if patch_size <= 0 or img_size <= 0 or img_size % reduction:
        raise ConfigError(
            f"image size {img_size} is not divisible by patch size × 2^(stages−1) = {reduction} for a "
            f"{num_stages}-stage Swin: choose model.patch_size or data.image_size so it is (e.g. 32 px / patch 2)"
        )
    window = to_2tuple(model_args.get("window_size", 7))
    for stage, grid in enumerate(stage_grids((img_size // patch_size,) * 2, num_stages)):
        if any(side > win and side % win for side, win in zip(grid, window, strict=True)):
            raise ConfigError(
                f"Swin window {window[0]} does not divide stage {stage + 1}'s {grid[0]}×{grid[1]} token grid: "
                "set model.overrides.window_size to a divisor of every stage grid (e.g. 4 for 32 px / patch 2)"
            )
    try:
        model = timm.create_model(spec.arch, pretrained=False, **model_args)
    except TypeError as err:
        raise ConfigError(f"invalid Swin backbone option: {err}") from None
    return SwinBackbone(model, spec.arch, model_args, relative_position_bias=relative_position_bias)
