"""Backbones (timm ViTs with token access) and weight adaptation."""

from smallvit.models.backbone import PRESETS, BackboneOutput, ViTBackbone, build_backbone, no_weight_decay_names
from smallvit.models.weights import LoadReport, adapt_state_dict, create_timm_model, export_timm, load_backbone_weights

__all__ = [
    "PRESETS",
    "BackboneOutput",
    "LoadReport",
    "ViTBackbone",
    "adapt_state_dict",
    "build_backbone",
    "create_timm_model",
    "export_timm",
    "load_backbone_weights",
    "no_weight_decay_names",
]
