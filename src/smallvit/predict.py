"""``smallvit predict``: classify new images with a trained run or an exported model.

Images go through exactly what the run's evaluation did: :func:`smallvit.data.formats.decode_file` decodes any
format, size or mode the way the run's data was decoded (shorter side resized to the run's image size, center crop,
grayscale or colour as the run's channels), then the engine's evaluation augmentation resizes to the model's input
size and normalises with the run's mean and std. Class names come from the training data. A file that cannot be
read is reported with its reason and the others are still classified.

Example::

    predictor = load_predictor(Path("runs/fit-flowers-20261201-120000"))
    result = predict_files(predictor, find_images([Path("new_photos/")]), top_k=3)
    write_csv(result.predictions, Path("predictions.csv"), top_k=3)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from smallvit.data import get_dataset_info
from smallvit.data.formats import IMAGE_SUFFIXES, DecodeMethod, decode_files
from smallvit.data.pipeline import Augmentation, eval_augmentation
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import build_model, geometry, last_stage, read_run_config, resolve_device
from smallvit.errors import SmallViTError
from smallvit.export.onnx import ONNX_FILE, onnx_classifier
from smallvit.models import create_timm_model

DECODE_CHUNK = 512  # images decoded at a time, so that a folder of any size fits in memory


@dataclass
class Predictor:
    """A classifier and the preprocessing of the run it came from."""

    classify: Callable[[Tensor], Tensor]  # normalised images [B, C, S, S] -> logits [B, classes]
    classes: list[str]
    image_size: int  # the size files are decoded to (the run's storage size)
    in_chans: int
    decode: DecodeMethod
    augment: Augmentation  # the run's evaluation augmentation: resize to the model's input size, normalise
    device: torch.device
    source: str


@dataclass
class Prediction:
    path: str
    classes: list[str]  # top-k, most probable first
    probabilities: list[float]


@dataclass
class PredictionResult:
    predictions: list[Prediction] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # path -> why it could not be read


def load_predictor(path: Path, device: str = "auto", checkpoint: str = "best") -> Predictor:
    """A run folder (its ``checkpoint``; a multi-stage run: its last stage), an export folder (``config.json`` with
    ``model.onnx``, run by ONNX Runtime, or with ``model.safetensors``, as ``smallvit export`` and ``smallvit fit``
    write), or an export's ``model.onnx``."""
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return _from_export(path.parent, resolve_device(device), onnx=path)
    if (path / "config.json").is_file() and (path / ONNX_FILE).is_file():
        return _from_export(path, resolve_device(device), onnx=path / ONNX_FILE)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _from_export(path, resolve_device(device))
    stage = last_stage(path)
    if (stage / "config.yaml").is_file():
        return _from_run(stage, resolve_device(device), checkpoint)
    raise SmallViTError(
        f"{path} is neither a run folder (config.yaml) nor an export folder (config.json + model.safetensors or "
        f"{ONNX_FILE}): give a folder under runs/ or one written by `smallvit export`"
    )


def _from_run(run_dir: Path, device: torch.device, checkpoint: str) -> Predictor:
    if checkpoint not in ("best", "last"):
        raise SmallViTError(f"--checkpoint {checkpoint!r} is not valid: use best or last")
    config = read_run_config(run_dir)
    data_file = run_dir / "data.json"
    if not data_file.is_file():
        raise SmallViTError(f"{run_dir} has no data.json (the class names): export it with `smallvit export` first")
    data = json.loads(data_file.read_text())
    image_size, img_size, patch_size = geometry(config)
    model = build_model(config, num_classes=len(data["classes"]), num_train=data["splits"]["train"]["images"])
    path = run_dir / "checkpoints" / f"{checkpoint}.safetensors"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "checkpoints" / "last.safetensors"
    if not path.is_file():
        raise SmallViTError(f"{run_dir} has no checkpoint: train it first, or give an export folder")
    model.load_state_dict(load_checkpoint(path, prefix="model.")[0])
    head = model.classifier_state()
    if head is None:
        raise SmallViTError(f"{run_dir} has no classifier (a pre-training stage): predict with a fine-tuned run")
    model = model.to(device).eval()
    weight, bias = head["head.weight"].detach(), head["head.bias"].detach()

    def classify(images: Tensor) -> Tensor:
        return F.linear(model.backbone(images).pooled.float(), weight.float(), bias.float())

    info = get_dataset_info(config.data.dataset)
    return Predictor(
        classify=classify,
        classes=list(data["classes"]),
        image_size=image_size,
        in_chans=config.data.in_chans,
        decode=getattr(config.data, "decode", "full"),  # data.decode: see smallvit.fit.DRAFT_DECODE
        augment=eval_augmentation(img_size, info.mean[: config.data.in_chans], info.std[: config.data.in_chans]),
        device=device,
        source=f"{run_dir} ({path.stem} checkpoint)",
    )


