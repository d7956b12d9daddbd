"""The model card: ``README.md`` in every export folder, written from the run that trained it.

It says what the model is (architecture, input, normalisation), what it learned from (dataset, classes, images per
split), how (the recipe and the settings that differ from it), how well (validation and test top-1 of the exported
weights as the run's ``summary.json`` has them, balanced accuracy on an unbalanced test split, accuracy per class),
how to use it (``smallvit predict``, timm, ONNX Runtime) and what it cannot do.

Accuracy per class is on the test split, else on the validation split, of the exported weights: taken from the
run's ``analysis.json`` when that read the same split and weights, else computed once here.

Example::

    write_model_card(Path("exported/"), Path("runs/quickstart-20261125-120000"))  # exported/README.md
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from safetensors import safe_open

from smallvit.config import RunConfig, load_recipe
from smallvit.engine.experiment import geometry, read_run_config
from smallvit.engine.pictures import class_summary, predict_split
from smallvit.errors import SmallViTError
from smallvit.export.onnx import INPUT, ONNX_FILE, OUTPUT
from smallvit.metrics.classification import balanced_accuracy_from_per_class
from smallvit.models.presets import PRESETS
from smallvit.runs import load_run

CARD_FILE = "README.md"
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def exported_checkpoint(run_dir: Path, checkpoint: str) -> str:
    """The checkpoint an export of ``checkpoint`` reads: ``best`` falls back to ``last`` when the run has none."""
    return checkpoint if (run_dir / "checkpoints" / f"{checkpoint}.safetensors").is_file() else "last"


def exported_accuracy(summary: dict, checkpoint: str) -> tuple[float | None, float | None, str]:
    """(validation top-1, test top-1, which weights) of the exported ``checkpoint`` from a run's ``summary.json``."""
    final, best = summary.get("final", {}), summary.get("best", {})
    key = best.get("metric") if str(best.get("metric")).endswith("/acc1") else "val/supervised/acc1"
    test_key = key.replace("val/", "test/", 1)
    if checkpoint == "best" and best.get("value") is not None:
        validation = best["value"] if best["metric"] == key else None
        weights = f"best checkpoint (epoch {best.get('epoch')}, chosen by {best['metric']} on the validation split)"
        return validation, (best.get("test") or {}).get(test_key), weights
    return final.get(key), final.get(test_key), "final weights (last checkpoint)"


def recipe_changes(config: RunConfig) -> list[str] | None:
    """The settings of a run's ``config`` that differ from its recipe as ``smallvit`` has it now (``key=value``, as
    overrides are written); None when the recipe cannot be loaded (a recipe file that has moved)."""
    try:
        recipe = load_recipe(config.name)
    except SmallViTError:
        return None
    base = next((stage for stage in recipe.stages if stage.name == config.name), recipe.stages[-1])
    changes: list[str] = []
    _diff(base.model_dump(mode="json"), config.model_dump(mode="json"), "", changes)
    return [change for change in changes if change.split("=")[0] not in ("name", "description")]


def _diff(old, new, key: str, changes: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for name in new:
            _diff(old.get(name), new[name], f"{key}.{name}" if key else name, changes)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new)):
            _diff(a, b, f"{key}.{index}", changes)
    elif old != new:
        changes.append(f"{key}={new if isinstance(new, str) else json.dumps(new)}")


def class_accuracy(run_dir: Path, checkpoint: str, split: str) -> tuple[dict[str, float | None], list[int]] | None:
    """Top-1 per class and images per class of the exported weights on ``split`` (``val`` or ``test``): from the
    run's ``analysis.json`` when it read that split with those weights, else evaluated; None without a classifier.

    An evaluation is kept for the same checkpoint file (its path and modification time), so the model card and
    ``smallvit fit``'s report, which both ask, pay for one pass over the split."""
    used = exported_checkpoint(run_dir, checkpoint)
    weights_file = Path(run_dir).resolve() / "checkpoints" / f"{used}.safetensors"
    stamp = weights_file.stat().st_mtime_ns if weights_file.is_file() else None
    found = _class_accuracy(Path(run_dir).resolve(), checkpoint, used, split, stamp)
    return None if found is None else (dict(found[0]), list(found[1]))


@functools.lru_cache(maxsize=4)
def _class_accuracy(
    run_dir: Path, checkpoint: str, used: str, split: str, stamp: int | None
) -> tuple[dict[str, float | None], list[int]] | None:
    """:func:`class_accuracy` for one version (``stamp``) of the checkpoint file."""
    analysis = _read_json(run_dir / "analysis.json")
    weights = str(analysis.get("weights", ""))
    same_weights = weights.startswith(f"{used} checkpoint") or (used == "last" and weights == "last weights")
    if analysis.get("split") == split and same_weights and analysis.get("per_class"):
        return analysis["per_class"], [sum(row) for row in analysis["confusion"]]
    experiment = load_run(run_dir, checkpoint)
    data = experiment.eval_set(split)
    probabilities = predict_split(experiment, experiment.model, data)
    if probabilities is None:
        return None
    summary = class_summary(probabilities, data.labels, experiment.classes)
    return summary["per_class"], [sum(row) for row in summary["confusion"]]


