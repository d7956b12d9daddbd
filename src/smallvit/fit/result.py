""":class:`FitResult`: everything ``smallvit fit`` decided and measured, written to ``<run>/fit.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from smallvit.fit.plan import EpochPlan
from smallvit.fit.rules import BatchChoice, Geometry, RecipeChoice
from smallvit.fit.scan import FolderSummary
from smallvit.fit.speed import Speed


@dataclass
class FitResult:
    """Everything :func:`smallvit.fit.fit_folder` decided and measured; ``fit.json`` in the run folder holds it."""

    run_dir: Path
    summary: FolderSummary
    geometry: Geometry
    recipe: RecipeChoice
    batch: BatchChoice
    plan: EpochPlan
    budget_s: float | None
    overrides: list[str]
    validation: str = ""
    forced: bool = False  # trained with --force although the plan was refused
    decode_s: float = 0.0
    measure_s: float = 0.0
    train_s: float = 0.0
    report_s: float = 0.0
    speed: Speed | None = None
    run_summary: dict = field(default_factory=dict)
    export_dir: Path | None = None
    test_classes: dict | None = None  # the exported checkpoint per class on an unbalanced test split

    @property
    def epochs(self) -> int:
        return self.plan.epochs

    @property
    def best_epoch(self) -> int | None:
        """The epoch of the exported, validation-chosen checkpoint (None: the run has none)."""
        path = self.run_dir / "checkpoints" / "best.json"
        return json.loads(path.read_text()).get("epoch") if path.is_file() else None

    @property
    def actual_epoch_s(self) -> float | None:
        """One epoch as it ran: the training loop's time over the epochs it trained."""
        seconds, epochs = self.run_summary.get("training_s"), self.run_summary.get("epochs_run")
        return seconds / epochs if seconds and epochs else None

    @property
    def slowdown(self) -> float | None:
        """How much slower the epochs ran than measured (above 1: other work slowed the machine down)."""
        if self.plan.epoch_s and self.actual_epoch_s:
            return self.actual_epoch_s / self.plan.epoch_s
        return None

    @property
    def after_decoding_s(self) -> float:
        """Measuring + training + export + report: what ``--budget`` covers."""
        return self.measure_s + self.train_s + self.report_s

    def to_json(self) -> dict:
        plan = self.plan
        return {
            "folder": self.summary.to_json(),
            "geometry": asdict(self.geometry),
            "recipe": asdict(self.recipe),
            "batch": asdict(self.batch),
            "epochs": plan.epochs,
            "epochs_run": self.run_summary.get("epochs_run"),
            "steps_run": self.run_summary.get("steps"),
            "plan": {
                **{key: value for key, value in asdict(plan).items() if key != "fit_parts"},
                "expected_epochs": round(plan.expected_epochs, 2),
                "steps": plan.steps,
                "fit_parts": {key: round(value, 2) for key, value in plan.fit_parts.items()},
                "planned_s": plan.planned_s,
            },
            "forced": self.forced,
            "validation": self.validation,
            "budget_s": self.budget_s,
            "time_budget": self.run_summary.get("time_budget"),  # the engine's record of the budgeted run
            "epoch_s": {"planned": plan.epoch_s, "actual": self.actual_epoch_s, "slowdown": self.slowdown},
            "speed": asdict(self.speed) if self.speed else None,
            "overrides": self.overrides,
            "seconds": {
                "decoding": round(self.decode_s, 1),
                "measuring": round(self.measure_s, 1),
                "training": round(self.train_s, 1),
                "training_loop": self.run_summary.get("training_s"),
                "export_and_report": round(self.report_s, 1),
                "after_decoding": round(self.after_decoding_s, 1),
            },
            "test_classes": self.test_classes,
            "export": str(self.export_dir) if self.export_dir else None,
        }

    def write_json(self) -> None:
        (self.run_dir / "fit.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")
