"""ONNX export: ``model.onnx`` gives PyTorch's logits under ONNX Runtime for every architecture smallvit changes,
at any batch size; ``smallvit predict`` on it agrees with the run; a missing package is one line naming the fix."""

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.errors import ConfigError, SmallViTError
from smallvit.export import ONNX_FILE, export_folder, export_onnx, onnx_classifier
from smallvit.models import build_backbone, create_timm_model, export_timm
from smallvit.predict import find_images, load_predictor, predict_files
from test_predict import trained_run  # noqa: F401 (a fixture)

pytest.importorskip("onnxruntime")


def untrained_export(folder, preset):
    """A tiny random classifier of ``preset`` exported as ``smallvit export`` writes it; BatchNorm statistics set away
    from their initial 0 / 1, so that evaluation-mode normalisation is part of what is compared."""
    torch.manual_seed(0)
    depth = {} if preset == "resnet18_cifar" else {"depth": 1}
    backbone = build_backbone(preset, img_size=32, patch_size=4, **depth)
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    head = {"head.weight": torch.randn(3, backbone.model.num_features), "head.bias": torch.randn(3)}
    export_timm(backbone, folder, head=head, mean=(0.5,) * 3, std=(0.25,) * 3, extra={"classes": ["a", "b", "c"]})
    return folder


@pytest.mark.parametrize("preset", ["vit_lite", "vit_lite_conv", "vit_lite_stem", "resnet18_cifar"])
def test_onnx_logits_match_pytorch_at_batch_sizes_1_and_3(tmp_path, preset):
    folder = untrained_export(tmp_path / preset, preset)
    path = export_onnx(folder)
    assert path == folder / ONNX_FILE
    model, classify = create_timm_model(folder).eval(), onnx_classifier(path)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(images)
        logits = classify(images)
        assert logits.shape == (batch, 3)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
        assert logits.abs().max() > 1e-2  # a real comparison, not of two near-zero outputs


def test_a_missing_package_or_format_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--format 'tflite' is not valid: use safetensors or onnx"):
        export_folder(tmp_path / "no-run", tmp_path / "out", format="tflite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(SmallViTError, match=r"needs the onnxruntime package: pip install smallvit\[onnx\]"):
        export_folder(tmp_path / "no-run", tmp_path / "out", format="onnx")
    assert not (tmp_path / "out").exists()
    folder = untrained_export(tmp_path / "export", "vit_lite")
    (folder / ONNX_FILE).write_bytes(b"")
    with pytest.raises(SmallViTError, match=r"pip install smallvit\[onnx\]"):
        load_predictor(folder)


def test_predict_on_the_onnx_export_gives_the_runs_top_1(trained_run, tmp_path):  # noqa: F811
    run, folder, _ = trained_run
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(run), "--output", str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", ONNX_FILE, "README.md"}
    files = find_images([folder])
    from_run = predict_files(load_predictor(run), files, top_k=1).predictions
    for source in (out, out / ONNX_FILE):
        predictor = load_predictor(source)
        assert predictor.source == f"{out / ONNX_FILE} (ONNX Runtime)"
        from_onnx = predict_files(predictor, files, top_k=1).predictions
        assert [p.classes for p in from_onnx] == [p.classes for p in from_run]
        np.testing.assert_allclose([p.probabilities for p in from_onnx], [p.probabilities for p in from_run], atol=1e-4)
    result = CliRunner().invoke(app, ["predict", str(out / ONNX_FILE), str(files[0]), "--top-k", "1"])
    assert result.exit_code == 0 and from_run[0].classes[0] in result.output, result.output

    result = CliRunner().invoke(app, ["export", str(run), "--output", str(out)])  # safetensors again: one model only
    assert result.exit_code == 0, result.output
    assert not (out / ONNX_FILE).exists() and load_predictor(out).source == str(out)
