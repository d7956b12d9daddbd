"""The one training loop every recipe runs: set-up, loop, evaluation, checkpoint — in that order.

Objectives, schedules and augmentation are data handed to it (see :mod:`smallvit.engine.experiment`); the loop
has no per-method cases. Distributed training (``torchrun``) is the few lines marked ``# distributed``.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from rich.console import Console
from timm.utils import ModelEmaV3

import smallvit
from smallvit.config import RunConfig
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
)
from smallvit.engine.experiment import Experiment, build_experiment, write_json
from smallvit.engine.logging import MetricsLog, make_progress, plot_curves, read_metrics
from smallvit.engine.schedules import warmup_cosine
from smallvit.eval.features import extract_features
from smallvit.eval.knn import knn_accuracy
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
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(dist.get_rank(), dist.get_world_size())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW with no weight decay on norms, biases, position embeddings and tokens."""
    skip = {f"backbone.{n}" for n in no_weight_decay_names(model.backbone)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
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
    return [o.weight * o.weight_schedule.factor(epoch, config.train.epochs) for o in config.objectives]


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
def evaluate(exp: Experiment, model: torch.nn.Module, prefix: str = "eval") -> dict[str, float]:
    """Every objective's loss and metrics on the evaluation split, averaged over images.

    Objectives that draw at random (MAE masks, sampled relation pairs) draw the same at every evaluation, from a
    fixed seed on a forked RNG, so evaluation losses compare across epochs and training's random stream is untouched.
    """
    with torch.random.fork_rng(devices=[exp.device] if exp.device.type == "cuda" else []):
        torch.manual_seed(0)
        return _evaluate(exp, model, prefix)


def _evaluate(exp: Experiment, model: torch.nn.Module, prefix: str) -> dict[str, float]:
    config = exp.config
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    batch_size = config.train.batch_size
    weights = objective_weights(config, config.train.epochs)
    for start in range(0, len(exp.eval_labels), batch_size):
        images = exp.eval_images[start : start + batch_size]
        labels = exp.eval_labels[start : start + batch_size]
        indices = torch.arange(start, start + len(labels), device=exp.device)
        main = exp.eval_augment(images, labels, indices, None, 0).main
        batch = Batch({name: main for name in config.augment})
        with autocast(exp.device, config.train.precision):
            loss, metrics = model(batch, weights, training=False)
        if loss is not None:
            metrics["loss"] = loss
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(labels)
        count += len(labels)
    model.train()
    return {f"{prefix}/{key}": value / count for key, value in sums.items()}


def online_knn(exp: Experiment, backbone: torch.nn.Module) -> dict[str, float]:
    """Weighted kNN top-1 of the frozen features (k=20, T=0.07), logged as representation quality."""
    kwargs = dict(augment=exp.eval_augment, batch_size=exp.config.train.batch_size)
    train_features = extract_features(backbone, exp.train_images, **kwargs)
    eval_features = extract_features(backbone, exp.eval_images, **kwargs)
    accuracy = knn_accuracy(train_features, exp.train_labels, eval_features, exp.eval_labels, len(exp.classes))
    return {"eval/knn/acc1": accuracy}


def optimizer_step(
    exp: Experiment,
    train_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple,
    gen: torch.Generator,
    epoch: int,
    weights: list[float],
):
    """One optimizer step on a uint8 batch: augment, forward, backward per micro-batch, clip, update."""
    config = exp.config
    images, labels, indices = data
    micro = -(-len(images) // config.train.accumulation)
    for start in range(0, len(images), micro):
        chunk = slice(start, start + micro)
        batch = exp.augment(images[chunk], labels[chunk], indices[chunk], gen, epoch)
        with autocast(exp.device, config.train.precision):
            loss, metrics = train_model(batch, weights, training=True, epoch=epoch)
        (loss * len(indices[chunk]) / len(images)).backward()
    if config.optim.clip_grad:
        torch.nn.utils.clip_grad_norm_(exp.model.parameters(), config.optim.clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, metrics


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def _steady_throughput(rates: list[float]) -> float:
    """Mean training images/s over the log windows, leaving out the first (warm-up, allocation, compilation)."""
    steady = rates[1:] or rates
    return sum(steady) / len(steady)


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop records a crashed run wrote after its last checkpoint."""
    path = run_dir / "metrics.jsonl"
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    if path.exists():
        import json

        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
) -> dict:
    """Train one stage into ``run_dir``; returns the summary written to ``summary.json``."""
    # ---- set-up
    console = console or Console()
    ddp = init_distributed()
    seed_everything(config.train.seed + ddp.rank)
    exp = build_experiment(config)
    model, device, tc = exp.model, exp.device, config.train
    run_dir.mkdir(parents=True, exist_ok=True)
    if ddp.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if exp.subset_indices is not None:
            write_json(run_dir / "subset_indices.json", {"train": exp.subset_indices.tolist()})
        if exp.init_report is not None:
            console.print(f"initialised from {config.model.init_from}: {exp.init_report.summary()}")
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
    start_epoch, step, best, throughput = 0, 0, None, []
    checkpoints = run_dir / "checkpoints"
    if resume:
        tensors, state = load_checkpoint(checkpoints / "last.safetensors")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
        restore_rng(tensors)
        start_epoch, step, best, throughput = state["epoch"], state["step"], state["best"], state["throughput"]
        if ddp.is_main:
            _truncate_metrics(run_dir, step)
            console.print(f"resuming {run_dir} after epoch {start_epoch} (step {step})")
    log = MetricsLog(run_dir, enabled=ddp.is_main)
    gen = torch.Generator(device=device)
    warmup = config.optim.warmup(tc.epochs)
    started = time.perf_counter()
    eval_metrics: dict[str, float] = {}

    # ---- loop
    with make_progress(console, quiet or not ddp.is_main) as progress:
        task = progress.add_task("", total=steps_per_epoch, stats="")
        for epoch in range(start_epoch, tc.epochs):
            loader.set_epoch(epoch)
            gen.manual_seed(tc.seed * 1_000_003 + ddp.rank * 10_007 + epoch)
            progress.reset(task, total=steps_per_epoch, description=f"epoch {epoch + 1}/{tc.epochs}")
            window: dict[str, float] = {}
            window_steps, window_images, window_start = 0, 0, time.perf_counter()
            for i, (images, labels, indices) in enumerate(loader):
                epoch_float = epoch + i / steps_per_epoch
                # the learning rate is that at the end of this step, so warm-up's first step is not wasted at lr 0
                lr = warmup_cosine(
                    epoch_float + 1 / steps_per_epoch, tc.epochs, warmup, config.optim.lr, config.optim.min_lr
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                weights = objective_weights(config, epoch_float)
                loss, metrics = optimizer_step(
                    exp, train_model, optimizer, (images, labels, indices), gen, epoch, weights
                )
                if ema is not None:
                    ema.update(model, step=step)
                step += 1
                metrics["loss"] = loss.detach()
                for key, value in metrics.items():
                    window[key] = window.get(key, 0.0) + (value.detach() if torch.is_tensor(value) else value)
                window_steps += 1
                window_images += len(images) * ddp.world_size
                if step % tc.log_every == 0 or i == steps_per_epoch - 1:
                    seconds = time.perf_counter() - window_start
                    record = {f"train/{k}": float(v) / window_steps for k, v in window.items()}
                    rate = window_images / max(seconds, 1e-9)
                    throughput.append(rate)
                    record.update(kind="train", step=step, epoch=round(epoch_float + 1 / steps_per_epoch, 4), lr=lr)
                    record["train/images_per_s"] = rate
                    log.write(record)
                    accuracies = [k for k in record if k.endswith("/acc1")]
                    acc = record.get("train/supervised/acc1", record[accuracies[0]] if accuracies else None)
                    stats = f"loss {record['train/loss']:.3f}" + (f"  acc {acc:.3f}" if acc is not None else "")
                    progress.update(task, stats=f"{stats}  {rate:.0f} img/s")
                    if quiet and i == steps_per_epoch - 1 and ddp.is_main:
                        console.print(f"epoch {epoch + 1}/{tc.epochs}: {stats}  {rate:.0f} img/s  lr {lr:.2e}")
                    window, window_steps, window_images, window_start = {}, 0, 0, time.perf_counter()
                progress.advance(task)

            # ---- evaluation
            last_epoch = epoch + 1 == tc.epochs
            do_eval = last_epoch or (tc.eval_every and (epoch + 1) % tc.eval_every == 0)
            do_knn = tc.knn_every and ((epoch + 1) % tc.knn_every == 0 or last_epoch)
            if ddp.is_main and (do_eval or do_knn):
                eval_metrics = evaluate(exp, model)
                if ema is not None:
                    eval_metrics.update(evaluate(exp, ema.module, prefix="eval/ema"))
                if do_knn:
                    eval_metrics.update(online_knn(exp, model.backbone))
                log.write({"kind": "eval", "step": step, "epoch": epoch + 1, **eval_metrics})
                shown = {k: v for k, v in eval_metrics.items() if k.endswith(("acc1", "/loss"))}
                progress.console.print(
                    f"epoch {epoch + 1}: " + "  ".join(f"{k.removeprefix('eval/')} {v:.4f}" for k, v in shown.items())
                )

            # ---- checkpoint
            if ddp.is_main:
                weights_only = prefixed("model.", model.state_dict())
                if ema is not None:
                    weights_only.update(prefixed("ema.", ema.module.state_dict()))
                value = eval_metrics.get(tc.best_metric) if tc.best_metric else None
                improved = value is not None and do_eval and _better(value, best, tc.best_mode)
                if improved:
                    best = value
                optim_tensors, optim_meta = optimizer_to_flat(optimizer)
                state = {
                    "epoch": epoch + 1,
                    "step": step,
                    "best": best,
                    "best_metric": tc.best_metric,
                    "throughput": throughput,
                    "metrics": eval_metrics,
                    "optimizer": optim_meta,
                }
                save_checkpoint(
                    checkpoints / "last.safetensors", {**weights_only, **optim_tensors, **rng_tensors()}, state
                )
                if improved:
                    save_checkpoint(checkpoints / "best.safetensors", weights_only, state)

    # ---- summary
    log.close()
    if not ddp.is_main:
        return {}
    wall = time.perf_counter() - started
    _, best_state = (
        load_checkpoint(checkpoints / "best.safetensors") if (checkpoints / "best.safetensors").exists() else (None, {})
    )
    summary = {
        "name": config.name,
        "run_dir": str(run_dir),
        "epochs": tc.epochs,
        "final": eval_metrics,
        "best": {"metric": tc.best_metric, "value": best, "epoch": best_state.get("epoch")},
        "wall_clock_s": round(wall, 1),
        "images_per_s": round(_steady_throughput(throughput), 1) if throughput else None,
        "parameters": sum(p.numel() for p in model.backbone.parameters()),
        "device": device_name(device),
        "precision": resolve_precision(tc.precision, device),
        "versions": {
            "smallvit": smallvit.__version__,
            "torch": torch.__version__,
            "timm": __import__("timm").__version__,
        },
    }
    if resume:
        summary["resumed"] = True
    write_json(run_dir / "summary.json", summary)
    plot_curves(run_dir)
    return summary
