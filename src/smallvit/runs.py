"""A finished run folder: load it, evaluate it, probe its frozen features, export it.

Everything here reads a run folder and rebuilds the experiment it trained (``config.yaml`` → :func:`build_experiment`),
so it sits above the engine; the metrics themselves are the pure functions of :mod:`smallvit.metrics`. The features
of a checkpoint are extracted once and cached in ``<run>/features/`` for every kNN and linear probe of it, and each
probe's result is appended to ``<run>/evaluations.jsonl``.

Example::

    metrics = evaluate_run(Path("runs/quickstart-20261125-120000"), split="test")  # {"test/supervised/acc1": ...}
    report = evaluation_report(Path("runs/quickstart-20261125-120000"))  # the metrics, per class, confusion matrix
    result = knn_evaluate_run(Path("runs/idmm-pretrain-20261125-120000"))  # {"acc1": ..., "split": "test", ...}
    result = linear_probe_run(Path("runs/idmm-pretrain-20261125-120000"))  # {"acc1": ..., "weight_decay": ...}
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from smallvit.data import get_dataset_info
from smallvit.data.pipeline import Augmentation
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import Experiment, build_experiment, read_run_config
from smallvit.engine.pictures import class_summary, predict_split
from smallvit.engine.trainer import evaluate
from smallvit.errors import SmallViTError
from smallvit.metrics import extract_features, knn_accuracy, linear_probe_accuracy
from smallvit.models import export_timm

# ---------------------------------------------------------------- load, evaluate, export


def split_role(split: str | None) -> str:
    """Which of a run's evaluated sets ``split`` names: ``val``, or ``test`` (default; any other dataset split is
    evaluated in the test set's place)."""
    return "val" if split == "val" else "test"


def load_run(run_dir: Path, checkpoint: str = "best", split: str | None = None) -> Experiment:
    """Rebuild a run's experiment from its ``config.yaml`` and load a checkpoint's weights into it.

    ``split``: ``val``, ``test`` (the run's own splits) or another split of its dataset, loaded as its test set.
    """
    if checkpoint not in ("best", "last"):
        raise SmallViTError(f"--checkpoint {checkpoint!r} is not valid: use best or last")
    config = read_run_config(run_dir)
    if split not in (None, "val", "test"):
        config = config.model_copy(update={"data": config.data.model_copy(update={"test_split": split})})
    path = run_dir / "checkpoints" / f"{checkpoint}.safetensors"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "checkpoints" / "last.safetensors"
    experiment = build_experiment(config, load_init=False)
    tensors, _ = load_checkpoint(path, prefix="model.")
    experiment.model.load_state_dict(tensors)
    return experiment


def evaluate_run(run_dir: Path, split: str | None = None, checkpoint: str = "best") -> dict[str, float]:
    """Every objective's evaluation metrics (top-1/top-5 for a classifier) of a run on a split (default: test)."""
    experiment = load_run(run_dir, checkpoint, split)
    return evaluate(experiment, experiment.model, split_role(split), prefix=split or "test")


