"""Mixup and CutMix, the one implementation every objective uses, and the loss that goes with them.

:func:`apply_mix` pairs each sample with a partner (the batch reversed, as timm), blends or pastes images and
records the pairing in ``view.mix``; objectives turn it into ``lam * loss(y) + (1 - lam) * loss(y[partner])``
with :func:`mixed_cross_entropy`, whatever their targets (class labels, instance indices).

Example::

    view = apply_mix(view, MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0), gen, epoch)
    loss = mixed_cross_entropy(model(view.images), view.labels, view.mix, label_smoothing=0.1)
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from smallvit.data.batch import Mix, View
from smallvit.data.transforms import box_mask
from smallvit.errors import Strict


class MixConfig(Strict):
    """How to mix a view; the fields follow timm's ``Mixup``.

    Attributes:
        mixup_alpha: Beta(alpha, alpha) for mixup's lambda; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) for CutMix's lambda; 0 disables CutMix.
        prob: probability of mixing a batch ("batch") or a sample ("elem") at all.
        switch_prob: probability of CutMix rather than mixup when both are enabled.
        mode: "batch" draws one lambda and one box per batch (timm's default), "elem" one per sample.
        lam_max_of_pair: use max(lam, 1 - lam), so a sample keeps the larger part of itself (IDMM's CutMix).
        alternate: mixup on even epochs and CutMix on odd ones instead of ``switch_prob`` (IDMM's fine-tuning).
    """

    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    prob: float = Field(1.0, ge=0, le=1)
    switch_prob: float = Field(0.5, ge=0, le=1)
    mode: Literal["batch", "elem"] = "batch"
    lam_max_of_pair: bool = False
    alternate: bool = False

    @model_validator(mode="after")
    def _check_alphas(self) -> MixConfig:
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("set mixup_alpha or cutmix_alpha above 0, or remove mix")
        if self.alternate and 0 in (self.mixup_alpha, self.cutmix_alpha):
            raise ValueError("alternate needs both mixup_alpha and cutmix_alpha above 0")
        return self


def _cutmix_probability(cfg: MixConfig, epoch: int) -> float:
    if cfg.alternate:
        return float(epoch % 2)
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        return cfg.switch_prob
    return float(cfg.cutmix_alpha > 0)


def _beta(gen: torch.Generator, alpha: Tensor) -> Tensor:
    """One Beta(a, a) sample per entry of ``alpha``; seeded from ``gen`` (torch has no seeded Beta sampler)."""
    seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
    lam = np.random.default_rng(seed).beta(alpha.cpu().numpy(), alpha.cpu().numpy())
    return torch.as_tensor(lam, dtype=torch.float32, device=gen.device)


def apply_mix(view: View, cfg: MixConfig, gen: torch.Generator, epoch: int = 0) -> View:
    """Mix each sample with its partner ``B - 1 - i`` and set ``view.mix``.

    Mixup blends the images; CutMix pastes a box of the partner of side ``sqrt(1 - lam)`` times the image's, at a
    uniform centre, clipped at the border, and sets lam to exactly 1 - (pasted area / image area).
    """
    images = view.images
    n, _, height, width = images.shape
    draws = n if cfg.mode == "elem" else 1
    rand = partial(torch.rand, draws, generator=gen, device=gen.device)

    cutmix = rand() < _cutmix_probability(cfg, epoch)
    lam = _beta(gen, torch.where(cutmix, cfg.cutmix_alpha, cfg.mixup_alpha))
    lam = torch.where(rand() < cfg.prob, lam, 1.0)
    if cfg.lam_max_of_pair:
        lam = torch.maximum(lam, 1 - lam)

    side = torch.sqrt(1 - lam)
    box_h, box_w = (height * side).floor(), (width * side).floor()
    top = (rand() * height).floor() - box_h // 2
    left = (rand() * width).floor() - box_w // 2
    bottom, right = (top + box_h).clamp(0, height), (left + box_w).clamp(0, width)
    top, left = top.clamp(0, height), left.clamp(0, width)
    pasted_lam = 1 - (bottom - top) * (right - left) / (height * width)
    lam = torch.where(cutmix, pasted_lam, lam)

    cutmix, lam, top, left, bottom, right = (t.expand(n) for t in (cutmix, lam, top, left, bottom, right))
    partner = torch.arange(n - 1, -1, -1, device=images.device)
    others = images[partner]
    paste = box_mask(top, left, bottom, right, height, width) & cutmix.view(-1, 1, 1, 1)
    weight = torch.where(cutmix, 1.0, lam).view(-1, 1, 1, 1).to(images.dtype)
    mixed = torch.where(paste, others, weight * images + (1 - weight) * others)
    return view.replace(images=mixed, mix=Mix(partner=partner, lam=lam))


def mixed_cross_entropy(logits: Tensor, target: Tensor, mix: Mix | None, label_smoothing: float = 0.0) -> Tensor:
    """Mean over the batch of ``lam * CE(logits, y) + (1 - lam) * CE(logits, y[partner])``, CE label-smoothed.

    ``target`` is int64 [B] (class labels or instance indices); without ``mix`` this is plain cross-entropy.
    Equals timm's soft-target loss on mixed, smoothed one-hot targets, since cross-entropy is linear in them.
    """
    if mix is None:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    ce = partial(F.cross_entropy, logits, reduction="none", label_smoothing=label_smoothing)
    return (mix.lam * ce(target) + (1 - mix.lam) * ce(target[mix.partner])).mean()
