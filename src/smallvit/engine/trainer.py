"""The one training loop every recipe runs: set-up, loop, evaluation, checkpoint — in that order.

:func:`train` calls its phases in turn: :func:`set_up`, :func:`restore` (a resumed run), :func:`start_from_probe`
(LP-FT), then for each epoch :func:`run_epoch` and :func:`evaluate_and_checkpoint`, and :func:`finish`; they share
one :class:`Run`. The pieces they call live beside them: the training clock (``clock.py``), the EMA (``ema.py``),
signal handling (``signals.py``), provenance (``provenance.py``), schedules (``schedules.py``).

Objectives, schedules and augmentation are data handed to it (see :mod:`smallvit.engine.experiment`); the loop
has no per-method cases. Distributed training (``torchrun``) is the few lines marked ``# distributed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from rich.console import Console
from rich.progress import Progress, TaskID
from timm.optim import param_groups_layer_decay
from torch import Tensor

from smallvit.config import RunConfig, TrainConfig, distributed_env
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
from smallvit.engine.clock import TrainingClock
from smallvit.engine.ema import Ema
from smallvit.engine.experiment import EvalSet, Experiment, build_experiment, write_json
from smallvit.engine.logging import LogWindow, MetricsLog, headline, make_progress, plot_curves, read_metrics
from smallvit.engine.memory import keep_freed_memory
from smallvit.engine.pictures import draw_run_pictures
from smallvit.engine.provenance import device_name, git_commit, provenance, versions
from smallvit.engine.schedules import run_fraction, warmup_cosine
from smallvit.engine.signals import Interrupted, StopRequest
from smallvit.errors import ConfigError, SmallViTError
from smallvit.metrics import extract_features, knn_accuracy, train_linear_probe
from smallvit.metrics.classification import balanced_accuracy, is_balanced
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


@torch.no_grad()
def evaluate(
    exp: Experiment, model: torch.nn.Module, split: str = "val", prefix: str | None = None, balanced: bool = False
) -> dict[str, float]:
    """Every objective's loss and metrics on the ``val`` or ``test`` split, averaged over images, keyed
    ``<prefix>/<objective>/<metric>`` (prefix: the split's name).

    balanced: also ``<prefix>/supervised/balanced_acc1``, top-1 averaged over classes, when the split's classes are
        unbalanced (e.g. Caltech-101's test split), where it differs from top-1; read from the classifier's output in
        the same forward passes. Nothing more on a balanced split or without a classifier.

    Objectives that draw at random (MAE masks, sampled relation pairs) draw the same at every evaluation, from a
    fixed seed on a forked RNG, so evaluation losses compare across epochs and training's random stream is untouched.
    """
    with torch.random.fork_rng(devices=[exp.device] if exp.device.type == "cuda" else []):
        torch.manual_seed(0)
        return _evaluate(exp, model, exp.eval_set(split), prefix or split, balanced)


def _evaluate(
    exp: Experiment, model: torch.nn.Module, data: EvalSet, prefix: str, balanced: bool = False
) -> dict[str, float]:
    config = exp.config
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    batch_size = config.train.batch_size
    weights = objective_weights(config, config.train.epochs)
    precision = resolve_precision(config.train.precision, exp.device)
    head = _classifier_head(model) if balanced and not is_balanced(data.labels) else None
    predictions: list[Tensor] = []
    with nullcontext([]) if head is None else _outputs_of(head) as logits:
        for start in range(0, len(data.labels), batch_size):
            images = data.images[start : start + batch_size]
            labels = data.labels[start : start + batch_size]
            indices = torch.arange(start, start + len(labels), device=exp.device)
            main = exp.eval_augment(images, labels, indices, None, 0).main
            batch = Batch({name: main for name in config.augment})
            with autocast(exp.device, precision):
                loss, metrics = model(batch, weights, training=False)
            if logits:  # the class logits, once per view the classifier reads: all are this batch's view
                predictions.append(logits[-1].argmax(dim=1))
                logits.clear()
            if loss is not None:
                metrics["loss"] = loss
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(labels)
            count += len(labels)
    model.train()
    results = {f"{prefix}/{key}": value / count for key, value in sums.items()}
    if predictions:
        accuracy = balanced_accuracy(torch.cat(predictions), data.labels, len(exp.classes))
        results[f"{prefix}/supervised/balanced_acc1"] = accuracy
    return results


def _classifier_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose output is the class logits: the head of the objective that holds the classifier."""
    return next((o.head for o in model.objectives if o.classifier_state() is not None), None)


@contextmanager
def _outputs_of(module: torch.nn.Module) -> Iterator[list[Tensor]]:
    """A list that gathers ``module``'s outputs (a forward hook) while the context is open."""
    outputs: list[Tensor] = []
    handle = module.register_forward_hook(lambda _module, _args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


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


def _any_rank(ddp: Distributed, flag: bool, device: torch.device) -> bool:  # distributed
    """Whether ``flag`` holds on any rank, so that all stop at the same step; every rank must call it."""
    if ddp.world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _rank_max(ddp: Distributed, values: list[float], device: torch.device) -> list[float]:  # distributed
    """Each of ``values`` (numbers, or flags) at its maximum over the ranks, so that all decide alike; every rank must
    call it."""
    if ddp.world_size == 1:
        return values
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


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


# ---------------------------------------------------------------- the run and its phases

RESUMED = {"epoch": "start_epoch", "batch": "start_batch", "step": "step", "best": "best", "throughput": "throughput"}
RESUMED |= {"skipped": "skipped", "train_s": "train_s", "step_s": "step_s", "fraction": "fraction"}
"""Checkpoint state key → :class:`Run` field: what a resumed run continues from."""


@dataclass
class Run:
    """One stage's training as its phases share it: what :func:`set_up` built, where the loop starts
    (``start_epoch``, ``start_batch``), and the counters it moves on, which every checkpoint keeps."""

    config: RunConfig
    run_dir: Path
    exp: Experiment
    ddp: Distributed
    console: Console
    quiet: bool
    commit: str | None  # the code's commit when this start began
    precision: str
    optimizer: torch.optim.Optimizer
    ema: Ema | None
    train_model: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    loader: InMemoryLoader
    gen: torch.Generator  # the augmentation's random stream
    probe_head: bool  # LP-FT: the classifier starts as a linear probe
    resumed: bool = False
    gen_state: Tensor | None = None  # a resumed run's augmentation stream, mid-epoch
    start_epoch: int = 0
    start_batch: int = 0
    step: int = 0
    best: float | None = None
    throughput: list[float] = field(default_factory=list)
    skipped: int = 0
    train_s: float = 0.0  # training time of earlier starts
    step_s: float = 0.0  # how long the last step took
    fraction: float = 0.0  # how much of the run is done at the end of the last step (:func:`run_fraction`)
    clock: TrainingClock | None = None
    log: MetricsLog | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    end: str | None = None  # why the run ended before its last epoch: "schedule" or "time_limit"

    @property
    def model(self) -> torch.nn.Module:
        return self.exp.model

    @property
    def tc(self) -> TrainConfig:
        return self.config.train

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def total_steps(self) -> int:
        """The steps the schedule is spread over: ``train.max_steps``, else ``train.epochs`` epochs."""
        return self.tc.max_steps or self.tc.epochs * self.steps_per_epoch

    @property
    def by_fraction(self) -> bool:
        """Whether the schedules follow :func:`run_fraction` (``max_steps`` or a time budget), not the epoch."""
        return self.tc.max_steps is not None or self.tc.time_budget_s is not None

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
) -> dict:
    """Train one stage into ``run_dir``; returns the summary written to ``summary.json``.

    The schedules (learning rate, objective weights) run over ``train.epochs`` epochs, or over:

    - ``train.max_steps`` optimizer steps, when set: the run ends after that many (mid-epoch too), evaluates,
      checkpoints and summarises as at the end of its last epoch;
    - ``train.time_budget_s`` seconds of training (steps, validation, checkpoints; counted across resumes, not loading
      the data or the final test), when set: the schedules follow the clock, as the elapsed fraction of the budget
      (or the fraction of steps done, when further along), so warm-up then cosine reach ``optim.min_lr`` as the
      budget is spent, on a machine that slows down or speeds up as well; the run ends at that step, evaluates,
      checkpoints and summarises (``time_budget``: its steps, ``epochs_run``; ``smallvit train`` with
      ``train.max_steps`` = those steps reproduces its length with a step schedule).

    Schedules written in epochs (``optim.warmup_epochs``, objective weight warm-ups) are then read as fractions of
    ``train.epochs``, and ``train.epochs`` bounds the run: one that reaches it first ends there (a time budget's
    schedule is then annealed by the step fraction). ``train.max_steps`` above ``train.epochs`` epochs is an error.

    With ``train.time_limit_s``, the loop stops at the end of the step at which its training time reaches the limit,
    whatever the schedule, then evaluates on validation, writes the last checkpoint and the summary
    (``time_limit.stopped``, ``epochs_run`` of the planned ``epochs``, ``steps``, ``training_s``). Resuming a run that
    has spent its limit is an error: raise or remove the limit in its config first.
    """
    run = set_up(config, run_dir, resume, quiet, console or Console())
    if resume:
        restore(run)
    run.log = MetricsLog(run_dir, enabled=run.ddp.is_main)
    run.clock = TrainingClock(run.train_s, config.train.time_limit_s, config.train.time_budget_s, run.step_s)
    start_from_probe(run)
    if run.by_fraction and run.fraction >= 1 and run.start_epoch < config.train.epochs:
        run.end = "schedule"  # resumed after the step that ended it, before its summary
    with StopRequest() as stop, make_progress(run.console, quiet or not run.ddp.is_main) as bar:
        task = bar.add_task("", total=run.steps_per_epoch, stats="")
        for epoch in range(run.start_epoch, config.train.epochs):
            if run.end is not None:
                break
            last_batch = run_epoch(run, epoch, stop, bar, task)
            evaluate_and_checkpoint(run, epoch, last_batch, stop, bar)
    run.log.close()
    return finish(run) if run.ddp.is_main else {}


def set_up(config: RunConfig, run_dir: Path, resume: bool, quiet: bool, console: Console) -> Run:
    """Everything before the first step, in the order that fixes the random streams: seeds, the experiment (data,
    model) and its loader, the run folder's files, LP-FT's probe head, the optimizer, EMA, compilation."""
    commit = git_commit(console)  # now, not at the end: the checkout may move on while the run trains
    keep_freed_memory()
    ddp = init_distributed()
    seed_everything(config.train.seed + ddp.rank)
    exp = build_experiment(config)
    tc = config.train
    loader = InMemoryLoader(
        exp.train_images,
        exp.train_labels,
        batch_size=tc.batch_size,
        seed=tc.seed,
        drop_last=len(exp.train_labels) >= tc.batch_size * ddp.world_size,
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    if tc.max_steps is not None and tc.max_steps > tc.epochs * len(loader):
        raise ConfigError(
            f"train.max_steps={tc.max_steps} is more than train.epochs={tc.epochs} epochs of {len(loader)} steps: "
            "raise train.epochs, which bounds the run"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if ddp.is_main:
        _write_run_files(exp, run_dir, resume, console)
    probe_head = bool(config.model.head_init == "linear_probe" and config.model.init_from and not resume)
    if probe_head:
        accuracy = init_head_from_probe(exp)
        if ddp.is_main:
            console.print(f"classifier initialised as a linear probe of the loaded features (train acc {accuracy:.4f})")
    optimizer = build_optimizer(exp.model, config)
    ema = Ema(exp.model, tc.ema_decay) if tc.ema_decay else None
    if tc.compile:
        exp.model.backbone.compile()
    train_model = exp.model
    if ddp.world_size > 1:  # distributed
        train_model = torch.nn.parallel.DistributedDataParallel(exp.model)
    precision = resolve_precision(tc.precision, exp.device)
    gen = torch.Generator(device=exp.device)
    return Run(
        config,
        run_dir,
        exp,
        ddp,
        console,
        quiet,
        commit,
        precision,
        optimizer,
        ema,
        train_model,
        loader,
        gen,
        probe_head,
    )


def _write_run_files(exp: Experiment, run_dir: Path, resume: bool, console: Console) -> None:
    """The run folder's ``config.yaml``, ``data.json``, subset indices and skipped files; a new run's metrics reset."""
    if not resume:  # a run restarted from scratch (killed before its first checkpoint) keeps no stale records
        _truncate_metrics(run_dir, 0)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(exp.config.to_dict(), sort_keys=False))
    if exp.subset_indices is not None:
        write_json(run_dir / "subset_indices.json", {"train": exp.subset_indices.tolist()})
    write_json(run_dir / "data.json", {"classes": exp.classes, "splits": exp.splits})
    unreadable = sorted({name for split in exp.splits.values() for name in split["skipped_files"]})
    if unreadable:
        (run_dir / "skipped_files.txt").write_text("\n".join(unreadable) + "\n")
        console.print(f"skipped {len(unreadable)} undecodable image(s), listed in {run_dir / 'skipped_files.txt'}")
    if exp.init_report is not None:
        console.print(f"initialised from {exp.config.model.init_from}: {exp.init_report.summary()}")


def restore(run: Run) -> None:
    """Continue from the last usable checkpoint: weights, EMA, optimizer, every rank's random streams, the position
    and counters; the metrics written after it are dropped. A run that has spent its time limit is refused."""
    path, state = usable_checkpoint(run.checkpoints, run.console if run.ddp.is_main else None)
    run.model.load_state_dict(load_checkpoint(path, prefix="model.")[0])
    tensors = load_checkpoint(path)[0]
    if run.ema is not None:
        run.ema.load(tensors)
    optimizer_from_flat(run.optimizer, tensors, state["optimizer"])
    restore_rng(_own_streams(tensors, run.ddp.rank))
    run.gen_state = tensors.get(f"gen.rank{run.ddp.rank}")
    for key, name in RESUMED.items():
        if key in state:
            setattr(run, name, state[key])
    run.resumed = True
    tc = run.tc
    if tc.time_limit_s is not None and run.train_s >= tc.time_limit_s:
        raise SmallViTError(
            f"{run.run_dir} has trained {run.train_s:.1f} s, its time limit train.time_limit_s="
            f"{tc.time_limit_s:g}: to train on, raise or remove train.time_limit_s in the run's config.yaml "
            "(a multi-stage run: its recipe.yaml)"
        )
    run.fraction = max(run.fraction, run_fraction(run.step, run.total_steps, run.train_s, tc.time_budget_s))
    if run.ddp.is_main:
        _truncate_metrics(run.run_dir, run.step)
        where = f"epoch {run.start_epoch + 1}, batch {run.start_batch}"
        run.console.print(f"resuming {run.run_dir} at {where} (step {run.step})")


def start_from_probe(run: Run) -> None:
    """LP-FT: the linear probe's own model is the first candidate for the best checkpoint, so the checkpoint chosen on
    validation is never worse there than the probe that fine-tuning started from."""
    tc = run.tc
    if not (run.probe_head and run.ddp.is_main and run.exp.val is not None and tc.best_metric):
        return
    run.eval_metrics = evaluate(run.exp, run.model)
    run.log.write({"kind": "eval", "step": 0, "epoch": 0, **run.eval_metrics})
    run.console.print(f"epoch 0 (the linear probe): {headline(run.eval_metrics, 'val/')}")
    run.best = run.eval_metrics.get(tc.best_metric)
    if run.best is not None:
        weights_only, _, state = _checkpoint_state(run, 0, 0, {})
        _save(run.checkpoints / "best.safetensors", run.model, weights_only, state)


def run_epoch(run: Run, epoch: int, stop: StopRequest, bar: Progress, task: TaskID) -> int:
    """Train ``epoch`` from its first batch (a resumed run: from where it stopped) to its last, or to the step that
    ends the run (:func:`_end_of_run`), logging every ``train.log_every`` steps and at the end. Returns the last batch
    trained. A signal received during a step stops the run after it, with a checkpoint at the next batch."""
    tc, per_epoch = run.tc, run.steps_per_epoch
    run.loader.set_epoch(epoch)
    run.gen.manual_seed(tc.seed * 1_000_003 + run.ddp.rank * 10_007 + epoch)
    first_batch = run.start_batch if epoch == run.start_epoch else 0
    if first_batch and run.gen_state is not None:  # resuming mid-epoch (after a signal): same augmentations
        run.gen.set_state(run.gen_state)
    bar.reset(task, total=per_epoch, completed=first_batch, description=f"epoch {epoch + 1}/{tc.epochs}")
    window = LogWindow()
    for i, data in enumerate(run.loader):
        if i < first_batch:
            continue
        lr, weights = _schedule(run, epoch, i)
        _train_step(run, data, epoch, weights, window, bar)
        run.end = _end_of_run(run, epoch, i)
        if window.steps and (run.step % tc.log_every == 0 or i == per_epoch - 1 or run.end):
            _log_train(run, window, (epoch, i), lr, bar, task)
        bar.advance(task)
        if i < per_epoch - 1:
            _stop_on_signal(run, stop, f"at step {run.step} (epoch {epoch + 1})", (epoch, i + 1))
        if run.end:
            break
    return i


def _schedule(run: Run, epoch: int, batch: int) -> tuple[float, list[float]]:
    """Set the learning rate of the step at ``batch`` of ``epoch`` — that at its end, so that warm-up's first step is
    not wasted at lr 0 — in every parameter group (times its ``lr_scale``); returns it and the objective weights at the
    step's start. Both at ``epoch + batch / steps per epoch`` of ``train.epochs``, or with ``max_steps`` or a time
    budget at the :func:`run_fraction` done of ``train.epochs``; ``run.fraction`` becomes that at the step's end."""
    tc, optim, per_epoch = run.tc, run.config.optim, run.steps_per_epoch
    elapsed, expected_end = run.clock.start_step()
    if run.by_fraction:
        if tc.time_budget_s is not None:  # the ranks' clocks differ: all follow the slowest
            elapsed, expected_end = _rank_max(run.ddp, [elapsed, expected_end], run.exp.device)
        start = run_fraction(run.step, run.total_steps, elapsed, tc.time_budget_s) * tc.epochs
        run.fraction = run_fraction(run.step + 1, run.total_steps, expected_end, tc.time_budget_s)
        end = run.fraction * tc.epochs
    else:
        start = epoch + batch / per_epoch
        end = start + 1 / per_epoch
        run.fraction = (run.step + 1) / run.total_steps
    lr = warmup_cosine(end, tc.epochs, optim.warmup(tc.epochs), optim.lr, optim.min_lr)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr, objective_weights(run.config, start)


def _train_step(run: Run, data: tuple, epoch: int, weights: list[float], window: LogWindow, bar: Progress) -> None:
    """One optimizer step and what follows it: the step count, a non-finite loss skipped (or stopping the run), the
    EMA update, the log window."""
    tc = run.tc
    args = (run.exp, run.train_model, run.optimizer, data, run.gen, epoch, weights, run.precision)
    metrics, finite = optimizer_step(*args)
    run.clock.end_step()
    run.step += 1
    if not finite:
        run.skipped += 1
        if run.skipped > tc.skip_nonfinite:
            named = dict(zip(run.model.keys, weights))
            raise NonFiniteLoss(_nonfinite_message(metrics, run.step, run.checkpoints / "last.safetensors", named))
        if run.ddp.is_main:
            bar.console.print(f"step {run.step}: non-finite loss, skipped ({run.skipped}/{tc.skip_nonfinite})")
    else:
        if run.ema is not None:
            run.ema.update(run.model, step=run.step)
        window.add(metrics, len(data[0]) * run.ddp.world_size)


def _end_of_run(run: Run, epoch: int, batch: int) -> str | None:
    """Why the run ends after the step at ``batch`` of ``epoch``, before its last epoch's end: ``schedule`` (its
    ``max_steps`` done, or its time budget spent) or ``time_limit``; None to train on. Every rank must call it."""
    tc = run.tc
    if epoch + 1 == tc.epochs and batch == run.steps_per_epoch - 1:
        return None
    done, limit = run.by_fraction and run.fraction >= 1, False
    if tc.time_limit_s is not None or tc.time_budget_s is not None:  # distributed: all ranks stop at the same step
        done, limit = _rank_max(run.ddp, [done or run.clock.budget_spent(), run.clock.limit_reached()], run.exp.device)
    return "schedule" if done else "time_limit" if limit else None


def _log_train(run: Run, window: LogWindow, at: tuple[int, int], lr: float, bar: Progress, task: TaskID) -> None:
    """One ``train`` record of the steps since the last, ``at`` (epoch, batch): mean metrics, images/s, lr."""
    tc, per_epoch = run.tc, run.steps_per_epoch
    epoch, batch = at
    record, rate = window.record()
    run.throughput.append(rate)
    record.update(kind="train", step=run.step, epoch=round(epoch + batch / per_epoch + 1 / per_epoch, 4), lr=lr)
    if run.by_fraction:
        record["run_fraction"] = run.fraction
    record["train/images_per_s"] = rate
    if tc.skip_nonfinite:
        record["train/skipped_nonfinite"] = run.skipped
    run.log.write(record)
    stats = headline(record)
    bar.update(task, stats=f"{stats}  {rate:.0f} img/s")
    if run.quiet and batch == per_epoch - 1 and run.ddp.is_main:
        run.console.print(f"epoch {epoch + 1}/{tc.epochs}: {stats}  {rate:.0f} img/s  lr {lr:.2e}")


def _stop_on_signal(run: Run, stop: StopRequest, where: str, position: tuple[int, int] | None = None) -> None:
    """When any rank has received SIGINT or SIGTERM, stop the run ``where`` (:class:`Interrupted`) after writing the
    last checkpoint at ``position`` (epoch, next batch) when given (mid-epoch). Every rank must call it."""
    if not _any_rank(run.ddp, stop.signal is not None, run.exp.device):
        return
    if position is not None:
        streams = rank_streams(run.ddp, run.gen)
        if run.ddp.is_main:
            _, tensors, state = _checkpoint_state(run, *position, streams)
            _save(run.checkpoints / "last.safetensors", run.model, tensors, state)
    raise Interrupted(f"stopped by {stop.source} {where}, checkpoint written")


def evaluations_due(tc: TrainConfig, epochs_done: int, last: bool) -> tuple[bool, bool]:
    """Whether validation and online kNN run after ``epochs_done`` epochs: every ``eval_every`` (0: only after the
    last) and every ``knn_every`` (0: never) epochs, and both after the ``last``."""
    do_eval = last or bool(tc.eval_every and epochs_done % tc.eval_every == 0)
    do_knn = bool(tc.knn_every) and (epochs_done % tc.knn_every == 0 or last)
    return do_eval, do_knn


def evaluate_and_checkpoint(run: Run, epoch: int, batch: int, stop: StopRequest, bar: Progress) -> None:
    """After ``epoch`` (or the step at ``batch`` that ended the run): validation, the EMA's and online kNN when due;
    the last checkpoint (stopped mid-epoch: at the next batch, as after a signal), and the best when validation
    improved on it. A signal received during the epoch then stops the run."""
    tc, per_epoch = run.tc, run.steps_per_epoch
    last_epoch = epoch + 1 == tc.epochs or run.end is not None
    mid_epoch = run.end is not None and batch < per_epoch - 1
    epochs_done = round(epoch + (batch + 1) / per_epoch, 4) if mid_epoch else epoch + 1
    do_eval, do_knn = evaluations_due(tc, epoch + 1, last_epoch) if run.exp.val is not None else (False, False)
    if run.ddp.is_main and (do_eval or do_knn):
        run.eval_metrics = evaluate(run.exp, run.model)
        if run.ema is not None:
            run.eval_metrics.update(evaluate(run.exp, run.ema.module, prefix="val/ema"))
        if do_knn:
            run.eval_metrics.update(online_knn(run.exp, run.model.backbone))
        run.log.write({"kind": "eval", "step": run.step, "epoch": epochs_done, **run.eval_metrics})
        bar.console.print(f"epoch {epochs_done:g}: {headline(run.eval_metrics, 'val/')}")
    streams = rank_streams(run.ddp, run.gen if mid_epoch else None)
    if run.ddp.is_main:
        value = run.eval_metrics.get(tc.best_metric) if tc.best_metric else None
        improved = value is not None and do_eval and _better(value, run.best, tc.best_direction)
        if improved:
            run.best = value
        position = (epoch, batch + 1) if mid_epoch else (epoch + 1, 0)
        weights_only, tensors, state = _checkpoint_state(run, *position, streams)
        _save(run.checkpoints / "last.safetensors", run.model, tensors, state)
        if improved:
            _save(run.checkpoints / "best.safetensors", run.model, weights_only, state)
    if not last_epoch:
        _stop_on_signal(run, stop, f"after epoch {epoch + 1}")


def _checkpoint_state(
    run: Run, epoch: int, batch: int, streams: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """(weights only, everything a resume needs, JSON state) at ``batch`` of ``epoch`` (0: its start);
    ``streams``: every rank's random streams (:func:`rank_streams`)."""
    weights_only = prefixed("model.", run.model.state_dict())
    if run.ema is not None:
        weights_only.update(run.ema.tensors())
    optim_tensors, optim_meta = optimizer_to_flat(run.optimizer)
    state = {
        "epoch": epoch,
        "batch": batch,
        "step": run.step,
        "best": run.best,
        "best_metric": run.tc.best_metric,
        "throughput": run.throughput,
        "skipped": run.skipped,
        "train_s": run.clock.elapsed_s(),
        "step_s": run.clock.last_step_s,
        "fraction": run.fraction,
        "metrics": run.eval_metrics,
        "optimizer": optim_meta,
    }
    return weights_only, {**weights_only, **optim_tensors, **streams}, state


def finish(run: Run) -> dict:
    """The summary (rank 0): the last weights on validation and test, the best (validation-chosen) checkpoint on
    test, time, speed and provenance; then the curves and the pictures of what the model learned."""
    tc, exp, model = run.tc, run.exp, run.model
    trained_s, epochs_run = run.clock.elapsed_s(), run.step / run.steps_per_epoch
    if run.end == "time_limit":
        run.console.print(
            f"stopped on the time limit of {tc.time_limit_s:g} s of training after {epochs_run:.2f} of {tc.epochs} "
            f"planned epochs ({run.step} steps); the learning-rate schedule was planned for {tc.epochs} epochs"
        )
    if tc.time_budget_s is not None:
        run.console.print(
            f"trained {run.step} steps ({epochs_run:.2f} epochs) in {trained_s:.1f} s of its time budget of "
            f"{tc.time_budget_s:g} s, the schedule following the clock; train.max_steps={run.step} repeats it by steps"
        )
    if exp.val is not None and not run.eval_metrics:  # resumed after the last checkpoint, before this summary
        run.eval_metrics = evaluate(exp, model)
    final = dict(run.eval_metrics)
    best_test, best_state = _test(run, final, round(epochs_run, 4))
    summary = {
        "name": run.config.name,
        "run_dir": str(run.run_dir),
        "epochs": tc.epochs,
        "epochs_run": round(epochs_run, 4),
        "steps": run.step,
        "training_s": round(trained_s, 1),
        "final": final,
        "best": {"metric": tc.best_metric, "value": run.best, "epoch": best_state.get("epoch"), "test": best_test},
        "wall_clock_s": round(trained_s, 1),  # every start of a resumed run, each up to its last checkpoint
        "images_per_s": round(_steady_throughput(run.throughput), 1) if run.throughput else None,
        "parameters": sum(p.numel() for p in model.backbone.parameters()),
        "device": device_name(run.exp.device),
        "precision": run.precision,
        "provenance": provenance(exp, run.commit),
        "versions": versions(),
    }
    if tc.time_limit_s is not None:
        summary["time_limit"] = {"limit_s": tc.time_limit_s, "stopped": run.end == "time_limit"}
    if tc.time_budget_s is not None:
        summary["time_budget"] = {
            "budget_s": tc.time_budget_s,
            "schedule": "clock",
            "spent": run.end == "schedule",
            "max_steps": run.step,  # train.max_steps that repeats this run's length with a step schedule
        }
    if run.resumed:
        summary["resumed"] = True
    write_json(run.run_dir / "summary.json", summary)
    plot_curves(run.run_dir)
    draw_run_pictures(exp, model, run.run_dir)  # confusion matrix, worst images, position, attention
    return summary


def _test(run: Run, final: dict[str, float], epochs_run: float) -> tuple[dict[str, float], dict]:
    """The test split, evaluated once: the last weights (and their EMA) into ``final``, and the best checkpoint's
    weights, whose metrics and JSON state it returns; all in one ``test`` record."""
    exp, model = run.exp, run.model
    best_test, best_state = {}, {}
    if (run.checkpoints / "best.safetensors").exists():
        best_tensors, best_state = load_checkpoint(run.checkpoints / "best.safetensors", prefix="model.")
    if exp.test is None:
        return best_test, best_state
    final.update(evaluate(exp, model, "test", balanced=True))
    if run.ema is not None:
        final.update(evaluate(exp, run.ema.module, "test", prefix="test/ema"))
    if best_state:
        last_weights = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_tensors)
        best_test = evaluate(exp, model, "test", balanced=True)
        model.load_state_dict(last_weights)
    run.log.write({"kind": "test", "step": run.step, "epoch": epochs_run, **final, **prefixed("best/", best_test)})
    return best_test, best_state


def epochs_text(summary: dict) -> str:
    """The epochs a run trained, from its summary: ``10 epochs``, ``3.4 of 10 planned epochs (stopped on its time
    limit of 60 s)``, ``3.4 epochs (120 steps, time budget 60 s)``, or ``2.5 epochs (50 steps)`` (``max_steps``)."""
    limit, budget = summary.get("time_limit") or {}, summary.get("time_budget")
    if limit.get("stopped"):
        return (
            f"{summary['epochs_run']:.3g} of {summary['epochs']} planned epochs (stopped on its time limit of "
            f"{limit['limit_s']:g} s)"
        )
    if budget:
        steps, seconds = summary["steps"], budget["budget_s"]
        return f"{summary['epochs_run']:.3g} epochs ({steps} steps, time budget {seconds:g} s)"
    if summary.get("epochs_run", summary.get("epochs")) != summary.get("epochs"):  # ended by train.max_steps
        return f"{summary['epochs_run']:.3g} epochs ({summary['steps']} steps)"
    return f"{summary.get('epochs')} epochs"
