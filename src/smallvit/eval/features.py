"""Frozen features of a backbone: the pooled token (CLS, or the mean patch token when there is no CLS).

:func:`cached_features` keeps them in a run folder, so that kNN and linear probes of the same checkpoint extract
them once: a cache file holds a fingerprint of the weights, images and transform it was computed from and is
recomputed when any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from smallvit.data.pipeline import Augmentation


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, augment: Augmentation, batch_size: int = 256) -> Tensor:
    """Pooled features [N, D] (float32) of uint8 ``images`` [N, C, H, W] after the evaluation transform."""
    was_training = backbone.training
    backbone.eval()
    features = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        indices = torch.arange(start, start + len(chunk), device=chunk.device)
        view = augment(chunk, None, indices, None, 0).main
        features.append(backbone(view.images).pooled.float())
    backbone.train(was_training)
    return torch.cat(features)


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
    """Features of ``images`` (see :func:`extract_features`), read from ``path`` when it holds them for these
    weights, images and transform, else extracted and written there. Returns them and whether the cache was used.
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
    from smallvit.eval.classify import load_run, split_role  # the engine imports this module: import at call time

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
