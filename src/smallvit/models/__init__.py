"""Backbones (timm ViTs and Swins with token access) and weight adaptation."""

from smallvit.models.backbone import PRESETS, BackboneOutput, ViTBackbone, build_backbone, no_weight_decay_names
from smallvit.models.swin import SwinBackbone
from smallvit.models.weights import LoadReport, adapt_state_dict, create_timm_model, export_timm, load_backbone_weights

__all__ = [
    "PRESETS",
    "BackboneOutput",
    "LoadReport",
    "SwinBackbone",
    "ViTBackbone",
    "adapt_state_dict",
    "build_backbone",
    "create_timm_model",
    "export_timm",
    "load_backbone_weights",
    "no_weight_decay_names",
]
