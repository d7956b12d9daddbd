"""Pictures of what a trained model does and learned, drawn into its run folder, with the numbers behind them.

:func:`draw_run_pictures` takes a built experiment and its model (the trainer calls it after its last epoch;
``smallvit plot RUN`` after :func:`smallvit.runs.load_run`) and writes, where they apply:

- ``confusion_matrix.png``: true class (rows) against predicted class, colour = share of the row (a classifier);
- ``worst_val_images.png``: the misclassified validation images whose true class got the lowest probability, with
  their true and predicted classes (a classifier);
- ``position_predictions.png``: for a few validation images, each patch's predicted grid position against its true
  one (``abs_position`` / ``apl`` objectives);
- ``position_embedding_similarity.png``: cosine similarity of every patch's learned position embedding to every
  other (a ViT with a position embedding);
- ``attention_distance.png``: mean attention distance of every head, per block (a ViT);

and ``analysis.json``: the split they read (validation, else test), per-class accuracy, the confusion matrix, the
worst images, attention distances and position accuracy. The weights drawn are the best checkpoint's where the run
has one (as ``smallvit eval`` and ``export`` use), else the model as given.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import EvalSet, Experiment, TrainModel
from smallvit.metrics.classification import confusion_matrix, per_class_accuracy, worst_classified
from smallvit.metrics.spatial import cosine_similarity_matrix, mean_attention_distance, position_accuracy
from smallvit.models.inspection import attention_weights, is_vit, patch_position_embedding, prefix_tokens

POSITION_OBJECTIVES = ("abs_position", "apl")
"""Objectives whose head classifies every patch token into its grid position (logits [B, N, N])."""

WORST_SHOWN = 16
POSITION_IMAGES = 4
ATTENTION_IMAGES = 32


@dataclass
class RunAnalysis:
    """The numbers behind a run's pictures; :meth:`to_json` is what ``analysis.json`` holds."""

    split: str | None  # the split the class pictures read: "val", else "test"; None: the run has neither
    weights: str  # which weights: "best checkpoint (epoch 7)", "last weights", ...
    classes: list[str]
    images: int = 0
    accuracy: float | None = None
    per_class: dict[str, float | None] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    worst: list[dict] = field(default_factory=list)  # {"index", "true", "predicted", "probability"}
    position_accuracy: dict[str, float] = field(default_factory=dict)  # objective -> fraction of patches right
    attention_distance: list[list[float]] = field(default_factory=list)  # [block][head], pixels of the input
    pictures: dict[str, str] = field(default_factory=dict)  # picture name -> file name in the run folder

    def to_json(self) -> dict:
        return asdict(self)


def draw_run_pictures(
    exp: Experiment, model: TrainModel, run_dir: Path, checkpoint: str | None = "best"
) -> RunAnalysis:
    """Draw the pictures that apply to this run into ``run_dir`` and write ``analysis.json``; returns the numbers.

    checkpoint: the run's checkpoint to draw ("best", "last"), loaded into a copy of ``model`` when the run folder
        has it; None: ``model``'s weights as they are (after :func:`smallvit.runs.load_run` loaded them).
    """
    model, weights = _weights(model, run_dir, checkpoint)
    data = exp.val if exp.val is not None else exp.test
    split = "val" if exp.val is not None else ("test" if exp.test is not None else None)
    analysis = RunAnalysis(split=split, weights=weights, classes=list(exp.classes))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if data is not None:
                _classify(exp, model, data, analysis, run_dir)
            if is_vit(model.backbone) and data is not None:
                _attention(exp, model, data, analysis, run_dir)
            similarity_path = _position_embedding(model, run_dir, weights)
            if similarity_path is not None:
                analysis.pictures["position embedding similarity"] = similarity_path.name
    finally:
        model.train(was_training)
    (run_dir / "analysis.json").write_text(json.dumps(analysis.to_json(), indent=2) + "\n")
    return analysis


