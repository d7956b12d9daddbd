""":func:`fit_folder`: the steps of ``smallvit fit`` in order — scan, choose, decode, plan, train, export, report."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from smallvit.config import DataConfig, RunConfig, load_recipe
from smallvit.engine.experiment import load_splits
from smallvit.engine.runner import new_run_dir, run_recipe
from smallvit.errors import ConfigError
from smallvit.export import export_folder
from smallvit.export.card import class_accuracy
from smallvit.fit.plan import EpochPlan, given_epochs, plan_epochs, too_little
from smallvit.fit.report import (
    batch_line,
    class_overview,
    geometry_line,
    plan_line,
    recipe_line,
    summary_lines,
    write_report,
)
from smallvit.fit.result import FitResult
from smallvit.fit.rules import (
    BatchChoice,
    Geometry,
    RecipeChoice,
    choose_batch,
    choose_geometry,
    choose_recipe,
    given_recipe,
)
from smallvit.fit.scan import FolderSummary, check_folder, scan_folder
from smallvit.fit.speed import Speed, measure_speed

_SAY = {"markup": False, "highlight": False}


@dataclass(frozen=True)
class Choices:
    """What fit chose for the folder, and the run configuration they make (before the training plan)."""

    recipe: RecipeChoice
    geometry: Geometry
    batch: BatchChoice
    overrides: list[str]  # fit's choices, then the user's overrides
    config: RunConfig
    num_train: int

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps of an epoch, as the engine's loader makes them (the last partial batch dropped)."""
        return max(self.num_train // self.config.train.batch_size, 1)


def fit_overrides(summary: FolderSummary, geometry: Geometry, device: str, on_bad_file: str) -> list[str]:
    """The ``key=value`` overrides that turn the chosen recipe into a run on the folder."""
    return [
        "data.dataset=imagefolder",
        f"data.root={summary.folder.resolve()}",
        f"data.image_size={geometry.image_size}",
        f"data.in_chans={geometry.in_chans}",
        f"data.on_bad_file={on_bad_file}",
        f"data.test_split={'test' if 'test' in summary.counts else 'none'}",
        *(["data.val_split=none"] if summary.carves_val else []),  # held out of train/ (data.val_fraction)
        f"model.patch_size={geometry.patch_size}",
        f"augment.main.ops.0.padding={geometry.patch_size}",  # random crop: shift by up to one patch, as at 32 px / 4
        f"train.device={device}",
        "data.decode=draft",  # camera photos: JPEGs decoded at reduced scale (Pillow's draft mode)
    ]


def validation_source(summary: FolderSummary, data: DataConfig) -> str:
    """Where the validation images (which choose the exported checkpoint) come from, in words."""
    if summary.flat:
        return "10 % of each class held out at random with seed 0 (the imagefolder dataset's split)"
    if summary.carves_val:
        return (
            f"no val/ folder: {100 * data.val_fraction:g} % of each class of train/ held out at random with seed "
            f"{data.val_seed} (data.val_fraction, data.val_seed)"
        )
    return "the folder's val/ split"


def choose(
    summary: FolderSummary,
    device: str,
    on_bad_file: str,
    overrides: Sequence[str],
    console: Console,
    given: RecipeChoice | None = None,
) -> Choices:
    """The recipe (``given``, from ``--recipe``, else by the rules), geometry and batch for the folder, each printed
    on one line with its rule and reason. The batch rule reads the recipe's batch and learning rate with the user's
    overrides applied (theirs win)."""
    recipe = given or choose_recipe(summary.train_count(), len(summary.classes), summary.median_side)
    geometry = choose_geometry(summary.short_sides, num_images=summary.total, max_size=recipe.max_image_size)
    chosen = [*fit_overrides(summary, geometry, device, on_bad_file), *recipe.overrides]
    as_given = load_recipe(recipe.recipe, [*chosen, *overrides]).stages[0]
    num_train = summary.train_count(as_given.data.val_fraction) if summary.carves_val else summary.train_count()
    batch = choose_batch(num_train, as_given.train.batch_size, as_given.optim.lr)
    chosen = [*chosen, *batch.overrides, *overrides]
    config = load_recipe(recipe.recipe, [*chosen, "train.epochs=1"]).stages[0]
    for line in (recipe_line(recipe), geometry_line(geometry), batch_line(batch)):
        console.print(line, **_SAY)
    return Choices(recipe, geometry, batch, chosen, config, num_train)


def _refuse(
    plan: EpochPlan, force: bool, console: Console, budget_s: float | None = None, speed: Speed | None = None
) -> bool:
    """Raise the plan's one-line refusal unless ``force``; returns whether it was forced past one."""
    message = too_little(plan, budget_s, speed)
    if message is not None and not force:
        raise ConfigError(message)
    if message is not None:
        console.print(f"--force: training anyway ({message})", **_SAY)
    return message is not None


def _decode(config: RunConfig, console: Console) -> float:
    """Decode every split once, into the cache the run then reads; returns the seconds it took."""
    started = time.perf_counter()
    load_splits(config)
    decode_s = time.perf_counter() - started
    console.print(f"decoded the images in {decode_s:.1f} s (not counted in the budget)", **_SAY)
    return decode_s


def _measure_and_plan(
    choices: Choices, summary: FolderSummary, budget_s: float, run_dir: Path
) -> tuple[EpochPlan, Speed, float]:
    """Time the chosen run (into ``run_dir``) and plan the budget from it; returns the plan, the speed and the
    seconds measuring took."""
    started = time.perf_counter()
    speed = measure_speed(choices.config, run_dir, seconds=min(2.0, 0.03 * budget_s))
    measure_s = time.perf_counter() - started
    plan = plan_epochs(budget_s, speed, spent_s=measure_s, test_passes=int("test" in summary.counts))
    return plan, speed, measure_s


def _finish(result: FitResult) -> None:
    """The export with its model card, the exported weights' accuracy per class on an unbalanced test split, and the
    report (timed as report_s)."""
    started = time.perf_counter()
    result.export_dir = result.run_dir / "export"
    export_folder(result.run_dir, result.export_dir)
    if "test" in result.summary.counts and not result.summary.balanced("test"):
        per_class, images = class_accuracy(result.run_dir, "best", "test") or ({}, [])
        result.test_classes = {"per_class": per_class, "images": images}
    result.report_s = time.perf_counter() - started
    result.write_json()
    write_report(result)
    result.report_s = time.perf_counter() - started
    result.write_json()


def _run_folder(output: Path | None, runs_dir: Path, folder: Path) -> tuple[Path, bool]:
    """The run folder, and whether fit created it (a refused plan removes what it created)."""
    if output is None:
        return new_run_dir(runs_dir, f"fit-{folder.resolve().name}", None), True
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not an empty folder: give a new folder")
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    return output, created


def fit_folder(
    folder: Path,
    *,
    budget_s: float | None = 15 * 60,
    epochs: int | None = None,
    device: str = "auto",
    output: Path | None = None,
    runs_dir: Path = Path("runs"),
    on_bad_file: str = "error",
    overrides: Sequence[str] = (),
    recipe: str | None = None,
    force: bool = False,
    quiet: bool = False,
    console: Console | None = None,
) -> FitResult:
    """Scan ``folder``, choose, decode, measure and plan, train, export and report; see :mod:`smallvit.fit`.

    recipe: a shipped recipe's name to train instead of the one the rules choose (``--recipe``; rule ``given``).
    overrides: ``key=value`` settings applied after fit's own choices (``model.preset=vit_tiny``), as ``smallvit
        train`` takes them; the report lists them.
    force: train a plan of fewer than 10 epochs or 200 optimizer steps instead of refusing it.
    """
    console = console or Console()
    if epochs is not None and epochs <= 0:
        raise ConfigError(f"--epochs {epochs} must be at least 1")
    given = None if recipe is None else given_recipe(recipe)
    summary = scan_folder(folder)
    console.print(class_overview(summary), **_SAY)
    for line in summary_lines(summary):
        console.print(line, **_SAY)
    check_folder(summary, on_bad_file)
    choices = choose(summary, device, on_bad_file, overrides, console, given)
    validation = validation_source(summary, choices.config.data)
    console.print(f"validation: {validation}", **_SAY)
    plan = speed = None
    if epochs is not None:
        plan = given_epochs(epochs, choices.steps_per_epoch)
        forced = _refuse(plan, force, console)
    run_dir, created = _run_folder(output, runs_dir, summary.folder)
    try:  # nothing is left behind by a folder that fails to decode, or a plan refused after measuring
        decode_s, measure_s = _decode(choices.config, console), 0.0
        if plan is None:
            plan, speed, measure_s = _measure_and_plan(choices, summary, budget_s, run_dir)
            forced = _refuse(plan, force, console, budget_s, speed)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    console.print(plan_line(plan), **_SAY)
    result = FitResult(
        run_dir,
        summary,
        choices.geometry,
        choices.recipe,
        choices.batch,
        plan,
        budget_s=budget_s if epochs is None else None,
        overrides=[*choices.overrides, *plan.overrides],
        validation=validation,
        forced=forced,
        decode_s=decode_s,
        measure_s=measure_s,
        speed=speed,
    )
    result.write_json()
    started = time.perf_counter()
    result.run_summary = run_recipe(
        load_recipe(choices.recipe.recipe, result.overrides), run_dir, quiet=quiet, console=console
    )[-1]
    result.train_s = time.perf_counter() - started
    _finish(result)
    return result
