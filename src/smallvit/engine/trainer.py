"""The one training loop every recipe runs: set-up, loop, evaluation, checkpoint — in that order.

Objectives, schedules and augmentation are data handed to it (see :mod:`smallvit.engine.experiment`); the loop
has no per-method cases. Distributed training (``torchrun``) is the few lines marked ``# distributed``.
"""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from rich.console import Console
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import Tensor

import smallvit
from smallvit.config import RunConfig, distributed_env
from smallvit.data.batch import Batch
from smallvit.data.loader import InMemoryLoader
from smallvit.engine.checkpoint import (
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    restore_rng,
    rng_tensors,
    save_checkpoint,
    usable_checkpoint,
)
from smallvit.engine.experiment import EvalSet, Experiment, build_experiment, write_json
from smallvit.engine.logging import LogWindow, MetricsLog, headline, make_progress, plot_curves, read_metrics
from smallvit.engine.memory import keep_freed_memory
from smallvit.engine.pictures import draw_run_pictures
from smallvit.engine.schedules import warmup_cosine
from smallvit.errors import ConfigError, SmallViTError
from smallvit.metrics import extract_features, knn_accuracy, train_linear_probe
from smallvit.models import no_weight_decay_names


@dataclass
class Distributed:
    """Rank and world size; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:  # distributed
    launch = distributed_env()
    if not launch.distributed:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank)
    return Distributed(dist.get_rank(), dist.get_world_size())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def parameter_groups(model: torch.nn.Module, config: RunConfig) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, position embeddings and tokens. With ``optim.layer_decay`` d,
    layer-wise lr decay as BEiT (Bao et al., ICLR 2022) and MAE fine-tune: the objectives' heads at scale 1, the last
    block at d, each block below one more factor d, the stem (patch embedding, tokens) lowest. timm's
    ``param_groups_layer_decay`` groups the backbone (last layer at 1, as it has no head here), one factor d lower."""
    optim = config.optim
    if optim.layer_decay is not None:
        inner = model.backbone.model
        groups = param_groups_layer_decay(
            inner, optim.weight_decay, no_weight_decay_names(inner), layer_decay=optim.layer_decay
        )
        for group in groups:
            group["lr_scale"] *= optim.layer_decay
        heads = [p for p in model.objectives.parameters() if p.requires_grad]
        return groups + [
            {"params": [p for p in heads if p.ndim > 1], "weight_decay": optim.weight_decay, "lr_scale": 1.0},
            {"params": [p for p in heads if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": 1.0},
        ]
    skip = {f"backbone.{n}" for n in no_weight_decay_names(model.backbone)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`parameter_groups`; fused on CUDA, foreach on the CPU."""
    groups = [g for g in parameter_groups(model, config) if g["params"]]
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        groups, lr=config.optim.lr, betas=config.optim.betas, fused=on_cuda or None, foreach=None if on_cuda else True
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 where it pays: a CUDA GPU with bf16, or a CPU with AMX tiles (measured: on an AVX-512
    CPU without AMX, bf16 autocast ran at 0.85x fp32; see benchmarks/results.jsonl), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if "amx_bf16" in Path("/proc/cpuinfo").read_text() else "fp32"
    except OSError:
        return "fp32"


def autocast(device: torch.device, precision: str):
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def objective_weights(config: RunConfig, epoch: float) -> list[float]:
    """Each objective's weight at ``epoch``: its run-level weight times its weight schedule's factor."""
    return [w.weight * w.weight_schedule.factor(epoch, config.train.epochs) for w in config.objective_weights]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


@torch.no_grad()
def evaluate(
    exp: Experiment, model: torch.nn.Module, split: str = "val", prefix: str | None = None
) -> dict[str, float]:
    """Every objective's loss and metrics on the ``val`` or ``test`` split, averaged over images, keyed
    ``<prefix>/<objective>/<metric>`` (prefix: the split's name).

    Objectives that draw at random (MAE masks, sampled relation pairs) draw the same at every evaluation, from a
    fixed seed on a forked RNG, so evaluation losses compare across epochs and training's random stream is untouched.
    """
    with torch.random.fork_rng(devices=[exp.device] if exp.device.type == "cuda" else []):
        torch.manual_seed(0)
        return _evaluate(exp, model, exp.eval_set(split), prefix or split)


def _evaluate(exp: Experiment, model: torch.nn.Module, data: EvalSet, prefix: str) -> dict[str, float]:
    config = exp.config
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    batch_size = config.train.batch_size
    weights = objective_weights(config, config.train.epochs)
    precision = resolve_precision(config.train.precision, exp.device)
    for start in range(0, len(data.labels), batch_size):
        images = data.images[start : start + batch_size]
        labels = data.labels[start : start + batch_size]
        indices = torch.arange(start, start + len(labels), device=exp.device)
        main = exp.eval_augment(images, labels, indices, None, 0).main
        batch = Batch({name: main for name in config.augment})
        with autocast(exp.device, precision):
            loss, metrics = model(batch, weights, training=False)
        if loss is not None:
            metrics["loss"] = loss
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(labels)
        count += len(labels)
    model.train()
    return {f"{prefix}/{key}": value / count for key, value in sums.items()}


def online_knn(exp: Experiment, backbone: torch.nn.Module) -> dict[str, float]:
    """Weighted kNN top-1 (k=20, T=0.07) of the frozen validation features, logged as representation quality."""
    kwargs = dict(augment=exp.eval_augment, batch_size=exp.config.train.batch_size)
    train_features = extract_features(backbone, exp.train_images, **kwargs)
    val_features = extract_features(backbone, exp.val.images, **kwargs)
    accuracy = knn_accuracy(train_features, exp.train_labels, val_features, exp.val.labels, len(exp.classes))
    return {"val/knn/acc1": accuracy}


def init_head_from_probe(exp: Experiment) -> float:
    """Set the classifier to a linear probe of the backbone's frozen training features (LP-FT: Kumar et al., "Fine-
    Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022): its L2 strength is
    chosen on a held-out fifth of the training set. Returns the probe's training accuracy."""
    head = exp.model.classifier_state()
    if head is None:
        raise ConfigError("model.head_init=linear_probe needs a classifier: add the supervised objective")
    features = extract_features(exp.model.backbone, exp.train_images, exp.eval_augment, exp.config.train.batch_size)
    probe = train_linear_probe(features, exp.train_labels, len(exp.classes))
    weight, bias = probe.folded()
    with torch.no_grad():
        head["head.weight"].copy_(weight)
        head["head.bias"].copy_(bias)
    return probe.accuracy(features, exp.train_labels)


class NonFiniteLoss(SmallViTError):
    """The loss stopped being a finite number; the run stops rather than train (and checkpoint) a NaN model."""


def optimizer_step(
    exp: Experiment,
    train_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple,
    gen: torch.Generator,
    epoch: int,
    weights: list[float],
    precision: str,
) -> tuple[dict[str, Tensor], bool]:
    """One optimizer step on a uint8 batch: augment, forward, backward per micro-batch, clip, update.

    Returns the step's metrics (``loss`` and every objective's, means over micro-batches weighted by their images)
    and whether the loss was finite; when it was not, the parameters are left as they were.
    """
    config = exp.config
    images, labels, indices = data
    micro = -(-len(images) // config.train.accumulation)
    totals: dict[str, Tensor] = {}
    for start in range(0, len(images), micro):
        chunk = slice(start, start + micro)
        share = len(indices[chunk]) / len(images)
        batch = exp.augment(images[chunk], labels[chunk], indices[chunk], gen, epoch)
        with autocast(exp.device, precision):
            loss, metrics = train_model(batch, weights, training=True, epoch=epoch)
        (loss * share).backward()
        for key, value in {"loss": loss, **metrics}.items():
            value = value.detach() if torch.is_tensor(value) else torch.tensor(float(value))
            totals[key] = totals.get(key, 0.0) + value * share
    finite = bool(torch.isfinite(totals["loss"]))  # the step's one device sync, as torch.amp.GradScaler.step makes
    if dist.is_initialized() and dist.get_world_size() > 1:  # distributed: every rank skips (or stops) together
        flag = torch.tensor([float(finite)], device=totals["loss"].device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
    if finite:
        if config.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(exp.model.parameters(), config.optim.clip_grad)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals, finite


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def _steady_throughput(rates: list[float]) -> float:
    """Mean training images/s over the log windows, leaving out the first (warm-up, allocation, compilation)."""
    steady = rates[1:] or rates
    return sum(steady) / len(steady)


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop records a crashed run wrote after its last checkpoint, and the test record of a run that
    ended there (the resumed run evaluates the test split once, at its own end)."""
    path = run_dir / "metrics.jsonl"
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step and r.get("kind") != "test"]
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop after the current step (a second signal stops at once)."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(SmallViTError):
    """The run was stopped by a signal after writing a checkpoint it can resume from."""


def _signal_name(stop: StopRequest) -> str:
    return f"signal {stop.signal}" if stop.signal is not None else "a signal to another rank"


def _any_rank(ddp: Distributed, flag: bool, device: torch.device) -> bool:  # distributed
    """Whether ``flag`` holds on any rank, so that all stop at the same step; every rank must call it."""
    if ddp.world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def rank_streams(ddp: Distributed, gen: torch.Generator | None) -> dict[str, Tensor]:
    """Every rank's random streams — its global RNGs (drop path), and with ``gen`` its augmentation generator — for
    the checkpoint that rank 0 writes: rank 0's as ``rng.*`` and ``gen.rank0``, rank r's as ``rng.rank<r>.*`` and
    ``gen.rank<r>``, so that a resumed run continues each rank's stream. Every rank must call it."""
    own = {**rng_tensors(), **({"gen": gen.get_state()} if gen is not None else {})}
    states = [own]
    if ddp.world_size > 1:  # distributed
        states = [None] * ddp.world_size
        dist.all_gather_object(states, {key: value.cpu() for key, value in own.items()})
    streams = {}
    for rank, state in enumerate(states):
        for key, value in state.items():
            if key == "gen":
                key = f"gen.rank{rank}"
            elif rank:
                key = key.replace("rng.", f"rng.rank{rank}.", 1)
            streams[key] = value
    return streams


def _own_streams(tensors: dict[str, Tensor], rank: int) -> dict[str, Tensor]:
    """Rank ``rank``'s global RNG states in a checkpoint, keyed as :func:`restore_rng` reads them (rank 0's when the
    checkpoint has none for it: written by fewer processes, or before they were kept per rank)."""
    prefix = f"rng.rank{rank}."
    own = {"rng." + key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    return own or tensors


def _nonfinite_message(metrics: dict, step: int, checkpoint: Path, weights: dict[str, float]) -> str:
    """Names the objectives whose loss, or loss times weight (``weights``: objective key → weight), is not finite."""
    losses = {key: metrics[f"{key}/loss"] for key in weights if f"{key}/loss" in metrics}
    bad = [key for key, loss in losses.items() if not torch.isfinite(weights[key] * torch.as_tensor(loss)).all()]
    if bad or not torch.isfinite(torch.as_tensor(metrics["loss"])).all():
        where = f"objective: {', '.join(bad) or 'total'}"
    else:
        where = "on another rank"  # distributed: the ranks stop together
    last = f"the last good checkpoint is {checkpoint}" if checkpoint.is_file() else "no checkpoint was written yet"
    return (
        f"the loss is not finite at step {step} ({where}); {last}: lower optim.lr or "
        "the objective weights, or set train.skip_nonfinite to skip a few bad steps"
    )


def _save(path: Path, model: torch.nn.Module, tensors: dict[str, Tensor], state: dict) -> None:
    """Write a checkpoint, but never one of a model with non-finite weights."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLoss(
            f"the weights became non-finite ({bad[0]} and {len(bad) - 1} more) at step {state['step']}, so "
            f"{path.name} was not written: lower optim.lr or set optim.clip_grad"
        )
    save_checkpoint(path, tensors, state)


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
) -> dict:
    """Train one stage into ``run_dir``; returns the summary written to ``summary.json``.

    With ``train.time_limit_s``, the loop stops at the end of the step at which its training time (steps, validation,
    checkpoints; counted across resumes, not loading the data or the final test) reaches the limit, then evaluates on
    validation, writes the last checkpoint and the summary (``time_limit.stopped``, ``epochs_run`` of the planned
    ``epochs``, ``steps``, ``training_s``). Resuming a run that has spent its limit is an error: raise or remove the
    limit in its config first.
    """
    # ---- set-up
    console = console or Console()
    commit = git_commit(console)  # now, not at the end: the checkout may move on while the run trains
    keep_freed_memory()
    ddp = init_distributed()
    seed_everything(config.train.seed + ddp.rank)
    exp = build_experiment(config)
    model, device, tc = exp.model, exp.device, config.train
    precision = resolve_precision(tc.precision, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ddp.is_main:
        if not resume:  # a run restarted from scratch (killed before its first checkpoint) keeps no stale records
            _truncate_metrics(run_dir, 0)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if exp.subset_indices is not None:
            write_json(run_dir / "subset_indices.json", {"train": exp.subset_indices.tolist()})
        write_json(run_dir / "data.json", {"classes": exp.classes, "splits": exp.splits})
        unreadable = sorted({name for split in exp.splits.values() for name in split["skipped_files"]})
        if unreadable:
            (run_dir / "skipped_files.txt").write_text("\n".join(unreadable) + "\n")
            console.print(f"skipped {len(unreadable)} undecodable image(s), listed in {run_dir / 'skipped_files.txt'}")
        if exp.init_report is not None:
            console.print(f"initialised from {config.model.init_from}: {exp.init_report.summary()}")
    probe_head = config.model.head_init == "linear_probe" and config.model.init_from and not resume
    if probe_head:
        accuracy = init_head_from_probe(exp)
        if ddp.is_main:
            console.print(f"classifier initialised as a linear probe of the loaded features (train acc {accuracy:.4f})")
    optimizer = build_optimizer(model, config)
    ema = ModelEmaV3(model, decay=tc.ema_decay) if tc.ema_decay else None
    if tc.compile:
        model.backbone.compile()
    train_model = model
    if ddp.world_size > 1:  # distributed
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    loader = InMemoryLoader(
        exp.train_images,
        exp.train_labels,
        batch_size=tc.batch_size,
        seed=tc.seed,
        drop_last=len(exp.train_labels) >= tc.batch_size * ddp.world_size,
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    steps_per_epoch = len(loader)
    checkpoints = run_dir / "checkpoints"
    progress_state = {"epoch": 0, "step": 0, "batch": 0, "best": None, "throughput": [], "skipped": 0, "train_s": 0.0}
    gen = torch.Generator(device=device)
    gen_state = None
    if resume:
        path, state = usable_checkpoint(checkpoints, console if ddp.is_main else None)
        model.load_state_dict(load_checkpoint(path, prefix="model.")[0])
        if ema is not None:
            ema.module.load_state_dict(load_checkpoint(path, prefix="ema.")[0])
        tensors = load_checkpoint(path)[0]
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
        restore_rng(_own_streams(tensors, ddp.rank))
        gen_state = tensors.get(f"gen.rank{ddp.rank}")
        progress_state.update({k: state[k] for k in progress_state if k in state})
        if tc.time_limit_s is not None and progress_state["train_s"] >= tc.time_limit_s:
            raise SmallViTError(
                f"{run_dir} has trained {progress_state['train_s']:.1f} s, its time limit train.time_limit_s="
                f"{tc.time_limit_s:g}: to train on, raise or remove train.time_limit_s in the run's config.yaml "
                "(a multi-stage run: its recipe.yaml)"
            )
        if ddp.is_main:
            _truncate_metrics(run_dir, progress_state["step"])
            where = f"epoch {progress_state['epoch'] + 1}, batch {progress_state['batch']}"
            console.print(f"resuming {run_dir} at {where} (step {progress_state['step']})")
    step, best, throughput, skipped, spent_s = (
        progress_state[k] for k in ("step", "best", "throughput", "skipped", "train_s")
    )
    log = MetricsLog(run_dir, enabled=ddp.is_main)
    warmup = config.optim.warmup(tc.epochs)
    started = time.perf_counter()
    eval_metrics: dict[str, float] = {}
    out_of_time = False

    def training_s() -> float:
        """Seconds of training so far, earlier runs of a resumed run included."""
        return spent_s + time.perf_counter() - started

    def checkpoint_state(
        epoch: int, batch: int, streams: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
        """(weights only, everything a resume needs, JSON state) at ``batch`` of ``epoch`` (0: its start);
        ``streams``: every rank's random streams (:func:`rank_streams`)."""
        weights_only = prefixed("model.", model.state_dict())
        if ema is not None:
            weights_only.update(prefixed("ema.", ema.module.state_dict()))
        optim_tensors, optim_meta = optimizer_to_flat(optimizer)
        state = {
            "epoch": epoch,
            "batch": batch,
            "step": step,
            "best": best,
            "best_metric": tc.best_metric,
            "throughput": throughput,
            "skipped": skipped,
            "train_s": training_s(),
            "metrics": eval_metrics,
            "optimizer": optim_meta,
        }
        return weights_only, {**weights_only, **optim_tensors, **streams}, state

    if probe_head and ddp.is_main and exp.val is not None and tc.best_metric:
        # LP-FT: the probe's own model is the first candidate for the best checkpoint, so the checkpoint chosen on
        # validation is never worse there than the linear probe that fine-tuning started from
        eval_metrics = evaluate(exp, model)
        log.write({"kind": "eval", "step": 0, "epoch": 0, **eval_metrics})
        console.print(f"epoch 0 (the linear probe): {headline(eval_metrics, 'val/')}")
        best = eval_metrics.get(tc.best_metric)
        if best is not None:
            weights_only, _, state = checkpoint_state(0, 0, {})
            _save(checkpoints / "best.safetensors", model, weights_only, state)

    # ---- loop
    with StopRequest() as stop, make_progress(console, quiet or not ddp.is_main) as progress:
        task = progress.add_task("", total=steps_per_epoch, stats="")
        for epoch in range(progress_state["epoch"], tc.epochs):
            loader.set_epoch(epoch)
            gen.manual_seed(tc.seed * 1_000_003 + ddp.rank * 10_007 + epoch)
            first_batch = progress_state["batch"] if epoch == progress_state["epoch"] else 0
            if first_batch and gen_state is not None:  # resuming mid-epoch (after a signal): same augmentations
                gen.set_state(gen_state)
            description = f"epoch {epoch + 1}/{tc.epochs}"
            progress.reset(task, total=steps_per_epoch, completed=first_batch, description=description)
            window = LogWindow()
            for i, (images, labels, indices) in enumerate(loader):
                if i < first_batch:
                    continue
                epoch_float = epoch + i / steps_per_epoch
                # the learning rate is that at the end of this step, so warm-up's first step is not wasted at lr 0
                lr = warmup_cosine(
                    epoch_float + 1 / steps_per_epoch, tc.epochs, warmup, config.optim.lr, config.optim.min_lr
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                weights = objective_weights(config, epoch_float)
                metrics, finite = optimizer_step(
                    exp, train_model, optimizer, (images, labels, indices), gen, epoch, weights, precision
                )
                step += 1
                if not finite:
                    skipped += 1
                    if skipped > tc.skip_nonfinite:
                        named = dict(zip(model.keys, weights))
                        raise NonFiniteLoss(_nonfinite_message(metrics, step, checkpoints / "last.safetensors", named))
                    if ddp.is_main:
                        progress.console.print(f"step {step}: non-finite loss, skipped ({skipped}/{tc.skip_nonfinite})")
                else:
                    if ema is not None:
                        ema.update(model, step=step)
                    window.add(metrics, len(images) * ddp.world_size)
                # the time limit stops the run here but leaves the learning-rate schedule alone: the cosine was
                # planned for train.epochs (by smallvit fit from the measured speed), so a stopped run ends above min_lr
                if tc.time_limit_s is not None and (epoch + 1 < tc.epochs or i < steps_per_epoch - 1):
                    out_of_time = _any_rank(ddp, training_s() >= tc.time_limit_s, device)
                if window.steps and (step % tc.log_every == 0 or i == steps_per_epoch - 1 or out_of_time):
                    record, rate = window.record()
                    throughput.append(rate)
                    record.update(kind="train", step=step, epoch=round(epoch_float + 1 / steps_per_epoch, 4), lr=lr)
                    record["train/images_per_s"] = rate
                    if tc.skip_nonfinite:
                        record["train/skipped_nonfinite"] = skipped
                    log.write(record)
                    stats = headline(record)
                    progress.update(task, stats=f"{stats}  {rate:.0f} img/s")
                    if quiet and i == steps_per_epoch - 1 and ddp.is_main:
                        console.print(f"epoch {epoch + 1}/{tc.epochs}: {stats}  {rate:.0f} img/s  lr {lr:.2e}")
                progress.advance(task)
                if _any_rank(ddp, stop.signal is not None, device) and i < steps_per_epoch - 1:
                    streams = rank_streams(ddp, gen)
                    if ddp.is_main:
                        _, tensors, state = checkpoint_state(epoch, i + 1, streams)
                        _save(checkpoints / "last.safetensors", model, tensors, state)
                    raise Interrupted(
                        f"stopped by {_signal_name(stop)} at step {step} (epoch {epoch + 1}), checkpoint written"
                    )
                if out_of_time:
                    break

            # ---- evaluation (validation only; the test split is evaluated once, after the last epoch)
            last_epoch = epoch + 1 == tc.epochs or out_of_time
            mid_epoch = out_of_time and i < steps_per_epoch - 1  # stopped by the time limit before the epoch's end
            epochs_done = round(epoch + (i + 1) / steps_per_epoch, 4) if mid_epoch else epoch + 1
            do_eval = exp.val is not None and (last_epoch or (tc.eval_every and (epoch + 1) % tc.eval_every == 0))
            do_knn = exp.val is not None and tc.knn_every and ((epoch + 1) % tc.knn_every == 0 or last_epoch)
            if ddp.is_main and (do_eval or do_knn):
                eval_metrics = evaluate(exp, model)
                if ema is not None:
                    eval_metrics.update(evaluate(exp, ema.module, prefix="val/ema"))
                if do_knn:
                    eval_metrics.update(online_knn(exp, model.backbone))
                log.write({"kind": "eval", "step": step, "epoch": epochs_done, **eval_metrics})
                progress.console.print(f"epoch {epochs_done:g}: {headline(eval_metrics, 'val/')}")

            # ---- checkpoint (stopped mid-epoch: at that batch, as after a signal)
            streams = rank_streams(ddp, gen if mid_epoch else None)
            if ddp.is_main:
                value = eval_metrics.get(tc.best_metric) if tc.best_metric else None
                improved = value is not None and do_eval and _better(value, best, tc.best_direction)
                if improved:
                    best = value
                position = (epoch, i + 1) if mid_epoch else (epoch + 1, 0)
                weights_only, tensors, state = checkpoint_state(*position, streams)
                _save(checkpoints / "last.safetensors", model, tensors, state)
                if improved:
                    _save(checkpoints / "best.safetensors", model, weights_only, state)
            if _any_rank(ddp, stop.signal is not None, device) and not last_epoch:
                raise Interrupted(f"stopped by {_signal_name(stop)} after epoch {epoch + 1}, checkpoint written")
            if out_of_time:
                break

    # ---- summary: the last weights on validation and test; the best (validation-chosen) checkpoint on test
    log.close()
    if not ddp.is_main:
        return {}
    trained_s, epochs_run = training_s(), step / steps_per_epoch
    if out_of_time:
        console.print(
            f"stopped on the time limit of {tc.time_limit_s:g} s of training after {epochs_run:.2f} of {tc.epochs} "
            f"planned epochs ({step} steps); the learning-rate schedule was planned for {tc.epochs} epochs"
        )
    if exp.val is not None and not eval_metrics:  # resumed after the last checkpoint, before this summary
        eval_metrics = evaluate(exp, model)
    final = dict(eval_metrics)
    best_test, best_state = {}, {}
    if (checkpoints / "best.safetensors").exists():
        best_tensors, best_state = load_checkpoint(checkpoints / "best.safetensors", prefix="model.")
    if exp.test is not None:
        final.update(evaluate(exp, model, "test"))
        if ema is not None:
            final.update(evaluate(exp, ema.module, "test", prefix="test/ema"))
        if best_state:
            last_weights = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_tensors)
            best_test = evaluate(exp, model, "test")
            model.load_state_dict(last_weights)
        log.write(
            {"kind": "test", "step": step, "epoch": round(epochs_run, 4), **final, **prefixed("best/", best_test)}
        )
    summary = {
        "name": config.name,
        "run_dir": str(run_dir),
        "epochs": tc.epochs,
        "epochs_run": round(epochs_run, 4),
        "steps": step,
        "training_s": round(trained_s, 1),
        "final": final,
        "best": {"metric": tc.best_metric, "value": best, "epoch": best_state.get("epoch"), "test": best_test},
        "wall_clock_s": round(trained_s, 1),  # every start of a resumed run, each up to its last checkpoint
        "images_per_s": round(_steady_throughput(throughput), 1) if throughput else None,
        "parameters": sum(p.numel() for p in model.backbone.parameters()),
        "device": device_name(device),
        "precision": precision,
        "provenance": provenance(exp, commit),
        "versions": {
            "smallvit": smallvit.__version__,
            "torch": torch.__version__,
            "timm": __import__("timm").__version__,
        },
    }
    if tc.time_limit_s is not None:
        summary["time_limit"] = {"limit_s": tc.time_limit_s, "stopped": out_of_time}
    if resume:
        summary["resumed"] = True
    write_json(run_dir / "summary.json", summary)
    plot_curves(run_dir)
    draw_run_pictures(exp, model, run_dir)  # confusion matrix, worst images, position, attention
    return summary


def epochs_text(summary: dict) -> str:
    """The epochs a run trained, from its summary: ``10 epochs``, or ``3.4 of 10 planned epochs (stopped on its time
    limit of 60 s)``."""
    limit = summary.get("time_limit") or {}
    if not limit.get("stopped"):
        return f"{summary.get('epochs')} epochs"
    return (
        f"{summary['epochs_run']:.3g} of {summary['epochs']} planned epochs (stopped on its time limit of "
        f"{limit['limit_s']:g} s)"
    )


def git_commit(console: Console | None = None) -> str | None:
    """The commit of the smallvit checkout this code runs from (``+dirty`` with uncommitted changes), else None;
    when the code is in a checkout but git cannot tell, ``console`` gets a one-line warning saying why."""
    source = Path(smallvit.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        if console is not None and any((folder / ".git").exists() for folder in source.parents):
            reason = (getattr(err, "stderr", None) or str(err)).strip().splitlines()[-1]
            console.print(f"warning: git could not tell this checkout's commit ({reason}): the summary will have none")
        return None
    return commit + ("+dirty" if dirty else "")


def provenance(exp: Experiment, commit: str | None) -> dict:
    """What reproduces a run's numbers: the code's ``commit`` when the run (or its last resume) started, dataset,
    the content of each split, seed and recipe."""
    config = exp.config
    return {
        "git_commit": commit,
        "recipe": config.name,
        "dataset": config.data.dataset,
        "seed": config.train.seed,
        "splits": exp.splits,
    }
