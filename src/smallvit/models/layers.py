"""smallvit's changes to timm architectures, each known by a name so that an exported model can be rebuilt.

A preset's ``changes`` (and an export's ``config.json`` entry ``smallvit_changes``) map a change to a variant:

- ``{"embed_layer": "conv_tokenizer"}``: a ViT whose patch projection is :class:`ConvTokenizer`, passed to timm's
  ``VisionTransformer(embed_layer=...)``.
- ``{"embed_layer": "conv_stem"}``: a ViT whose patch projection is :class:`ConvStem`.
- ``{"stem": "cifar"}``: a ResNet whose stem is changed after construction by :func:`cifar_stem`.

:func:`create_timm` builds a timm model with its changes; backbones and :func:`~smallvit.models.create_timm_model`
both go through it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import timm
import torch
from timm.layers import Format, nchw_to, to_2tuple
from torch import Tensor, nn

from smallvit.errors import ConfigError

CHANGES: dict[str, tuple[str, ...]] = {"embed_layer": ("conv_tokenizer", "conv_stem"), "stem": ("cifar",)}


def tokenizer_stages(patch_size: int) -> int:
    """How many times a :class:`StridedEmbed` of stride ``patch_size`` (a power of two >= 2) halves the image."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"a convolutional embed layer's patch size must be a power of two >= 2, got {patch_size}")
    return int(math.log2(patch_size))


class StridedEmbed(nn.Module):
    """What timm's ``VisionTransformer`` passes to and reads from an ``embed_layer``, for a convolutional one whose
    stride is ``patch_size`` (a power of two: it halves the image ``log2(patch_size)`` times): the geometry
    attributes (``img_size``, ``patch_size``, ``grid_size``, ``num_patches``, ``feat_ratio``, ``dynamic_feat_size``),
    the input checks and the tokens' output format. On the CPU the input goes to ``channels_last`` memory, for which
    oneDNN's convolution kernels are faster (only float rounding changes; other devices keep their default layout, as
    no GPU measurement backs a change there); the weights keep the default layout, so checkpoints are unchanged.
    Subclasses build ``self.stages`` (images to an [B, C, h, w] map) and may override :meth:`features`."""

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int,
        output_fmt: str | None,
        strict_img_size: bool,
        dynamic_img_pad: bool,
    ):
        super().__init__()
        if dynamic_img_pad:
            raise ValueError(f"{type(self).__name__} does not pad images (dynamic_img_pad=True)")
        self.halvings = tokenizer_stages(patch_size)
        self.patch_size = to_2tuple(patch_size)
        self.img_size = to_2tuple(img_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size, strict=True))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = Format(output_fmt) if output_fmt is not None else None
        self.strict_img_size = strict_img_size

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def features(self, images: Tensor) -> Tensor:
        """The [B, embed_dim, h, w] map of ``images``."""
        return self.stages(images)

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        if self.strict_img_size and (height, width) != self.img_size:
            raise ValueError(f"input size {height}x{width} does not match the model's {self.img_size}")
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(f"input size {height}x{width} is not divisible by the stride {self.patch_size}")
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.features(images)
        x = x.flatten(2).transpose(1, 2) if self.output_fmt is None else nchw_to(x, self.output_fmt)
        return self.norm(x)


