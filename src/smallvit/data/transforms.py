"""Augmentations as batched tensor ops: each op transforms a whole :class:`View` at once, sample by sample.

An op is a small class registered by name with :func:`register_op`; recipes list ops as dicts such as
``{"op": "random_crop", "padding": 4}`` and :func:`build_op` turns one into an op, checking its arguments.
Ops take images float [B, C, H, W] in [0, 1] (standardised after ``normalize``) on any device, and draw every
random number from the ``torch.Generator`` they are given, on that same device, so that one seed gives one
batch. Each sample gets its own random parameters; there is no Python loop over samples.

Example::

    op = build_op({"op": "hflip", "p": 0.5})
    gen = torch.Generator().manual_seed(0)
    view = op(View(images, labels, indices), gen)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from smallvit.data.batch import View
from smallvit.errors import ConfigError


class Op(Protocol):
    """An augmentation. It returns a new view and never modifies the input's tensors in place (views share them).

    An op class may set ``after_normalize = True`` if it expects standardised images (``random_erasing``).
    """

    def __call__(self, view: View, gen: torch.Generator) -> View: ...


OPS: dict[str, type] = {}
"""Registered op classes by name; add to it with :func:`register_op`."""


def register_op(name: str) -> Callable[[type], type]:
    """Class decorator registering an op under ``name``; its ``__init__`` arguments are the recipe's keys."""

    def register(cls: type) -> type:
        if name in OPS:
            raise ValueError(f"augmentation op {name!r} is already registered by {OPS[name].__qualname__}")
        OPS[name] = cls
        return cls

    return register


def build_op(spec: Mapping) -> Op:
    """The op described by ``spec``: ``{"op": name, **arguments}``.

    Raises:
        ConfigError: unknown op name, unknown or missing argument, or an invalid value.
    """
    kwargs = dict(spec)
    name = kwargs.pop("op", None)
    if name not in OPS:
        raise ConfigError(f"unknown augmentation op {name!r}; known ops: {', '.join(sorted(OPS))}")
    cls = OPS[name]
    accepted = list(inspect.signature(cls).parameters)
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        raise ConfigError(
            f"augmentation op {name!r} has no argument {unknown[0]!r}; it accepts: {', '.join(accepted) or 'nothing'}"
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"augmentation op {name!r}: {err}; it accepts: {', '.join(accepted)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Random numbers and small helpers


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=gen, device=gen.device)