def _weights(model: TrainModel, run_dir: Path, checkpoint: str | None) -> tuple[TrainModel, str]:
    if checkpoint is None:
        return model, "the loaded weights"
    path = run_dir / "checkpoints" / f"{checkpoint}.safetensors"
    if not path.is_file():
        return model, "last weights"
    tensors, state = load_checkpoint(path, prefix="model.")
    copied = copy.deepcopy(model)
    copied.load_state_dict(tensors)
    return copied, f"{checkpoint} checkpoint (epoch {state.get('epoch')})"


def _batches(exp: Experiment, data: EvalSet, count: int | None = None, batch_size: int = 128):
    """(start, uint8 images, normalised evaluation view) of the first ``count`` images of ``data``."""
    total = len(data.labels) if count is None else min(count, len(data.labels))
    for start in range(0, total, batch_size):
        images = data.images[start : min(start + batch_size, total)]
        indices = torch.arange(start, start + len(images), device=images.device)
        yield start, images, exp.eval_augment(images, None, indices, None, 0).main.images


def _position_heads(model: TrainModel) -> dict[str, torch.nn.Module]:
    return {key: o.head for key, o in zip(model.keys, model.objectives) if o.config.name in POSITION_OBJECTIVES}


@torch.no_grad()
def predict_split(exp: Experiment, model: TrainModel, data: EvalSet) -> Tensor | None:
    """Class probabilities [N, classes] (float32, on the CPU) of every image of ``data`` after the evaluation
    transform, from the model's classifier; None when it has none (a pre-training stage)."""
    head = model.classifier_state()
    if head is None:
        return None
    was_training = model.training
    model.eval()
    probabilities = []
    for _, _, view in _batches(exp, data):
        logits = F.linear(model.backbone(view).pooled.float(), head["head.weight"].float(), head["head.bias"].float())
        probabilities.append(logits.softmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(probabilities)


def class_summary(probabilities: Tensor, labels: Tensor, classes: list[str]) -> dict:
    """Top-1 accuracy, accuracy per class (None for a class without images) and the confusion matrix (rows: true
    class, columns: predicted class) of class ``probabilities`` [N, classes] against ``labels`` [N]."""
    confusion = confusion_matrix(probabilities.argmax(dim=1), labels.cpu(), len(classes))
    per_class = per_class_accuracy(confusion)
    return {
        "accuracy": int(confusion.diagonal().sum()) / max(int(confusion.sum()), 1),
        "per_class": {c: (None if math.isnan(a) else float(a)) for c, a in zip(classes, per_class.tolist())},
        "confusion": confusion.tolist(),
    }


def _classify(exp: Experiment, model: TrainModel, data: EvalSet, analysis: RunAnalysis, run_dir: Path) -> None:
    """Class pictures from the classifier's probabilities, position pictures from the position heads."""
    labels = data.labels.cpu()
    name = "validation" if analysis.split == "val" else "test"
    analysis.images = len(labels)
    probs = predict_split(exp, model, data)
    if probs is not None:
        summary = class_summary(probs, labels, analysis.classes)
        analysis.accuracy, analysis.per_class, analysis.confusion = (
            summary["accuracy"],
            summary["per_class"],
            summary["confusion"],
        )
        worst = worst_classified(probs, labels, WORST_SHOWN)
        analysis.worst = [
            {
                "index": int(i),
                "true": analysis.classes[int(labels[i])],
                "predicted": analysis.classes[int(probs[i].argmax())],
                "probability": float(probs[i].max()),
                "true_probability": float(probs[i, labels[i]]),
            }
            for i in worst
        ]
        title = (
            f"Confusion matrix, {name} split ({len(labels)} images, top-1 {analysis.accuracy:.1%})\n{analysis.weights}"
        )
        path = draw_confusion_matrix(
            torch.tensor(analysis.confusion), analysis.classes, run_dir / "confusion_matrix.png", title
        )
        analysis.pictures["confusion matrix"] = path.name
        images = data.images[worst.to(data.images.device)].cpu() if len(worst) else data.images[:0].cpu()
        path = draw_image_grid(
            images,
            [f"true: {w['true']}\npred: {w['predicted']} ({w['probability']:.0%})" for w in analysis.worst],
            run_dir / "worst_val_images.png",
            f"Worst-classified {name} images: lowest probability of the true class\n{analysis.weights}",
            empty=f"no {name} image is misclassified",
        )
        analysis.pictures["worst-classified images"] = path.name
    position_heads = _position_heads(model) if model.backbone.has_patch_tokens else {}
    if not position_heads:
        return
    placed, shown = {key: [] for key in position_heads}, {}
    for start, _, view in _batches(exp, data):
        tokens = model.backbone(view).patch_tokens
        for key, position_head in position_heads.items():
            position_logits = position_head(tokens).float()
            placed[key].append(position_accuracy(position_logits).cpu())
            if start == 0:
                shown[key] = position_logits[:POSITION_IMAGES].argmax(dim=-1).cpu()
    analysis.position_accuracy = {key: float(torch.cat(values).mean()) for key, values in placed.items()}
    key = next(iter(placed))
    path = draw_position_predictions(
        data.images[:POSITION_IMAGES].cpu(),
        shown[key],
        model.backbone.grid,
        run_dir / "position_predictions.png",
        f"{key}: predicted vs true grid position of every patch, {name} images "
        f"({analysis.position_accuracy[key]:.0%} of patches placed right over {len(labels)} images)",
    )
    analysis.pictures["position predictions"] = path.name


def _attention(exp: Experiment, model: TrainModel, data: EvalSet, analysis: RunAnalysis, run_dir: Path) -> None:
    backbone = model.backbone
    per_block: list[Tensor] = []
    count = 0
    for _, images, view in _batches(exp, data, ATTENTION_IMAGES):
        maps = attention_weights(backbone, view)
        distances = [
            mean_attention_distance(m, backbone.grid, backbone.patch_size, prefix_tokens(backbone)) for m in maps
        ]
        per_block = (
            [d * len(images) for d in distances]
            if not per_block
            else [total + d * len(images) for total, d in zip(per_block, distances)]
        )
        count += len(images)
    distances = torch.stack(per_block) / count  # [blocks, heads]
    analysis.attention_distance = distances.tolist()
    path = draw_attention_distance(
        distances,
        run_dir / "attention_distance.png",
        f"Mean attention distance per block ({count} {'validation' if analysis.split == 'val' else 'test'} images, "
        f"input {backbone.img_size} px, patch {backbone.patch_size} px)",
        max_distance=math.hypot(backbone.img_size, backbone.img_size),
    )
    analysis.pictures["mean attention distance"] = path.name


def _position_embedding(model: TrainModel, run_dir: Path, weights: str) -> Path | None:
    embedding = patch_position_embedding(model.backbone)
    if embedding is None:
        return None
    return draw_position_similarity(
        cosine_similarity_matrix(embedding),
        model.backbone.grid,
        run_dir / "position_embedding_similarity.png",
        f"Cosine similarity of the learned position embeddings ({weights})\n"
        "tile (row, column): that patch's similarity to every patch of the grid",
    )


# ---------------------------------------------------------------- drawing: numbers and images in, a PNG out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _as_hwc(image: Tensor) -> np.ndarray:
    """uint8 [C, H, W] as an array imshow draws: [H, W, 3] or [H, W] (grayscale)."""
    array = image.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def draw_confusion_matrix(confusion: Tensor, classes: list[str], path: Path, title: str) -> Path:
    """Rows: true class, columns: predicted class; colour: share of the row, numbers: counts (up to 25 classes)."""
    plt = _pyplot()
    count = len(classes)
    rows = confusion.double().sum(dim=1, keepdim=True).clamp_min(1)
    side = max(5.0, 0.45 * count + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    shown = ax.imshow((confusion.double() / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if count <= 25:
        for t in range(count):
            for p in range(count):
                value = int(confusion[t, p])
                if value:
                    share = value / float(rows[t])
                    ax.text(p, t, str(value), ha="center", va="center", color="white" if share > 0.5 else "black")
    ax.set_xticks(range(count), classes, rotation=45, ha="right")
    ax.set_yticks(range(count), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _save(fig, path)


def draw_image_grid(images: Tensor, captions: list[str], path: Path, title: str, empty: str = "") -> Path:
    """uint8 images [N, C, H, W] in a grid of up to 4 columns, each with its caption; ``empty`` when N is 0."""
    plt = _pyplot()
    count = len(images)
    columns = min(4, max(count, 1))
    rows = max(1, math.ceil(count / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(max(2.6 * columns, 7.0), 2.9 * rows + 0.5), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(_as_hwc(image), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=9)
    if count == 0:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=11)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def draw_position_predictions(images: Tensor, predicted: Tensor, grid: tuple[int, int], path: Path, title: str) -> Path:
    """For each image, each patch's predicted grid index (``predicted`` [B, N]) against its true one: a green dot
    where it is right, a red arrow from the patch's true place to the predicted one where it is wrong."""
    plt = _pyplot()
    height, width = grid
    fig, axes = plt.subplots(1, len(images), figsize=(3.4 * len(images), 4.2), squeeze=False, layout="constrained")
    centre_y, centre_x = np.divmod(np.arange(height * width), width)
    for ax, image, guesses in zip(axes.flat, images, predicted):
        ax.imshow(_as_hwc(image), cmap="gray" if image.shape[0] == 1 else None, extent=(0, width, height, 0))
        for line in range(1, height):
            ax.axhline(line, color="white", linewidth=0.5, alpha=0.6)
        for line in range(1, width):
            ax.axvline(line, color="white", linewidth=0.5, alpha=0.6)
        guess_y, guess_x = np.divmod(guesses.numpy(), width)
        right = guesses.numpy() == np.arange(height * width)
        ax.scatter(centre_x[right] + 0.5, centre_y[right] + 0.5, s=12, color="lime", edgecolors="black", linewidths=0.4)
        for t in np.flatnonzero(~right):
            ax.annotate(
                "",
                xy=(guess_x[t] + 0.5, guess_y[t] + 0.5),
                xytext=(centre_x[t] + 0.5, centre_y[t] + 0.5),
                arrowprops=dict(arrowstyle="->", color="red", linewidth=1.0),
            )
        ax.set_title(f"{int(right.sum())}/{height * width} patches right", fontsize=9)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    legend = "green: predicted where it is; red arrow: from its true place to the predicted one"
    fig.suptitle(f"{title}\n{legend}", fontsize=9)
    return _save(fig, path)


def draw_position_similarity(similarity: Tensor, grid: tuple[int, int], path: Path, title: str) -> Path:
    """An h x w mosaic of h x w tiles: tile (i, j) is the similarity of patch (i, j)'s embedding to every patch."""
    plt = _pyplot()
    height, width = grid
    tiles = similarity.reshape(height, width, height, width).numpy()
    mosaic = np.full((height * (height + 1) - 1, width * (width + 1) - 1), np.nan)
    for i in range(height):
        for j in range(width):
            top, left = i * (height + 1), j * (width + 1)
            mosaic[top : top + height, left : left + width] = tiles[i, j]
    fig, ax = plt.subplots(figsize=(7.5, 7), layout="constrained")
    shown = ax.imshow(np.ma.masked_invalid(mosaic), cmap="viridis", vmin=-1, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_xticks([j * (width + 1) + (width - 1) / 2 for j in range(width)], [str(j) for j in range(width)])
    ax.set_yticks([i * (height + 1) + (height - 1) / 2 for i in range(height)], [str(i) for i in range(height)])
    ax.set_xlabel("patch column")
    ax.set_ylabel("patch row")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def draw_attention_distance(distances: Tensor, path: Path, title: str, max_distance: float) -> Path:
    """Each head's mean attention distance (dots) and their mean (line) for every block; ``distances`` [blocks,
    heads] in pixels."""
    plt = _pyplot()
    blocks, heads = distances.shape
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    ax.plot(range(1, blocks + 1), distances.mean(dim=1).numpy(), "-", color="tab:orange", label="mean over heads")
    for block in range(blocks):
        label = f"each of the {heads} heads" if block == 0 else None
        ax.scatter(
            [block + 1] * heads, distances[block].numpy(), s=16, color="tab:blue", alpha=0.6, label=label, zorder=3
        )
    ax.set_xticks(range(1, blocks + 1))
    ax.set_xlabel("block")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, max_distance / 2)
    ax.legend(loc="upper left")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
