"""Backbones (timm ViTs, Swins and ResNets behind one forward) and weight adaptation."""

from smallvit.models.backbone import PRESETS, BackboneOutput, ViTBackbone, build_backbone, no_weight_decay_names
from smallvit.models.layers import ConvStem, ConvTokenizer, cifar_stem
from smallvit.models.presets import Preset
from smallvit.models.resnet import ResNetBackbone
from smallvit.models.swin import SwinBackbone
from smallvit.models.weights import LoadReport, adapt_state_dict, create_timm_model, export_timm, load_backbone_weights

__all__ = [
    "PRESETS",
    "BackboneOutput",
    "ConvStem",
    "ConvTokenizer",
    "LoadReport",
    "Preset",
    "ResNetBackbone",
    "SwinBackbone",
    "ViTBackbone",
    "adapt_state_dict",
    "build_backbone",
    "cifar_stem",
    "create_timm_model",
    "export_timm",
    "load_backbone_weights",
    "no_weight_decay_names",
]