def _uniform(gen: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * _rand(gen, *shape)


def _coin(gen: torch.Generator, n: int, p: float) -> Tensor:
    """bool [n], each True with probability ``p``."""
    return _rand(gen, n) < p


def _randint(gen: torch.Generator, high: Tensor) -> Tensor:
    """A uniform integer in [0, high[i]] for each sample (float tensor of whole numbers)."""
    return (_rand(gen, len(high)) * (high + 1)).floor()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _range(value: Sequence[float], name: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
    return low, high


def _probability(p: float) -> float:
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return float(p)


def _apply_to(chosen: Tensor, fn: Callable[..., Tensor], images: Tensor, *per_sample: Tensor) -> Tensor:
    """``fn(images, *per_sample)`` on the chosen samples only; the others pass through unchanged."""
    idx = chosen.nonzero().squeeze(1)
    if len(idx) == 0:
        return images
    if len(idx) == len(images):
        return fn(images, *per_sample)
    return images.index_copy(0, idx, fn(images.index_select(0, idx), *(t.index_select(0, idx) for t in per_sample)))


def _as_channels(value: float | Sequence[float], images: Tensor) -> Tensor:
    """A scalar or per-channel value as a [1, C, 1, 1] (or [1, 1, 1, 1]) tensor on the images' device."""
    return torch.as_tensor(value, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)


def box_mask(top: Tensor, left: Tensor, bottom: Tensor, right: Tensor, height: int, width: int) -> Tensor:
    """bool [B, 1, H, W], True inside each sample's box [top, bottom) x [left, right) (pixel units)."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    inside_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def _sample_boxes(
    gen: torch.Generator,
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-sample boxes covering a ``scale`` fraction of the image with aspect ratio (w / h) in ``ratio``.

    As torchvision's ``RandomResizedCrop.get_params``: the first of ``attempts`` draws (area uniform, aspect
    log-uniform) that fits, at a uniform position. Returns (top, left, h, w, fits), float [n] each; where ``fits``
    is False no draw fitted and the box is meaningless.
    """
    area = height * width * _uniform(gen, *scale, n, attempts)
    aspect = torch.exp(_uniform(gen, math.log(ratio[0]), math.log(ratio[1]), n, attempts))
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    ok = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = ok.byte().argmax(1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = _randint(gen, (height - h).clamp(min=0))
    left = _randint(gen, (width - w).clamp(min=0))
    return top, left, h, w, ok.any(1)


def _gray(images: Tensor) -> Tensor:
    """Luma [B, 1, H, W] of RGB images, with torchvision's weights."""
    if images.shape[1] != 3:
        raise ConfigError(f"colour augmentations need RGB images, got {images.shape[1]} channels; remove them")
    weights = images.new_tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * images + (1 - factor) * other`` with a per-sample factor [B], clipped to [0, 1] (PIL's enhance).

    One fused ``lerp``: chains of full-batch temporaries are several times slower on the CPU.
    """
    return torch.lerp(other, images, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _brighten(images: Tensor, factor: Tensor) -> Tensor:
    """:func:`_blend` with black."""
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _contrast(images: Tensor, factor: Tensor) -> Tensor:
    """:func:`_blend` with each sample's mean grey."""
    return _blend(images, _gray(images).mean((1, 2, 3), keepdim=True), factor)


def _saturate(images: Tensor, factor: Tensor) -> Tensor:
    """:func:`_blend` with each pixel's grey."""
    return _blend(images, _gray(images), factor)


def _shift_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of each sample by ``shift`` [B] (fraction of a turn), as torchvision's adjust_hue."""
    r, g, b = images.unbind(1)
    value = images.amax(1)
    chroma = value - images.amin(1)
    # Hue in sixths of a turn; grey pixels (chroma 0) come out as value whatever their hue.
    sector = torch.where(value == r, g - b, torch.where(value == g, 2 * chroma + b - r, 4 * chroma + r - g))
    hue6 = sector.div_(chroma.clamp(min=1e-12)).add_(6 * shift.view(-1, 1, 1))
    # HSV -> RGB: channel n is value - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6 * hue) mod 6.
    # (In-place steps: fewer fresh allocations, which cost page faults on the CPU.)
    k = (images.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + hue6[:, None]).remainder_(6)
    return value[:, None] - torch.minimum(k, 4 - k).clamp_(0, 1).mul_(chroma[:, None])


def _blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with a per-sample ``sigma`` [B]: separable kernels, grouped convolutions, reflect padding."""
    n, c, h, w = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - (kernel_size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    pad = kernel_size // 2
    x = F.pad(images.reshape(1, n * c, h, w), [pad] * 4, mode="reflect")
    x = F.conv2d(x, kernel[:, None, None, :], groups=n * c)
    x = F.conv2d(x, kernel[:, None, :, None], groups=n * c)
    return x.view(n, c, h, w)


# ---------------------------------------------------------------------------------------------------------------
# Geometry


@register_op("random_resized_crop")
class RandomResizedCrop:
    """Crop a random box (area fraction ``scale``, aspect ratio ``ratio``) and resize it to ``size``.

    Boxes follow torchvision (10 draws, then a centre crop with the aspect clamped to ``ratio``). Cropping and
    resizing are one ``roi_align`` call: bilinear, and when a box shrinks it averages ceil(shrink)² points per
    output pixel (anti-aliased, unlike ``affine_grid`` + ``grid_sample``, and about twice as fast on the CPU).
    """

    def __init__(
        self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)
    ):
        self.size = _pair(size)
        self.scale = _range(scale, "scale")
        self.ratio = _range(ratio, "ratio")

    def __call__(self, view: View, gen: torch.Generator) -> View:
        images = view.images
        n, _, height, width = images.shape
        top, left, h, w, fits = _sample_boxes(gen, n, height, width, self.scale, self.ratio)
        fallback_h, fallback_w = self._centre_box(height, width)
        h = torch.where(fits, h, fallback_h)
        w = torch.where(fits, w, fallback_w)
        top = torch.where(fits, top, (height - fallback_h) // 2)
        left = torch.where(fits, left, (width - fallback_w) // 2)
        batch = torch.arange(n, device=images.device, dtype=images.dtype)
        boxes = torch.stack([batch, left, top, left + w, top + h], 1).to(images.dtype)
        return view.replace(images=roi_align(images, boxes, self.size, spatial_scale=1.0, aligned=True))

    def _centre_box(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio."""
        if width / height < self.ratio[0]:
            return round(width / self.ratio[0]), width
        if width / height > self.ratio[1]:
            return height, round(height * self.ratio[1])
        return height, width


@register_op("random_crop")
class RandomCrop:
    """Pad by ``padding`` pixels on every side (constant ``fill`` or ``"reflect"``), then crop ``size`` at random.

    ``size=None`` keeps the input size (the classic CIFAR crop with ``padding=4``).
    """

    def __init__(self, size: int | Sequence[int] | None = None, padding: int = 4, fill: float | str = 0.0):
        if isinstance(fill, str) and fill != "reflect":
            raise ValueError(f"fill must be a number or 'reflect', got {fill!r}")
        self.size = None if size is None else _pair(size)
        self.padding = int(padding)
        self.fill = fill

    def __call__(self, view: View, gen: torch.Generator) -> View:
        images = view.images
        h, w = self.size or images.shape[-2:]
        pad = [self.padding] * 4
        if self.fill == "reflect":
            padded = F.pad(images, pad, mode="reflect")
        else:
            padded = F.pad(images, pad, value=float(self.fill))
        n, c, padded_h, padded_w = padded.shape
        if h > padded_h or w > padded_w:
            raise ConfigError(f"random_crop size {(h, w)} exceeds the padded image {(padded_h, padded_w)}; lower it")
        top = _randint(gen, padded.new_full((n,), padded_h - h)).long()
        left = _randint(gen, padded.new_full((n,), padded_w - w)).long()
        rows = top[:, None, None] + torch.arange(h, device=images.device)[:, None]
        cols = left[:, None, None] + torch.arange(w, device=images.device)
        flat = (rows * padded_w + cols).view(n, 1, h * w).expand(n, c, h * w)
        return view.replace(images=padded.flatten(2).gather(2, flat).view(n, c, h, w))


@register_op("resize")
class Resize:
    """Resize to ``size`` (an int means square), bilinear, anti-aliased when shrinking; no-op at that size."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, view: View, gen: torch.Generator) -> View:
        if tuple(view.images.shape[-2:]) == self.size:
            return view
        resized = F.interpolate(view.images, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return view.replace(images=resized)


@register_op("center_crop")
class CenterCrop:
    """Crop ``size`` (an int means square) from the centre."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, view: View, gen: torch.Generator) -> View:
        (h, w), (height, width) = self.size, view.images.shape[-2:]
        if h > height or w > width:
            raise ConfigError(f"center_crop size {(h, w)} exceeds the image {(height, width)}; resize first")
        top, left = (height - h) // 2, (width - w) // 2
        return view.replace(images=view.images[..., top : top + h, left : left + w])


@register_op("hflip")
class HorizontalFlip:
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p)

    def __call__(self, view: View, gen: torch.Generator) -> View:
        flip = _coin(gen, len(view.images), self.p).view(-1, 1, 1, 1)
        return view.replace(images=torch.where(flip, view.images.flip(-1), view.images))


# ---------------------------------------------------------------------------------------------------------------
# Colour and blur


def _jitter_range(value: float | Sequence[float], name: str, centre: float) -> tuple[float, float] | None:
    """torchvision's ranges: ``v`` means [centre - v, centre + v] (clipped at 0), a pair is the range; None: off."""
    if isinstance(value, Sequence):
        low, high = _range(value, name)
    elif value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    else:
        low, high = max(centre - value, 0.0), centre + value
    return None if low == high == centre else (low, high)


@register_op("color_jitter")
class ColorJitter:
    """With probability ``p``, jitter brightness, contrast, saturation and hue by per-sample random factors.

    Ranges follow torchvision's ``ColorJitter`` (a number ``v`` draws a factor in [1 - v, 1 + v], hue a shift in
    [-v, v] of a turn, v <= 0.5; a pair gives the range), and so does each adjustment. The order is fixed:
    brightness, contrast, saturation, hue (torchvision shuffles it per call).
    """

    def __init__(
        self,
        brightness: float | Sequence[float] = 0.0,
        contrast: float | Sequence[float] = 0.0,
        saturation: float | Sequence[float] = 0.0,
        hue: float | Sequence[float] = 0.0,
        p: float = 1.0,
    ):
        hue_range = _jitter_range(hue, "hue", 0.0)
        if hue_range and not -0.5 <= hue_range[0] <= hue_range[1] <= 0.5:
            raise ValueError(f"hue must lie in [-0.5, 0.5], got {hue}")
        ranges = {
            _brighten: _jitter_range(brightness, "brightness", 1.0),
            _contrast: _jitter_range(contrast, "contrast", 1.0),
            _saturate: _jitter_range(saturation, "saturation", 1.0),
            _shift_hue: hue_range,
        }
        self.ranges = {adjust: bounds for adjust, bounds in ranges.items() if bounds}
        self.p = _probability(p)

    def __call__(self, view: View, gen: torch.Generator) -> View:
        n = len(view.images)
        chosen = _coin(gen, n, self.p)
        factors = [_uniform(gen, *bounds, n) for bounds in self.ranges.values()]
        return view.replace(images=_apply_to(chosen, self._jitter, view.images, *factors))

    def _jitter(self, images: Tensor, *factors: Tensor) -> Tensor:
        for adjust, factor in zip(self.ranges, factors, strict=True):
            images = adjust(images, factor)
        return images


@register_op("grayscale")
class Grayscale:
    """With probability ``p``, replace each sample by its luma, repeated over the 3 channels."""

    def __init__(self, p: float = 0.2):
        self.p = _probability(p)

    def __call__(self, view: View, gen: torch.Generator) -> View:
        chosen = _coin(gen, len(view.images), self.p).view(-1, 1, 1, 1)
        return view.replace(images=torch.where(chosen, _gray(view.images).expand_as(view.images), view.images))


@register_op("gaussian_blur")
class GaussianBlur:
    """With probability ``p``, blur with a Gaussian of per-sample ``sigma`` drawn uniformly from the range.

    ``kernel_size`` (odd) defaults to about 10% of the image side (at least 3), as SimCLR; the kernel and the
    reflect padding match torchvision's ``gaussian_blur``.
    """

    def __init__(self, p: float = 0.5, sigma: Sequence[float] = (0.1, 2.0), kernel_size: int | None = None):
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.p = _probability(p)
        self.sigma = _range(sigma, "sigma")
        self.kernel_size = kernel_size

    def __call__(self, view: View, gen: torch.Generator) -> View:
        x = view.images
        kernel_size = self.kernel_size or max(3, 2 * round(0.05 * min(x.shape[-2:])) + 1)
        chosen = _coin(gen, len(x), self.p)
        sigma = _uniform(gen, *self.sigma, len(x))
        return view.replace(images=_apply_to(chosen, partial(_blur, kernel_size=kernel_size), x, sigma))


# ---------------------------------------------------------------------------------------------------------------
# RandAugment


def _affine(images: Tensor, warp: Tensor, fill: Tensor) -> Tensor:
    """Bilinear warp: output pixel p reads input ``warp @ (p, 1)`` (pixels, origin at the image centre).

    ``warp`` [B, 2, 3] acts on (x, y); pixels from outside the image get ``fill``.
    """
    h, w = images.shape[-2:]
    half = images.new_tensor([w / 2, h / 2])
    theta = torch.cat([warp[:, :, :2] * half / half[:, None], warp[:, :, 2:] / half[:, None]], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Sampling (images - fill) with zero padding and adding fill back pads with fill exactly.
    return F.grid_sample(images - fill, grid, align_corners=False) + fill


_WARPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_WARP_SCALES = (30.0, 0.3, 0.3, 0.45, 0.45)  # degrees, shear factors, fractions of the side


def _warps(kind: Tensor, level: Tensor, height: int, width: int) -> Tensor:
    """Warps [B, 2, 3] for :func:`_affine`: sample i gets ``_WARPS[kind[i]]`` at the signed ``level[i]``."""
    amounts = F.one_hot(kind, len(_WARPS)) * level[:, None] * level.new_tensor(_WARP_SCALES)
    degrees, shear_x, shear_y, shift_x, shift_y = amounts.unbind(1)
    radians = torch.deg2rad(degrees)
    cos, sin = radians.cos(), radians.sin()
    return torch.stack([cos, shear_x - sin, shift_x * width, sin + shear_y, cos, shift_y * height], 1).view(-1, 2, 3)


def _quantise(images: Tensor) -> Tensor:
    """8-bit values as float whole numbers in [0, 255]."""
    return (images * 255).round()


def _auto_contrast(images: Tensor) -> Tensor:
    """Stretch each channel to [0, 1] (PIL's autocontrast without cutoff, not rounded to 8 bits)."""
    low = images.amin((2, 3), keepdim=True)
    high = images.amax((2, 3), keepdim=True)
    flat = high <= low
    return torch.where(flat, images, (images - low) / torch.where(flat, 1, high - low))


def _equalize(images: Tensor) -> Tensor:
    """PIL's ``ImageOps.equalize`` on the 8-bit values of each sample and channel."""
    n, c, h, w = images.shape
    values = _quantise(images).long().view(n * c, h * w)
    hist = values.new_zeros(n * c, 256).scatter_add_(1, values, torch.ones_like(values))
    # PIL: step = (pixels - count of the highest value present) // 255; lut[i] = (step // 2 + #pixels below i) // step
    step = (h * w - hist.gather(1, values.amax(1, keepdim=True))) // 255
    lut = ((hist.cumsum(1) - hist + step // 2) // step.clamp(min=1)).clamp(max=255)
    equalised = torch.where(step > 0, lut.gather(1, values), values)
    return equalised.view(n, c, h, w).to(images.dtype) / 255


def _posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` [B] bits of each 8-bit value."""
    bucket = 2 ** (8 - bits).view(-1, 1, 1, 1)
    return (_quantise(images) / bucket).floor() * bucket / 255


def _solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """Invert the 8-bit values >= ``threshold`` [B] (0..256)."""
    return torch.where(_quantise(images) >= threshold.view(-1, 1, 1, 1), 1 - images, images)


def _solarize_add(images: Tensor, add: Tensor) -> Tensor:
    """Add ``add`` [B] (8-bit units) to the values below 128, saturating."""
    return torch.where(_quantise(images) < 128, (images + add.view(-1, 1, 1, 1) / 255).clamp(max=1), images)


def _smooth(images: Tensor) -> Tensor:
    """PIL's SMOOTH filter (3x3, centre weight 5 of 13), border pixels unchanged: the baseline of ``sharpness``."""
    h, w = images.shape[-2:]
    box_sum = sum(images[..., i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3))
    out = images.clone()
    out[..., 1:-1, 1:-1] = (box_sum + 4 * images[..., 1:-1, 1:-1]) / 13
    return out


def _enhance(level: Tensor) -> Tensor:
    return (1 + 0.9 * level).clamp(min=0.1)


_PIXEL_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "auto_contrast": lambda x, level: _auto_contrast(x),
    "equalize": lambda x, level: _equalize(x),
    "invert": lambda x, level: 1 - x,
    "posterize": lambda x, level: _posterize(x, 4 - (4 * level.abs()).floor()),
    "solarize": lambda x, level: _solarize(x, 256 - (256 * level.abs()).floor()),
    "solarize_add": lambda x, level: _solarize_add(x, (110 * level.abs()).floor()),
    "color": lambda x, level: _saturate(x, _enhance(level)),
    "contrast": lambda x, level: _contrast(x, _enhance(level)),
    "brightness": lambda x, level: _brighten(x, _enhance(level)),
    "sharpness": lambda x, level: _blend(x, _smooth(x), _enhance(level)),
}


def _pixel_op(op: Callable[[Tensor, Tensor], Tensor], images: Tensor, level: Tensor, fill: Tensor) -> Tensor:
    return op(images, level)


def _warp_op(kind: int, images: Tensor, level: Tensor, fill: Tensor) -> Tensor:
    return _affine(images, _warps(torch.full_like(level, kind, dtype=torch.long), level, *images.shape[-2:]), fill)


RAND_AUGMENT_OPS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    **{name: partial(_pixel_op, op) for name, op in _PIXEL_OPS.items()},
    **{name: partial(_warp_op, kind) for kind, name in enumerate(_WARPS)},
}
"""timm's "increasing" RandAugment ops (``_RAND_INCREASING_TRANSFORMS``): ``op(images, level, fill)``.

``level`` [B] in [-1, 1] is the signed magnitude / 10; each op maps it to its argument as timm does (rotate 30
degrees, shear 0.3, translate 45% of the side, enhance factor 1 + 0.9 level, posterize 4..0 bits, solarize
threshold 256..0, solarize_add 0..110). Ops without a direction use ``|level|``.
"""


def _apply_by_kind(x: Tensor, kind: Tensor, level: Tensor, fill: Tensor) -> None:
    """In place: sample i gets op ``kind[i]`` of :data:`RAND_AUGMENT_OPS` at ``level[i]``; kind = number of ops: none.

    Samples are sorted by kind (pixel ops, then warps); each pixel op runs on its slice, all warps in one call.
    """
    counts = torch.bincount(kind, minlength=len(RAND_AUGMENT_OPS) + 1).tolist()
    pixel_counts = counts[: len(_PIXEL_OPS)]
    chosen = kind.argsort()[: len(x) - counts[-1]]
    sizes = [sum(pixel_counts), len(chosen) - sum(pixel_counts)]
    pixel_images, warp_images = x.index_select(0, chosen).split(sizes)
    pixel_levels, warp_levels = level.index_select(0, chosen).split(sizes)
    groups = zip(_PIXEL_OPS.values(), pixel_images.split(pixel_counts), pixel_levels.split(pixel_counts), strict=True)
    done = [op(images, lv) for op, images, lv in groups if len(images)]
    if len(warp_images):
        warp_kinds = kind.index_select(0, chosen[sizes[0] :]) - len(_PIXEL_OPS)
        done.append(_affine(warp_images, _warps(warp_kinds, warp_levels, *x.shape[-2:]), fill))
    if done:
        x.index_copy_(0, chosen, torch.cat(done))


@register_op("rand_augment")
class RandAugment:
    """RandAugment as timm's ``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1``; defaults are DeiT's m9 mstd0.5.

    Each sample draws ``num_ops`` ops uniformly (with replacement) from :data:`RAND_AUGMENT_OPS`; each one is
    applied with probability ``p`` at a magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10], with a
    random sign. Unlike timm (PIL), images stay float (no 8-bit rounding), interpolation is bilinear, and shear
    is about the image centre rather than the corner. ``fill`` (a value or one per channel) fills pixels that
    rotation, shear and translation bring in (timm uses the dataset mean).
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        p: float = 0.5,
        fill: float | Sequence[float] = 0.5,
    ):
        if num_ops < 0 or not 0 <= magnitude <= 10 or magnitude_std < 0:
            raise ValueError(
                f"need num_ops >= 0, magnitude in [0, 10], magnitude_std >= 0; got {num_ops, magnitude, magnitude_std}"
            )
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.p = _probability(p)
        self.fill = fill

    def __call__(self, view: View, gen: torch.Generator) -> View:
        x = view.images.clone()
        n = len(x)
        fill = _as_channels(self.fill, x)
        for _ in range(self.num_ops):
            kind = (_rand(gen, n) * len(RAND_AUGMENT_OPS)).long()
            kind = torch.where(_coin(gen, n, self.p), kind, len(RAND_AUGMENT_OPS))  # the last kind skips
            noise = torch.randn(n, generator=gen, device=gen.device)
            level = (self.magnitude + self.magnitude_std * noise).clamp(0, 10) / 10
            level = torch.where(_coin(gen, n, 0.5), -level, level)
            _apply_by_kind(x, kind, level, fill)
        return view.replace(images=x)


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and what follows it


@register_op("normalize")
class Normalize:
    """Standardise each channel: ``(x - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, view: View, gen: torch.Generator) -> View:
        x = view.images
        return view.replace(images=(x - _as_channels(self.mean, x)) / _as_channels(self.std, x))


@register_op("random_erasing")
class RandomErasing:
    """With probability ``p``, replace one box per sample by noise, as timm's ``RandomErasing`` (one box).

    The box covers a ``scale`` fraction of the image with aspect ratio in ``ratio`` (10 draws; a sample where none
    fits is left alone). ``value="random"`` fills it with N(0, 1) noise per pixel (timm's mode "pixel"), a number
    with that constant. It runs after ``normalize``, where N(0, 1) matches the data and 0 is the mean colour.
    """

    after_normalize = True

    def __init__(
        self,
        p: float = 0.25,
        scale: Sequence[float] = (0.02, 1 / 3),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float | str = "random",
    ):
        if isinstance(value, str) and value != "random":
            raise ValueError(f"value must be a number or 'random', got {value!r}")
        self.p = _probability(p)
        self.scale = _range(scale, "scale")
        self.ratio = _range(ratio, "ratio")
        self.value = value

    def __call__(self, view: View, gen: torch.Generator) -> View:
        x = view.images
        n, _, height, width = x.shape
        top, left, h, w, fits = _sample_boxes(gen, n, height, width, self.scale, self.ratio)
        erase = box_mask(top, left, top + h, left + w, height, width)
        return view.replace(images=_apply_to(_coin(gen, n, self.p) & fits, partial(self._erase, gen=gen), x, erase))

    def _erase(self, images: Tensor, erase: Tensor, gen: torch.Generator) -> Tensor:
        if self.value == "random":
            value = torch.randn(images.shape, generator=gen, device=gen.device, dtype=images.dtype)
        else:
            value = images.new_tensor(float(self.value))
        return torch.where(erase, value, images)
