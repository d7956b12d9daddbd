"""Moving backbone weights between shapes: stage to stage, resolution to resolution, and out to timm.

All shape adaptation lives here (as timm keeps it in ``checkpoint_filter_fn``): position embeddings are
resampled bicubically with timm's ``resample_abs_pos_embed``, patch-embedding kernels with
``resample_patch_embed`` and the input channels of every first convolution (RGB <-> grayscale) with
``adapt_input_conv``; keys the target lacks are dropped, keys the source lacks stay freshly initialised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv
from torch import Tensor, nn

from smallvit.models.layers import create_timm

# The convolution that reads the image, per architecture: ViT/Swin patch projection, conv tokenizer, ResNet stem.
INPUT_CONVS = ("patch_embed.proj.weight", "patch_embed.stages.0.conv.weight", "conv1.weight")


@dataclass
class LoadReport:
    """Which target keys were copied, resized to fit, or left at their fresh initialisation."""

    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} loaded", f"{len(self.resized)} resized", f"{len(self.initialised)} new"]
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored")
        text = ", ".join(parts)
        for label, keys in (("resized", self.resized), ("new", self.initialised)):
            if keys:
                text += f"; {label}: {', '.join(keys)}"
        return text


def _prefix_tokens(state: dict[str, Tensor]) -> int:
    return int("cls_token" in state) + (state["reg_token"].shape[1] if "reg_token" in state else 0)


def _adapt(key: str, value: Tensor, target: Tensor, source_state: dict, target_prefix: int) -> Tensor | None:
    """Resize one source tensor to the target's shape, or ``None`` when it cannot be adapted."""
    if key == "pos_embed":
        src_prefix = _prefix_tokens(source_state)
        src_grid = value.shape[1] - src_prefix
        dst_grid = target.shape[1] - target_prefix
        src_side, dst_side = int(src_grid**0.5), int(dst_grid**0.5)
        if src_side**2 != src_grid or dst_side**2 != dst_grid:
            return None
        patches = resample_abs_pos_embed(
            value[:, src_prefix:], new_size=[dst_side, dst_side], old_size=[src_side, src_side], num_prefix_tokens=0
        )
        prefix = value[:, :src_prefix][:, :target_prefix]
        if prefix.shape[1] < target_prefix:
            prefix = torch.cat([target[:, : target_prefix - prefix.shape[1]], prefix], dim=1)
        return torch.cat([prefix, patches], dim=1)
    if key in INPUT_CONVS and value.shape[0] == target.shape[0]:
        if value.shape[1] != target.shape[1]:  # grayscale sums the RGB kernels; RGB repeats a grayscale one / 3
            value = adapt_input_conv(target.shape[1], value, base_chans=value.shape[1])
        if key == "patch_embed.proj.weight" and value.shape[-2:] != target.shape[-2:]:
            value = resample_patch_embed(value, list(target.shape[-2:]))
        return value
    return None


def adapt_state_dict(source: dict[str, Tensor], target: dict[str, Tensor]) -> tuple[dict[str, Tensor], LoadReport]:
    """Fit a timm state dict ``source`` (ViT, Swin, ResNet) onto the keys and shapes of ``target``.

    Returns the state to load (every target key present) and a report. A source without position embedding
    (RelViT pre-training) fine-tunes with a freshly initialised one; likewise for a missing CLS token.
    """
    report = LoadReport()
    target_prefix = _prefix_tokens(target)
    merged = {}
    for key, fresh in target.items():
        if key not in source:
            # A position embedding new to the weights starts at zero, so the first forward pass computes exactly
            # what the position-free pre-training learned, instead of adding noise to every token.
            merged[key] = torch.zeros_like(fresh) if key == "pos_embed" else fresh
            report.initialised.append(key)
            continue
        value = source[key]
        if value.shape == fresh.shape:
            merged[key] = value
            report.loaded.append(key)
            continue
        adapted = _adapt(key, value, fresh, source, target_prefix)
        if adapted is None or adapted.shape != fresh.shape:
            merged[key] = fresh
            report.initialised.append(key)
        else:
            merged[key] = adapted.to(fresh.dtype)
            report.resized.append(key)
    report.ignored = sorted(set(source) - set(target))
    return merged, report


def load_backbone_weights(backbone: nn.Module, source: dict[str, Tensor]) -> LoadReport:
    """Load a timm state dict into ``backbone`` (any of :func:`~smallvit.models.build_backbone`'s), resizing what
    differs. Returns what happened to each key."""
    merged, report = adapt_state_dict(source, backbone.model.state_dict())
    backbone.model.load_state_dict(merged)
    return report


def export_timm(
    backbone: nn.Module,
    output_dir: Path,
    head: dict[str, Tensor] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a ViT, Swin or ResNet backbone as ``model.safetensors`` and ``config.json`` that timm loads without
    key surgery.

    ``head`` (``head.weight``/``head.bias``) is a classifier to ship with the backbone; objective heads are dropped.
    ``config.json`` holds the architecture, its ``model_args`` and a ``pretrained_cfg_overlay`` (class count,
    input size, normalisation) to hand to timm; :func:`create_timm_model` does exactly that. A backbone with
    smallvit's architecture changes (``vit_lite_conv``, ``resnet18_cifar``) records them as ``smallvit_changes``:
    plain timm cannot build those, :func:`create_timm_model` can.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    model_args = dict(backbone.model_args)
    if head:
        classifier = backbone.model.pretrained_cfg.get("classifier", "head")  # ViT "head", Swin "head.fc", ResNet "fc"
        state.update({f"{classifier}.{k.split('.')[-1]}": v.detach().cpu().contiguous() for k, v in head.items()})
        model_args["num_classes"] = head["head.weight"].shape[0]
    overlay = {
        "num_classes": model_args["num_classes"],
        "input_size": [model_args["in_chans"], *[backbone.img_size] * 2],
    }
    if mean is not None and std is not None:
        overlay.update(mean=list(mean), std=list(std))
    save_file(state, str(output_dir / "model.safetensors"))
    config = {
        "architecture": backbone.arch,
        "model_args": model_args,
        "pretrained_cfg_overlay": overlay,
        **({"smallvit_changes": backbone.changes} if getattr(backbone, "changes", None) else {}),
        **(extra or {}),
    }
    (output_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return output_dir / "model.safetensors"


def create_timm_model(export_dir: Path) -> nn.Module:
    """Load an exported folder with timm: ``timm.create_model(arch, pretrained=True, ...)``.

    With ``smallvit_changes`` in ``config.json`` the model is timm's with those changes
    (:func:`~smallvit.models.layers.create_timm`), and the weights are loaded after the change, strictly.
    """
    import timm

    config = json.loads((Path(export_dir) / "config.json").read_text())
    overlay = dict(config["pretrained_cfg_overlay"], file=str(Path(export_dir) / "model.safetensors"))
    changes = config.get("smallvit_changes")
    if not changes:
        return timm.create_model(
            config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **config["model_args"]
        )
    model = create_timm(config["architecture"], changes, pretrained_cfg_overlay=overlay, **config["model_args"])
    model.load_state_dict(load_file(overlay["file"]))
    return model
