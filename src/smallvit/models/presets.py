"""The preset registry, the output every backbone returns and the base class of the ViT, Swin and CNN backbones."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass(frozen=True)
class Preset:
    """A named backbone configuration: the timm architecture it is built from and its sizes.

    ``family`` picks the builder (``vit``, ``swin``, ``cnn``). ``changes`` names smallvit's changes to the timm
    architecture (see :mod:`smallvit.models.layers`); an export records them so that it can be rebuilt.
    """

    arch: str
    family: str
    kwargs: dict = field(default_factory=dict)
    description: str = ""
    changes: dict[str, str] = field(default_factory=dict)


VIT_LITE = dict(embed_dim=192, depth=9, num_heads=12, mlp_ratio=2.0)

PRESETS: dict[str, Preset] = {
    "vit_lite": Preset(
        "vit_tiny_patch16_224",
        "vit",
        VIT_LITE,
        "192-d, 9 layers, 12 heads, MLP ratio 2 (2.7 M params): the small-dataset ViT of SPT/LSA and RelViT",
    ),
    "vit_lite_conv": Preset(
        "vit_tiny_patch16_224",
        "vit",
        VIT_LITE,
        "vit_lite with CCT's convolutional tokenizer (Hassani et al. 2021) instead of the patch projection: "
        "log2(patch_size) conv3x3+ReLU+max-pool stages, same token grid (2.8 M params)",
        changes={"embed_layer": "conv_tokenizer"},
    ),
    "vit_lite_stem": Preset(
        "vit_tiny_patch16_224",
        "vit",
        VIT_LITE,
        "vit_lite with ViT_C's convolutional stem (Xiao et al. 2021) instead of the patch projection: "
        "log2(patch_size) stride-2 conv3x3+BN+ReLU stages and a conv1x1, same token grid, cheap at photo sizes",
        changes={"embed_layer": "conv_stem"},
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
    "resnet18_cifar": Preset(
        "resnet18",
        "cnn",
        {},
        "ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool; 11.2 M params): a CNN reference, "
        "pooled feature only (supervised, instance discrimination)",
        changes={"stem": "cifar"},
    ),
    "resnet18": Preset(
        "resnet18",
        "cnn",
        {},
        "ResNet-18 with timm's own ImageNet stem (7x7 stride-2 conv + max-pool; 11.2 M params): the CNN reference for "
        "images of 64 px and more, pooled feature only (supervised, instance discrimination)",
    ),
}


@dataclass
class BackboneOutput:
    """What objectives read from a backbone.

    pooled: [B, D] CLS token, or the mean of the patch tokens when the backbone has no CLS token (a CNN: its
        globally average-pooled final feature map).
    patch_tokens: [B, N, D] final (post-norm) patch tokens, prefix tokens removed, row-major on ``grid``.
        After a masked forward, only the kept tokens, in the order given by ``keep``. ``None`` for a CNN
        (``has_patch_tokens`` is False; objectives that read tokens refuse such a backbone when built).
    grid: (h, w) of the full token grid (a CNN: of its final feature map).
    """

    pooled: Tensor
    patch_tokens: Tensor | None
    grid: tuple[int, int]


class TimmBackbone(nn.Module):
    """A timm model built with ``num_classes=0`` behind smallvit's forward (``BackboneOutput``); subclasses add the
    forward and what differs per family.

    Args:
        model: the timm model (its parameter names stay timm's, so the state dict loads in timm).
        arch: timm architecture name the model was created from (for export).
        model_args: the keyword arguments given to ``timm.create_model`` (for export and rebuilding).
        changes: smallvit's changes to the timm architecture (``{"embed_layer": "conv_tokenizer"}``), recorded on
            export; ``model_args`` holds only what timm itself takes.
    """

    has_cls_token: bool = False
    has_pos_embed: bool = False
    has_patch_tokens: bool = True

    def __init__(self, model: nn.Module, arch: str, model_args: dict, changes: dict[str, str] | None = None):
        super().__init__()
        self.model = model
        self.arch = arch
        self.model_args = dict(model_args)
        self.changes = dict(changes or {})

    @property
    def embed_dim(self) -> int:
        """Width of the pooled feature and of the final tokens."""
        return self.model.num_features

    @property
    def patch_size(self) -> int:
        """Pixels per token side: the patch size (a ViT's conv tokenizer: its stride)."""
        return self.model.patch_embed.patch_size[0]

    @property
    def img_size(self) -> int:
        return self.model.patch_embed.img_size[0]