def check_finite(metrics: dict[str, float]) -> None:
    """Refuse metrics that are NaN or infinite: the evaluated checkpoint's weights are broken."""
    bad = [key for key, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise SmallViTError(f"{bad[0]} is not finite: the checkpoint's weights are broken; evaluate another checkpoint")


def evaluation_report(run_dir: Path, split: str | None = None, checkpoint: str = "best") -> dict:
    """:func:`evaluate_run`'s metrics (checked finite) and, for a classifier, each class's image count and accuracy
    and the confusion matrix of the same split, from one load of the run: what ``smallvit eval --json`` prints."""
    experiment = load_run(run_dir, checkpoint, split)
    role = split_role(split)
    metrics = evaluate(experiment, experiment.model, role, prefix=split or "test")
    check_finite(metrics)
    data = experiment.eval_set(role)
    report = {"run": str(run_dir), "split": split or "test", "checkpoint": checkpoint, "metrics": metrics}
    probabilities = predict_split(experiment, experiment.model, data)
    if probabilities is not None:
        summary = class_summary(probabilities, data.labels, experiment.classes)
        report.update(
            classes=experiment.classes,
            images_per_class=[sum(row) for row in summary["confusion"]],
            per_class_accuracy=summary["per_class"],
            confusion_matrix=summary["confusion"],
            confusion_matrix_axes="rows: true class, columns: predicted class (in the order of classes)",
        )
    return report


def export_run(run_dir: Path, output: Path, checkpoint: str = "best") -> Path:
    """Write ``model.safetensors`` + ``config.json`` loadable by ``timm.create_model``; objective heads dropped."""
    if output.exists() and not output.is_dir():
        raise SmallViTError(f"--output {output} is a file: give a folder for model.safetensors and config.json")
    experiment = load_run(run_dir, checkpoint)
    model = experiment.model
    info = get_dataset_info(experiment.config.data.dataset)
    extra = {"classes": experiment.classes, "source_run": str(run_dir)}
    return export_timm(model.backbone, output, head=model.classifier_state(), mean=info.mean, std=info.std, extra=extra)


# ---------------------------------------------------------------- frozen features, cached in the run folder


def fingerprint(backbone: nn.Module, images: Tensor, augment: Augmentation) -> str:
    """A digest of the backbone's weights and architecture, the images, and what the transform makes of them."""
    digest = hashlib.blake2b(digest_size=16)

    def add(tensor: Tensor) -> None:
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))

    digest.update(json.dumps(getattr(backbone, "model_args", {}), sort_keys=True, default=str).encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        add(tensor)
    add(images)
    probe = images[:1]
    add(augment(probe, None, torch.zeros(len(probe), dtype=torch.long, device=probe.device), None, 0).main.images)
    return digest.hexdigest()


def cached_features(
    path: Path, backbone: nn.Module, images: Tensor, augment: Augmentation, batch_size: int = 256
) -> tuple[Tensor, bool]:
    """Features of ``images`` (see :func:`~smallvit.metrics.extract_features`), read from ``path`` when it holds them
    for these weights, images and transform, else extracted and written there. Returns them and whether the cache
    was used.
    """
    key = fingerprint(backbone, images, augment)
    if path.is_file():
        with safe_open(str(path), framework="pt") as cache:
            if (cache.metadata() or {}).get("fingerprint") == key:
                return cache.get_tensor("features").to(images.device), True
    features = extract_features(backbone, images, augment, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": features.cpu().contiguous()}, str(path), metadata={"fingerprint": key})
    return features, False


@dataclass
class RunFeatures:
    """Frozen features of a run's training images (the bank / probe training set) and of a query split."""

    train: Tensor
    train_labels: Tensor
    query: Tensor
    query_labels: Tensor
    num_classes: int
    split: str
    from_cache: bool


def run_features(
    run_dir: Path, checkpoint: str = "best", split: str | None = None, batch_size: int = 256
) -> RunFeatures:
    """Features of a run's training set (its subset, if it trained on one) and of ``split`` (``val``, ``test`` —
    the default — or another split of its dataset), at the run's input size, cached in ``<run>/features/``.
    """
    experiment = load_run(run_dir, checkpoint, split)
    backbone = experiment.model.backbone
    query_set = experiment.eval_set(split_role(split))
    split = split or "test"
    folder, augment = run_dir / "features", experiment.eval_augment
    train, train_cached = cached_features(
        folder / f"{checkpoint}-train.safetensors", backbone, experiment.train_images, augment, batch_size
    )
    query, query_cached = cached_features(
        folder / f"{checkpoint}-{split}.safetensors", backbone, query_set.images, augment, batch_size
    )
    return RunFeatures(
        train=train,
        train_labels=experiment.train_labels,
        query=query,
        query_labels=query_set.labels,
        num_classes=len(experiment.classes),
        split=split,
        from_cache=train_cached and query_cached,
    )


def log_evaluation(run_dir: Path, record: dict) -> None:
    """Append one evaluation's settings and results to ``<run>/evaluations.jsonl``, with the time it finished."""
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    with open(run_dir / "evaluations.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------- kNN and linear probe of a run


def knn_evaluate_run(
    run_dir: Path, split: str | None = None, checkpoint: str = "best", k: int = 20, temperature: float = 0.07
) -> dict[str, float | int | str]:
    """Weighted kNN top-1 (:func:`~smallvit.metrics.knn_accuracy`) of a run's frozen features: its training set is
    the bank, ``split`` the queries. Features are cached in the run folder; the result is also appended to
    ``<run>/evaluations.jsonl``.
    """
    features = run_features(run_dir, checkpoint, split)
    accuracy = knn_accuracy(
        features.train,
        features.train_labels,
        features.query,
        features.query_labels,
        features.num_classes,
        k=k,
        temperature=temperature,
    )
    result = {"kind": "knn", "checkpoint": checkpoint, "split": features.split, "k": k, "temperature": temperature}
    result["acc1"] = accuracy
    log_evaluation(run_dir, result)
    return result


def linear_probe_run(
    run_dir: Path, split: str | None = None, checkpoint: str = "best", weight_decay: float | None = None
) -> dict[str, float | str | None]:
    """Linear-probe top-1 (:func:`~smallvit.metrics.linear_probe_accuracy`) of a run's frozen features: fitted on
    its training set, evaluated on ``split``. Features are cached in the run folder; the result is also appended to
    ``<run>/evaluations.jsonl``.
    """
    features = run_features(run_dir, checkpoint, split)
    accuracy, chosen = linear_probe_accuracy(
        features.train,
        features.train_labels,
        features.query,
        features.query_labels,
        features.num_classes,
        weight_decay,
    )
    result = {"kind": "linear", "checkpoint": checkpoint, "split": features.split, "weight_decay": chosen}
    result["acc1"] = accuracy
    log_evaluation(run_dir, result)
    return result
