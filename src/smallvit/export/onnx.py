"""ONNX: an exported timm model as ``model.onnx``, and ONNX Runtime models that classify with it.

The model is the one :func:`~smallvit.models.create_timm_model` loads from an export folder, traced by PyTorch's
TorchScript-based exporter (``dynamo=False``: several times quicker on these models than the dynamo exporter, which
also needs onnxscript; that one gives the same logits, should PyTorch drop the deprecated TorchScript one) at
opset 17, where LayerNorm is one ONNX operator. The input is ``images`` (float32
``[batch, channels, size, size]``, normalised as ``config.json``'s ``pretrained_cfg_overlay`` says) and the output
``logits`` (``[batch, classes]``); the batch dimension is free, the image size is the model's. After writing, the
ONNX Runtime logits of a random batch are checked against PyTorch's.

Example::

    export_onnx(Path("exported/"))  # exported/model.onnx, beside model.safetensors and config.json
    classify = onnx_classifier(Path("exported/model.onnx"))
    logits = classify(images)  # images [B, C, S, S] float32 tensor -> logits [B, classes]
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from smallvit.errors import SmallViTError
from smallvit.models import create_timm_model

ONNX_FILE = "model.onnx"
INPUT, OUTPUT = "images", "logits"
OPSET = 17
TOLERANCE = 1e-4  # largest difference between ONNX Runtime's and PyTorch's logits that export accepts


def require(module: str) -> None:
    """Import ``module`` (``onnx``, ``onnxruntime``) or say in one line how to install it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise SmallViTError(f"ONNX needs the {module} package: pip install smallvit[onnx]") from None


def export_onnx(export_dir: Path) -> Path:
    """Write ``export_dir/model.onnx`` from the timm export in ``export_dir`` (``model.safetensors`` +
    ``config.json``) and check its logits against PyTorch's; returns its path."""
    require("onnx")
    require("onnxruntime")
    model = create_timm_model(export_dir).float().eval()
    channels, *size = model.pretrained_cfg["input_size"]
    path = Path(export_dir) / ONNX_FILE
    with warnings.catch_warnings():
        # The size checks of timm's and smallvit's embed layers are Python conditions, fixed at the traced size; the
        # exporter's deprecation is known (see the module docstring), and the logits are checked below.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, channels, *size),),
            str(path),
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
        )
    images = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images)
    difference = (onnx_classifier(path)(images) - expected).abs().max().item()
    if not difference <= TOLERANCE:
        raise SmallViTError(
            f"{path}: ONNX Runtime's logits differ from PyTorch's by {difference:.2g} (at most {TOLERANCE:g} allowed): "
            "export the safetensors format instead"
        )
    return path


def onnx_classifier(path: Path, device: torch.device | None = None) -> Callable[[Tensor], Tensor]:
    """An ``onnxruntime.InferenceSession`` of ``model.onnx`` as a function of normalised images (any device) to
    float32 logits on the CPU; on a CUDA ``device`` it runs on the GPU when ONNX Runtime has CUDA support."""
    require("onnxruntime")
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if (
        device is not None
        and device.type == "cuda"
        and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    runtime = onnxruntime.InferenceSession(str(path), providers=providers)

    def classify(images: Tensor) -> Tensor:
        inputs = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(runtime.run([OUTPUT], {INPUT: inputs})[0])

    return classify
