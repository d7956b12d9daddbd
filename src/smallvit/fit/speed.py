"""What a run of the chosen model costs on this machine, timed before training: :func:`measure_speed`."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from smallvit.config import RunConfig
from smallvit.data.loader import InMemoryLoader
from smallvit.engine.checkpoint import optimizer_to_flat, prefixed, save_checkpoint
from smallvit.engine.experiment import Experiment, build_experiment
from smallvit.engine.trainer import (
    build_optimizer,
    evaluate,
    objective_weights,
    optimizer_step,
    resolve_precision,
)

MIN_TIMED_STEPS, MAX_TIMED_STEPS = 5, 20


@dataclass(frozen=True)
class Speed:
    """What a run costs, measured by :func:`measure_speed` (seconds)."""

    step_s: float  # one optimizer step (augmentation, forward, backward, update) of a full batch
    steps_per_epoch: int
    eval_s: float  # one pass over the validation split
    test_s: float  # one pass over the test split (0 without one)
    checkpoint_s: float  # writing the last checkpoint, once per epoch
    setup_s: float  # building the experiment from the decoded cache, at the start of training and of the export
    pictures_s: float  # drawing the run's pictures at the end of training (5 figures, 3 validation passes)
    timed_steps: int = 1  # the optimizer steps ``step_s`` is the mean of (after one untimed warm-up step)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(
    exp: Experiment, config: RunConfig, optimizer: torch.optim.Optimizer, seconds: float
) -> tuple[float, int, int]:
    """Mean seconds of an optimizer step on real training batches, after one warm-up step (first-call allocation,
    kernel selection): at least :data:`MIN_TIMED_STEPS` steps, then more until ``seconds`` have passed (at most
    :data:`MAX_TIMED_STEPS`). Returns the mean, the steps timed and the steps of an epoch."""
    tc, model = config.train, exp.model
    precision = resolve_precision(tc.precision, exp.device)
    loader = InMemoryLoader(
        exp.train_images,
        exp.train_labels,
        batch_size=tc.batch_size,
        seed=tc.seed,
        drop_last=len(exp.train_labels) >= tc.batch_size,
    )
    gen = torch.Generator(device=exp.device).manual_seed(tc.seed)
    weights = objective_weights(config, 0.0)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        optimizer_step(exp, model, optimizer, batch, gen, 0, weights, precision)

    step()
    _synchronize(exp.device)
    started, count = time.perf_counter(), 0
    while count < MIN_TIMED_STEPS or (time.perf_counter() - started < seconds and count < MAX_TIMED_STEPS):
        step()
        count += 1
    _synchronize(exp.device)
    return (time.perf_counter() - started) / count, count, len(loader)


def _eval_seconds(exp: Experiment, which: str, batch_size: int) -> float:
    """One pass over the validation or test split, timed on one batch and scaled to the split (0: no such split)."""
    data = exp.val if which == "val" else exp.test
    if data is None:
        return 0.0
    part = replace(data, images=data.images[:batch_size], labels=data.labels[:batch_size])
    timed = replace(exp, val=part) if which == "val" else replace(exp, test=part)
    begun = time.perf_counter()
    evaluate(timed, exp.model, which)
    _synchronize(exp.device)
    return (time.perf_counter() - begun) * len(data.labels) / len(part.labels)


def measure_speed(config: RunConfig, scratch: Path, seconds: float = 2.0) -> Speed:
    """Time what a run of ``config`` spends its time on, with its data already in the decoded cache: building the
    experiment, optimizer steps on real training batches (:func:`_time_steps`), one evaluation batch (scaled to the
    validation and test splits), one checkpoint write and one figure (into ``scratch``, removed after). The modules
    a run imports late (TensorBoard, matplotlib) are imported here, so that their first-import time is spent now,
    not in the planned training."""
    import matplotlib.pyplot  # noqa: F401  (first import: seconds on a busy machine)
    import torch.utils.tensorboard  # noqa: F401

    from smallvit.engine.pictures import draw_confusion_matrix

    started = time.perf_counter()
    exp = build_experiment(config)
    setup_s = time.perf_counter() - started
    optimizer = build_optimizer(exp.model, config)
    step_s, timed_steps, steps_per_epoch = _time_steps(exp, config, optimizer, seconds)
    eval_s, test_s = (_eval_seconds(exp, which, config.train.batch_size) for which in ("val", "test"))
    optim_tensors, optim_meta = optimizer_to_flat(optimizer)
    folder = scratch / ".speed-test"
    folder.mkdir(parents=True, exist_ok=True)
    begun = time.perf_counter()
    tensors = {**prefixed("model.", exp.model.state_dict()), **optim_tensors}
    save_checkpoint(folder / "last.safetensors", tensors, {"optimizer": optim_meta})
    checkpoint_s = time.perf_counter() - begun
    classes = exp.classes
    for _attempt in range(2):  # the second figure is the one timed: the first pays for loading fonts
        begun = time.perf_counter()
        draw_confusion_matrix(torch.zeros(len(classes), len(classes)), classes, folder / "figure.png", "timing")
    figure_s = time.perf_counter() - begun
    shutil.rmtree(folder)
    pictures_s = 5 * figure_s + 3 * eval_s
    return Speed(step_s, steps_per_epoch, eval_s, test_s, checkpoint_s, setup_s, pictures_s, timed_steps)
