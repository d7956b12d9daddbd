"""Shipping a trained run: the export folder (timm weights, ``config.json``, optionally ``model.onnx``) and its
model card ``README.md``. See :mod:`smallvit.export.folder`, :mod:`smallvit.export.onnx`, :mod:`smallvit.export.card`.
"""

from smallvit.export.card import write_model_card
from smallvit.export.folder import FORMATS, export_folder, record_preprocessing
from smallvit.export.onnx import ONNX_FILE, export_onnx, onnx_classifier

__all__ = [
    "FORMATS",
    "ONNX_FILE",
    "export_folder",
    "export_onnx",
    "onnx_classifier",
    "record_preprocessing",
    "write_model_card",
]