def _from_export(export_dir: Path, device: torch.device, onnx: Path | None = None) -> Predictor:
    """The timm model of an export folder, or its ``onnx`` file in ONNX Runtime (images prepared on the CPU)."""
    if not (export_dir / "config.json").is_file():
        raise SmallViTError(f"{onnx} has no config.json beside it: give the folder `smallvit export` wrote")
    exported = json.loads((export_dir / "config.json").read_text())
    overlay = exported["pretrained_cfg_overlay"]
    classes = exported.get("classes") or [str(i) for i in range(overlay["num_classes"])]
    in_chans, input_size = overlay["input_size"][0], overlay["input_size"][-1]
    preprocess = exported.get("smallvit_preprocess", {})
    if onnx is None:
        model = create_timm_model(export_dir).to(device).eval()
        classify, source = (lambda images: model(images).float()), str(export_dir)
    else:
        classify, source, device = onnx_classifier(onnx, device), f"{onnx} (ONNX Runtime)", torch.device("cpu")
    mean, std = overlay.get("mean", (0.5,) * 3)[:in_chans], overlay.get("std", (0.5,) * 3)[:in_chans]
    return Predictor(
        classify=classify,
        classes=list(classes),
        image_size=preprocess.get("image_size") or input_size,
        in_chans=in_chans,
        decode=preprocess.get("decode", "full"),
        augment=eval_augmentation(input_size, mean, std),
        device=device,
        source=source,
    )


def find_images(paths: list[Path]) -> list[Path]:
    """Files as given (any name: a file that is not an image is reported when it is read), and every image file
    (by suffix) under each folder, sorted; missing paths are an error."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise SmallViTError(f"{path} does not exist: give image files or folders of images")
    if not found:
        raise SmallViTError(f"no image files in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


@torch.no_grad()
def predict_files(
    predictor: Predictor,
    files: list[Path],
    top_k: int = 5,
    batch_size: int = 64,
    on_error: Callable[[str, str], None] | None = None,
) -> PredictionResult:
    """The ``top_k`` classes and probabilities of every file that decodes, in ``files`` order; the others in
    ``errors`` with why (``on_error(path, why)`` is called as each is found)."""
    if top_k < 1:
        raise SmallViTError(f"--top-k {top_k} must be at least 1")
    k = min(top_k, len(predictor.classes))
    result = PredictionResult()
    for start in range(0, len(files), DECODE_CHUNK):
        chunk = files[start : start + DECODE_CHUNK]
        decoded = decode_files(chunk, predictor.image_size, predictor.in_chans, predictor.decode)
        for index, why in sorted(decoded.errors.items()):
            result.errors[str(chunk[index])] = why
            if on_error is not None:
                on_error(str(chunk[index]), why)
        for first in range(0, len(decoded.indices), batch_size):
            images = decoded.images[first : first + batch_size].to(predictor.device)
            positions = torch.arange(first, first + len(images), device=predictor.device)
            view = predictor.augment(images, None, positions, None, 0).main
            probabilities = predictor.classify(view.images).softmax(dim=-1).cpu()
            top = probabilities.topk(k, dim=-1)
            for row, index in enumerate(decoded.indices[first : first + batch_size]):
                result.predictions.append(
                    Prediction(
                        str(chunk[index]),
                        [predictor.classes[c] for c in top.indices[row].tolist()],
                        top.values[row].tolist(),
                    )
                )
    return result


def csv_header(top_k: int) -> list[str]:
    """``path, top1_class, top1_probability, top2_class, top2_probability, ...``"""
    return ["path"] + [name for rank in range(1, top_k + 1) for name in (f"top{rank}_class", f"top{rank}_probability")]


def check_csv_path(path: Path) -> None:
    """Refuse a ``--csv`` file that could not be written, before any image is classified."""
    if path.is_dir():
        raise SmallViTError(f"--csv {path} is a folder: give a file name, e.g. {path / 'predictions.csv'}")
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist"
        raise SmallViTError(f"--csv {path}: {path.parent} {problem}: create the folder or give another path")


def write_csv(predictions: list[Prediction], path: Path, top_k: int) -> Path:
    """One row per image: its path, then its top-k classes and probabilities, most probable first (empty cells when
    the model has fewer than ``top_k`` classes)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(top_k))
        for p in predictions:
            cells = [cell for pair in zip(p.classes, p.probabilities) for cell in (pair[0], f"{pair[1]:.6f}")]
            writer.writerow([p.path, *cells, *[""] * (2 * top_k - len(cells))])
    return path
