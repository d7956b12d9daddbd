"""``smallvit export``: a run's classifier as a folder a user can ship.

Every format writes the timm export (``model.safetensors`` + ``config.json``: architecture, classes, input size,
normalisation and how ``smallvit predict`` decodes images) and the model card ``README.md``; ``onnx`` adds
``model.onnx``. A ``model.onnx`` left in the folder by an earlier ONNX export is removed by a safetensors one, so the
folder never holds two different models.

Example::

    written = export_folder(Path("runs/quickstart-20261125-120000"), Path("exported/"), format="onnx")
"""

from __future__ import annotations

import json
from pathlib import Path

from smallvit.config import RunConfig
from smallvit.engine.experiment import geometry, read_run_config
from smallvit.errors import ConfigError
from smallvit.export.card import write_model_card
from smallvit.export.onnx import ONNX_FILE, export_onnx, require
from smallvit.runs import export_run

FORMATS = ("safetensors", "onnx")


def record_preprocessing(export_dir: Path, config: RunConfig) -> None:
    """Add to the export's ``config.json`` how ``smallvit predict`` must decode images for it: the run's storage size
    and decode method (the model's input size and normalisation are in ``pretrained_cfg_overlay``)."""
    path = export_dir / "config.json"
    exported = json.loads(path.read_text())
    exported["smallvit_preprocess"] = {
        "image_size": geometry(config)[0],
        "decode": config.data.decode,
        "resize": "shorter side to image_size (bilinear, antialiased), then center crop",
    }
    path.write_text(json.dumps(exported, indent=2) + "\n")


def export_folder(run_dir: Path, output: Path, format: str = "safetensors", checkpoint: str = "best") -> list[Path]:
    """Export ``run_dir``'s ``checkpoint`` (``best`` falls back to ``last``) to ``output`` in ``format`` (see
    :data:`FORMATS`); returns the files written."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not valid: use {' or '.join(FORMATS)}")
    if format == "onnx":  # before the export, so that a missing package costs no time
        require("onnx")
        require("onnxruntime")
    weights = export_run(run_dir, output, checkpoint=checkpoint)
    record_preprocessing(output, read_run_config(run_dir))
    written = [weights, output / "config.json"]
    if format == "onnx":
        written.append(export_onnx(output))
    elif (output / ONNX_FILE).is_file():
        (output / ONNX_FILE).unlink()
    written.append(write_model_card(output, run_dir, checkpoint))
    return written