def _parameters(export_dir: Path) -> int:
    with safe_open(str(export_dir / "model.safetensors"), framework="pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())


def timm_snippet(export_dir: Path, exported: dict) -> str:
    """Python that loads ``export_dir`` with timm, run from the folder above it."""
    folder = export_dir.name
    changes = exported.get("smallvit_changes") or {}
    in_chans = exported["model_args"]["in_chans"]
    lines = ["import json", "from pathlib import Path", "", "import timm"]
    if changes == {"stem": "cifar"}:
        lines[-1:] = ["import timm", "from safetensors.torch import load_file", "from torch import nn"]
    lines += [
        "",
        f'folder = Path("{folder}")  # this folder',
        'config = json.loads((folder / "config.json").read_text())',
    ]
    if not changes:
        lines += [
            'overlay = dict(config["pretrained_cfg_overlay"], file=str(folder / "model.safetensors"))',
            "model = timm.create_model(",
            '    config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **config["model_args"]',
            ").eval()",
        ]
    elif changes == {"stem": "cifar"}:
        lines += [
            'model = timm.create_model(config["architecture"], **config["model_args"])',
            f"model.conv1 = nn.Conv2d({in_chans}, model.conv1.out_channels, 3, padding=1, bias=False)  # CIFAR stem",
            "model.maxpool = nn.Identity()",
            'model.load_state_dict(load_file(folder / "model.safetensors"))',
            "model.eval()",
        ]
    else:
        return "\n".join(
            [
                "from pathlib import Path",
                "",
                "from smallvit.models import create_timm_model",
                "",
                f'model = create_timm_model(Path("{folder}")).eval()  # this folder',
            ]
        )
    return "\n".join(lines)


def onnx_snippet(export_dir: Path, exported: dict) -> str:
    """Python that classifies one image with ``model.onnx`` and ONNX Runtime, run from the folder above it."""
    overlay = exported["pretrained_cfg_overlay"]
    channels, size = overlay["input_size"][0], overlay["input_size"][-1]
    mean, std = overlay.get("mean", [0.5] * 3)[:channels], overlay.get("std", [0.5] * 3)[:channels]
    layout = "x.transpose(2, 0, 1)[None]" if channels == 3 else "x[None, None]"
    return "\n".join(
        [
            "import json",
            "",
            "import numpy as np",
            "import onnxruntime",
            "from PIL import Image, ImageOps",
            "",
            f'model = onnxruntime.InferenceSession("{export_dir.name}/{ONNX_FILE}")',
            f'classes = json.load(open("{export_dir.name}/config.json"))["classes"]',
            f'image = Image.open("photo.jpg").convert("{"RGB" if channels == 3 else "L"}")',
            f"image = ImageOps.fit(image, ({size}, {size}))  # centre crop to a square, resize",
            f"x = (np.asarray(image, np.float32) / 255 - np.float32({mean})) / np.float32({std})",
            f'logits = model.run(["{OUTPUT}"], {{"{INPUT}": {layout}}})[0]',
            "print(classes[int(logits.argmax())])",
        ]
    )


def write_model_card(export_dir: Path, run_dir: Path, checkpoint: str = "best") -> Path:
    """Write ``export_dir/README.md`` for the export (``config.json``, ``model.safetensors``, ``model.onnx`` when
    there) of ``run_dir``'s ``checkpoint``; returns its path. May evaluate the run once (see the module docstring)."""
    export_dir, run_dir = Path(export_dir), Path(run_dir)
    exported = json.loads((export_dir / "config.json").read_text())
    config = read_run_config(run_dir)
    summary, data = _read_json(run_dir / "summary.json"), _read_json(run_dir / "data.json")
    classes = exported.get("classes") or data.get("classes") or []
    classified = classes if exported["pretrained_cfg_overlay"].get("num_classes") else []  # [] : a backbone only
    splits = data.get("splits") or summary.get("provenance", {}).get("splits", {})
    lines = _header(export_dir, exported, config, classes, classified, splits)
    lines += _results(run_dir, checkpoint, summary, classified, splits)
    lines += _usage(export_dir, exported)
    lines += _limitations(config, splits, classified)
    path = export_dir / CARD_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def _header(
    export_dir: Path, exported: dict, config: RunConfig, classes: list[str], classified: list[str], splits: dict
) -> list[str]:
    image_size, img_size, patch_size = geometry(config)
    root = Path(config.data.root) if config.data.root else None
    dataset = config.data.dataset + (f" (`{root}`)" if root else "")
    preset = config.model.preset
    family = PRESETS[preset].family if preset in PRESETS else "model"
    shape = f"patch {patch_size}" if family != "cnn" else "a CNN"
    overlay = exported["pretrained_cfg_overlay"]
    lines = [
        f"# {preset}: {len(classified)} classes of {root.name if root else config.data.dataset}"
        if classified
        else f"# {preset} backbone (no classifier: features to fine-tune)",
        "",
        f"A `{preset}` ({exported['architecture']} in timm, {_parameters(export_dir) / 1e6:.1f} M parameters) "
        f"trained from scratch with smallvit. Input: {overlay['input_size'][0]} × {img_size} × {img_size} "
        f"({shape}), normalised with mean {overlay.get('mean')} and std {overlay.get('std')}; images are first resized "
        f"(shorter side) to {image_size} px and centre-cropped, as `smallvit predict` does.",
        "",
        "## Data",
        "",
        f"Dataset: {dataset}. Classes ({len(classes)}): {', '.join(classes)}.",
        "",
        "| split | source | images |",
        "|---|---|---|",
    ]
    lines += [
        f"| {SPLIT_NAMES.get(role, role)} | {split['name']} | {split['images']} |" for role, split in splits.items()
    ]
    changes = recipe_changes(config)
    changed = "none" if changes == [] else ", ".join(f"`{c}`" for c in changes) if changes else "unknown"
    lines += ["", "## Training", "", f"Recipe: `{config.name}`. Settings that differ from the recipe: {changed}.", ""]
    return lines


def _results(run_dir: Path, checkpoint: str, summary: dict, classes: list[str], splits: dict) -> list[str]:
    if not classes:
        return []
    validation, test, weights = exported_accuracy(summary, checkpoint)
    lines = ["## Results", "", f"Exported weights: {weights}.", "", "| split | top-1 |", "|---|---|"]
    lines += [f"| validation | {_percent(validation)} |"]
    if "test" in splits:
        lines += [f"| test | {_percent(test)} |"]
    split = "test" if "test" in splits else "val" if "val" in splits else None
    per_class = class_accuracy(run_dir, checkpoint, split) if split else None
    if per_class is None:
        return lines + [""]
    accuracy, counts = per_class
    if split == "test" and len(set(splits["test"]["per_class"])) > 1:
        balanced = balanced_accuracy_from_per_class(accuracy)
        lines += [f"| test, balanced (mean of the per-class top-1) | {_percent(balanced)} |"]
    train = splits.get("train", {}).get("per_class") or [None] * len(classes)
    lines += [
        "",
        f"Top-1 per class on the {SPLIT_NAMES[split]} split:",
        "",
        f"| class | training images | {SPLIT_NAMES[split]} images | top-1 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {train[i] if train[i] is not None else '–'} | {counts[i]} | {_percent(accuracy.get(name))} |"
        for i, name in enumerate(classes)
    ]
    return lines + [""]


def _usage(export_dir: Path, exported: dict) -> list[str]:
    lines = [
        "## Use",
        "",
        "With smallvit (the same preprocessing as the run's evaluation; prints the top classes, `--csv` writes them):",
        "",
        "```bash",
        f"smallvit predict {export_dir.name} IMAGE_OR_FOLDER... --top-k 3",
        "```",
        "",
        "With timm, run from the folder above this one:",
        "",
        "```python",
        timm_snippet(export_dir, exported),
        "```",
        "",
    ]
    if (export_dir / ONNX_FILE).is_file():
        lines += [
            f"With ONNX Runtime (`{ONNX_FILE}`: input `{INPUT}`, float32 [batch, channels, height, width], normalised; "
            f"output `{OUTPUT}`), without PyTorch:",
            "",
            "```python",
            onnx_snippet(export_dir, exported),
            "```",
            "",
        ]
    return lines


def _limitations(config: RunConfig, splits: dict, classes: list[str]) -> list[str]:
    _, img_size, _ = geometry(config)
    train = splits.get("train", {}).get("images")
    lines = [
        "## Limitations",
        "",
        f"- Trained from scratch on {train if train is not None else 'an unknown number of'} images: expect lower "
        "accuracy on images unlike them (other cameras, lighting, backgrounds, framing).",
        f"- It sees images at {img_size} × {img_size} px: details smaller than that resolution keeps are lost.",
        "- Probabilities are not calibrated: do not read them as the chance of being right without checking on "
        "held-out images.",
    ]
    if classes:
        lines.append(
            f"- It knows only its {len(classes)} classes: every image gets one of them, even an image of none."
        )
    if "test" not in splits:
        lines.append("- No test split: the validation images chose the weights, so their accuracy is optimistic.")
    test = splits.get("test", {}).get("images")
    if test:
        lines.append(
            f"- The test accuracy comes from {test} images: one standard error is up to ±{50 / test**0.5:.1f} points."
        )
    return lines