class ConvTokenizer(StridedEmbed):
    """The convolutional tokenizer of CCT (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact
    Transformers"), as a timm ``embed_layer``: ``log2(patch_size)`` stages of conv3x3 (stride 1, no bias) + ReLU +
    max-pool(3, stride 2, padding 1), ``hidden_dim`` channels in between and ``embed_dim`` out. Each pool halves the
    image, so the token grid is the one a ``patch_size`` patch projection gives and ``patch_size`` stays the
    effective stride. Follows the released ``Tokenizer`` (SHI-Labs/Compact-Transformers) with CCT-7/3x2's
    64 hidden channels and Kaiming-normal init; unlike CCT, the ViT keeps its CLS token (no sequence pooling).

    Takes the ``PatchEmbed`` arguments timm's ``VisionTransformer`` passes and exposes the attributes it reads (see
    :class:`StridedEmbed`). ``bias`` is accepted for that signature and unused: CCT's convolutions have none, and a
    ReLU follows each.

    Two choices make it cheaper: each stage pools *before* its ReLU (max-pool and ReLU commute, so values and
    gradients are exactly CCT's, and the ReLU touches a quarter of the elements), and on the CPU it runs in
    ``channels_last`` memory (:class:`StridedEmbed`). Measured by ``benchmarks/bench_tokenizer.py``.

    A token sees beyond its patch (13 px at patch 4), so encoding a subset of tokens would leak the others' pixels:
    the backbone refuses masked forwards (MAE) with this tokenizer.

    Example:
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_layer=ConvTokenizer)
        >>> vit.patch_embed.grid_size
        (8, 8)
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        hidden_dim: int = 64,
        norm_layer=None,
        output_fmt: str | None = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(img_size, patch_size, output_fmt, strict_img_size, dynamic_img_pad)
        widths = [in_chans] + [hidden_dim] * (self.halvings - 1) + [embed_dim]
        self.stages = nn.Sequential(
            *[
                nn.Sequential(
                    OrderedDict(
                        conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, device=device, dtype=dtype),
                        pool=nn.MaxPool2d(3, stride=2, padding=1),
                        act=nn.ReLU(inplace=True),
                    )
                )
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming-normal convolutions, as CCT (timm's ViT init calls this instead of resetting the convs)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)


STEM_CONV_STAGES = 4  # ViT_C's stride-2 conv stages for patch 16; larger patches add space-to-depth (ConvStem)


class ConvStem(StridedEmbed):
    """The convolutional stem of ViT_C (Xiao et al. 2021, "Early Convolutions Help Transformers See Better",
    NeurIPS), as a timm ``embed_layer``: ``log2(patch_size)`` stride-2 conv3x3 + BatchNorm + ReLU stages, then a
    conv1x1 to ``embed_dim``. Widths double stage by stage and end at ``embed_dim`` (for 192-d and patch 16: 24, 48,
    96, 192, the paper's ViT_C-1GF stem), so most of the work runs at low resolution and the stem costs about one
    transformer block, unlike :class:`ConvTokenizer`, whose stride-1 convolutions run at the image's full size.

    Each stride-2 convolution halves the image, so the token grid is the one a ``patch_size`` patch projection
    gives; it takes and exposes what timm's ``VisionTransformer`` passes to and reads from an ``embed_layer``, and
    runs in ``channels_last`` memory on the CPU (:class:`StridedEmbed`).
    As with the tokenizer, a token sees beyond its patch, so masked forwards (MAE) are refused.

    The paper's stem has four conv stages, for patch 16. A larger patch (32 at 224 px) takes its extra halvings by
    space-to-depth (``PixelUnshuffle``: each 2x2 block of pixels becomes 4x the channels, nothing learned or lost)
    before the four stages, instead of more conv stages at full resolution, whose batch norm over a large, thin map
    is memory-bound and would cost more than the rest of the stem (``benchmarks/bench_tokenizer.py``). Patches of
    16 px or less are the paper's design, unchanged.

    Example:
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=112, patch_size=16, embed_layer=ConvStem)
        >>> vit.patch_embed.grid_size
        (7, 7)
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer=None,
        output_fmt: str | None = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(img_size, patch_size, output_fmt, strict_img_size, dynamic_img_pad)
        conv_stages = min(self.halvings, STEM_CONV_STAGES)
        block = 2 ** (self.halvings - conv_stages)
        self.space_to_depth = nn.PixelUnshuffle(block) if block > 1 else nn.Identity()
        widths = [in_chans * block * block] + stem_widths(embed_dim, conv_stages)
        factory = dict(device=device, dtype=dtype)
        self.stages = nn.Sequential(
            *[
                nn.Sequential(
                    OrderedDict(
                        conv=nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False, **factory),
                        norm=nn.BatchNorm2d(c_out, **factory),
                        act=nn.ReLU(inplace=True),
                    )
                )
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.proj = nn.Conv2d(widths[-1], embed_dim, 1, bias=bias, **factory)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming-normal 3x3 convolutions (fan-out, as timm's ResNets); timm's ViT init calls this for the stem."""
        for stage in self.stages:
            nn.init.kaiming_normal_(stage.conv.weight, mode="fan_out", nonlinearity="relu")

    def features(self, images: Tensor) -> Tensor:
        return self.proj(self.stages(self.space_to_depth(images)))


def stem_widths(embed_dim: int, stages: int) -> list[int]:
    """Output channels of a :class:`ConvStem`'s stages: doubling, the last one ``embed_dim`` (at least 8 each)."""
    return [max(8, embed_dim >> (stages - 1 - i)) for i in range(stages)]


def cifar_stem(model: nn.Module) -> nn.Module:
    """Give a timm ResNet the CIFAR stem of He et al. 2016 (sec. 4.2) as commonly used with ResNet-18 on CIFAR
    (e.g. kuangliu/pytorch-cifar): ``conv1`` a 3x3 stride-1 convolution, no stem max-pool, so the final feature
    map is 1/8 of the image (4x4 at 32 px) instead of 1/32. timm has no such stem option, so it is replaced here,
    keeping the module names (``conv1``, ``maxpool``) and so the state-dict keys and ``group_matcher``.

    A plain timm user rebuilds an export the same way before loading its weights::

        model = timm.create_model("resnet18", num_classes=10)
        model.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        model.maxpool = nn.Identity()
        model.load_state_dict(safetensors.torch.load_file("model.safetensors"))
    """
    old = model.conv1
    factory = dict(device=old.weight.device, dtype=old.weight.dtype)
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False, **factory)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as timm's ResNet init
    model.maxpool = nn.Identity()
    for info in model.feature_info:  # stem stride 2 -> 1, stages lose the pool's 2 too: 2, 4, 8, ... -> 1, 1, 2, ...
        info["reduction"] = max(1, info["reduction"] // 4)
    return model


def check_changes(changes: dict[str, str]) -> None:
    for name, variant in changes.items():
        if variant not in CHANGES.get(name, ()):
            raise ConfigError(f"unknown smallvit architecture change {name}={variant!r}: this version knows {CHANGES}")


def create_timm(arch: str, changes: dict[str, str] | None = None, **kwargs) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` with smallvit's ``changes`` applied (never pretrained weights: the
    changes would not fit them; load weights afterwards)."""
    changes = changes or {}
    check_changes(changes)
    embed_layers = {"conv_tokenizer": ConvTokenizer, "conv_stem": ConvStem}
    if "embed_layer" in changes:
        kwargs["embed_layer"] = embed_layers[changes["embed_layer"]]
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if changes.get("stem") == "cifar":
        cifar_stem(model)
    return model
