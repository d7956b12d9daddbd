"""CNN backbones: a timm ResNet behind the same forward as the ViT backbones, as a convolutional reference.

A CNN has no patch tokens: :class:`~smallvit.models.presets.BackboneOutput` carries only ``pooled`` (the globally
average-pooled final feature map) and the final map's ``grid``; ``patch_tokens`` is ``None`` and
``has_patch_tokens`` False, so objectives that read tokens (relations, position labels, DRLoc, MAE) refuse it
when built. ``pos_embed``, ``cls_token`` and ``patch_size`` of ``build_backbone`` do not apply and are ignored.
"""

from __future__ import annotations

from torch import Tensor, nn

from smallvit.errors import ConfigError
from smallvit.models.layers import create_timm
from smallvit.models.presets import BackboneOutput, Preset, TimmBackbone


class ResNetBackbone(TimmBackbone):
    """A timm ``ResNet`` with no classifier, returning its pooled final feature (``model`` stays timm's, for
    ``group_matcher``). ``img_size``: input resolution in pixels (square); ``changes``: ``{"stem": "cifar"}``."""

    has_patch_tokens = False

    def __init__(self, model: nn.Module, arch: str, model_args: dict, img_size: int, changes: dict[str, str]):
        super().__init__(model, arch, model_args, changes)
        self._img_size = img_size

    @property
    def img_size(self) -> int:
        return self._img_size

    @property
    def patch_size(self) -> int:
        """Stride of the final feature map (8 with the CIFAR stem)."""
        return self.model.feature_info[-1]["reduction"]

    @property
    def grid(self) -> tuple[int, int]:
        """Final feature map size: every stride-2 stage rounds up (3x3 convolutions with padding 1)."""
        side = -(-self.img_size // self.patch_size)
        return side, side

    def forward(self, images: Tensor, keep: Tensor | None = None) -> BackboneOutput:
        """Encode images; ``keep`` (token subsets, MAE) is not possible with a CNN."""
        if keep is not None:
            raise ConfigError("a CNN cannot encode a subset of patches (MAE): use a ViT preset (e.g. vit_lite)")
        features = self.model.forward_features(images)  # [B, C, h, w]
        pooled = self.model.forward_head(features, pre_logits=True)
        return BackboneOutput(pooled=pooled, patch_tokens=None, grid=tuple(features.shape[-2:]))


def build_resnet(
    spec: Preset, *, img_size: int, in_chans: int = 3, drop_path: float = 0.0, **overrides
) -> ResNetBackbone:
    """Build a CNN backbone from a ``family="cnn"`` preset (called by ``build_backbone``).

    ``overrides`` are timm ``ResNet`` keywords (``layers``, ``stem_width``, ...). ``drop_path`` is timm's
    per-block stochastic depth (set ``model.drop_path=0`` for the classic ResNet-18 baseline).
    """
    if img_size <= 0:
        raise ConfigError(f"image size {img_size} must be positive: set data.image_size or model.img_size")
    model_args = dict(spec.kwargs, in_chans=in_chans, num_classes=0, drop_path_rate=drop_path)
    model_args.update(overrides)
    try:
        model = create_timm(spec.arch, spec.changes, **model_args)
    except TypeError as err:
        raise ConfigError(f"invalid CNN backbone option: {err}") from None
    return ResNetBackbone(model, spec.arch, model_args, img_size, spec.changes)
