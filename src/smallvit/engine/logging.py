"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard, a live progress bar, and ``curves.png``; reading them
and ``summary.json`` back."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from smallvit.errors import SmallViTError

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per log step or evaluation to ``metrics.jsonl`` and mirrors it to TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only for the writing rank

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class LogWindow:
    """Training metrics summed over the steps since the last log line, and the images/s they ran at.

    Values stay tensors until :meth:`record`, so logging costs no device synchronisation between log lines.
    """

    def __init__(self):
        self.sums: dict = {}
        self.steps = 0
        self.images = 0
        self.started = time.perf_counter()

    def add(self, metrics: dict, images: int) -> None:
        for key, value in metrics.items():
            value = value.detach() if hasattr(value, "detach") else value
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.images += images

    def record(self) -> tuple[dict[str, float], float]:
        """The window's mean metrics (keys prefixed ``train/``) and its images/s; starts a new window."""
        rate = self.images / max(time.perf_counter() - self.started, 1e-9)
        means = {f"train/{k}": float(v) / self.steps for k, v in self.sums.items()}
        self.__init__()
        return means, rate


def headline(record: dict, prefix: str = "train/") -> str:
    """The loss and every objective's top-1 of a log record, on one line: ``loss 1.234  supervised 0.456``."""
    parts = [f"loss {record[prefix + 'loss']:.3f}"] if prefix + "loss" in record else []
    parts += [
        f"{k[len(prefix) : -len('/acc1')]} {v:.3f}"
        for k, v in record.items()
        if k.startswith(prefix) and k.endswith("/acc1")
    ]
    return "  ".join(parts)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (none when it is missing). A last line cut off mid-record, as a crash or a
    power cut leaves it, is left out with a one-line warning (a resume rewrites the file without it); a damaged line
    before it is an error."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if number < len(lines):
                raise SmallViTError(
                    f"{path} line {number} is not a JSON record ({err}): delete that line or restore the file"
                ) from None
            log.warning("%s ends in a record cut off mid-write (the run was stopped while writing it): left out", path)
    return records


def read_summary(run_dir: Path) -> dict | None:
    """A finished run's ``summary.json``, or None when there is none. A damaged one (cut off by a crash, say) is None
    too, with a one-line warning, where the run still has its last checkpoint: the summary is derived from it, and a
    resume writes it again; without a checkpoint it is an error."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"a JSON {type(summary).__name__}, not an object")
    except ValueError as err:  # also UnicodeDecodeError: binary garbage
        reason = " ".join(str(err).split())
        checkpoints = run_dir / "checkpoints"
        if not any((checkpoints / name).is_file() for name in ("last.safetensors", "last.prev.safetensors")):
            raise SmallViTError(
                f"{path} is damaged ({reason}) and the run has no checkpoint to write it again from: restore the "
                "file from a copy, or train the run again"
            ) from None
        log.warning("%s is damaged (%s): the run resumes from its last checkpoint to write it again", path, reason)
        return None
    return summary


def make_progress(console: Console, quiet: bool) -> Progress:
    """A rich progress bar: epoch, step, loss, accuracy, images/s, ETA. ``quiet`` disables the live display."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def plot_curves(run_dir: Path) -> Path | None:
    """Draw training/eval loss and accuracy against epochs into ``curves.png``."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    accuracy_keys = sorted({k for r in evals for k in r if k.endswith("acc1")})
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["epoch"] for r in train], [r["train/loss"] for r in train], label="train loss", alpha=0.7)
    val_losses = [(r["epoch"], r["val/loss"]) for r in evals if "val/loss" in r]
    if val_losses:
        ax_loss.plot(*zip(*val_losses), "o-", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key in accuracy_keys:
        points = [(r["epoch"], r[key]) for r in evals if key in r]
        ax_acc.plot(*zip(*points), "o-", label=key)
    train_acc = [(r["epoch"], r[k]) for r in train for k in r if k.endswith("acc1")]
    if train_acc:
        ax_acc.plot(*zip(*train_acc), label="train acc1", alpha=0.5)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    if accuracy_keys or train_acc:
        ax_acc.legend()
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
