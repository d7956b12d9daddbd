"""One finished run as a comparison reads it, whether from a run folder, an old summary or a study's table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TOP1, VAL1, LEGACY_TOP1 = "test/supervised/acc1", "val/supervised/acc1", "eval/supervised/acc1"
BALANCED = "test/supervised/balanced_acc1"
"""Test top-1 averaged over classes (the mean of the per-class accuracies), when a run's summary records it: on an
unbalanced test split (Caltech-101) it differs from top-1. Never computed here when absent."""
CHECKPOINTS = ("final", "best")  # which weights' accuracies a comparison reads (see smallvit.compare)


@dataclass(frozen=True)
class Scores:
    """Accuracies of one set of weights, as fractions (as in summary.json); None where not recorded."""

    top1: float | None = None
    val1: float | None = None
    balanced: float | None = None


@dataclass
class RunResult:
    """One finished run (a run folder, a summary file or a line of a study's table), read into what a comparison
    needs. ``top1``, ``val1`` and ``balanced`` are those of the weights ``checkpoint`` names (see :meth:`select`)."""

    source: Path
    name: str
    label: str | None = None
    dataset: str | None = None
    epochs: tuple[int, ...] = ()
    protocol: str | None = None  # "legacy", a hash of the splits' sha256s, or None when not recorded
    test_split: str | None = None  # the test split's sha256, when recorded
    seed: int | None = None
    top1: float | None = None
    val1: float | None = None
    balanced: float | None = None
    checkpoint: str = "final"
    final: Scores = Scores()
    best: Scores | None = None  # the checkpoint chosen on validation; None when the run chose none
    wall_clock_s: float | None = None
    images_per_s: float | None = None
    device: str | None = None
    precision: str | None = None
    commit: str | None = None
    recipe: str | None = None
    knn: float | None = None
    linear: float | None = None
    baseline: bool = False
    sweep: str | None = None
    index: int | None = None
    command: str | None = None
    folder: Path | None = None  # the run folder, when there is one
    curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, validation top-1) of the last stage

    @property
    def legacy(self) -> bool:
        return self.protocol == "legacy"

    def select(self, checkpoint: str) -> RunResult:
        """Read the accuracies of ``checkpoint``: "final" (the last epoch) or "best" (the checkpoint chosen on
        validation, else the last weights when the run chose none). Returns the run."""
        scores = self.best if checkpoint == "best" and self.best is not None else self.final
        self.top1, self.val1, self.balanced = scores.top1, scores.val1, scores.balanced
        self.checkpoint = checkpoint
        return self
