"""Runs a recipe: one stage into its run folder, or several in sequence (pre-train → fine-tune).

A multi-stage run folder holds one sub-folder per stage (``1-relvit-pretrain/``, ``2-relvit-finetune/``);
a stage whose ``model.init_from`` is ``previous`` starts from the stage before it. Resuming skips the stages
that finished (they have ``summary.json``) and continues the first that did not.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from rich.console import Console

from smallvit.config import Recipe, RunConfig, validate_run
from smallvit.engine.experiment import write_json
from smallvit.engine.trainer import train
from smallvit.errors import SmallViTError


def new_run_dir(runs_dir: Path, recipe_name: str, name: str | None) -> Path:
    stem = name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = runs_dir / stem
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir / f"{stem}-{suffix}"
    return run_dir


def stage_dirs(run_dir: Path, stages: list[RunConfig]) -> list[Path]:
    if len(stages) == 1:
        return [run_dir]
    return [run_dir / f"{i + 1}-{stage.name}" for i, stage in enumerate(stages)]


def run_recipe(recipe: Recipe, run_dir: Path, *, quiet: bool = False, console: Console | None = None) -> list[dict]:
    """Train every stage of ``recipe`` into ``run_dir``; returns their summaries."""
    console = console or Console()
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(recipe.stages) > 1:
        stages_yaml = {"name": recipe.name, "stages": [s.to_dict() for s in recipe.stages]}
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(stages_yaml, sort_keys=False))
    return _run_stages(recipe.stages, stage_dirs(run_dir, recipe.stages), run_dir, quiet, console)


def resume_run(run_dir: Path, *, quiet: bool = False, console: Console | None = None) -> list[dict]:
    """Continue an interrupted run folder (single- or multi-stage) from its last checkpoints."""
    console = console or Console()
    if (run_dir / "recipe.yaml").is_file():
        raw = yaml.safe_load((run_dir / "recipe.yaml").read_text())
        stages = [validate_run(s, f"run '{run_dir}'") for s in raw["stages"]]
    elif (run_dir / "config.yaml").is_file():
        stages = [validate_run(yaml.safe_load((run_dir / "config.yaml").read_text()), f"run '{run_dir}'")]
    else:
        raise SmallViTError(f"'{run_dir}' is not a run folder (no config.yaml or recipe.yaml): check the path")
    return _run_stages(stages, stage_dirs(run_dir, stages), run_dir, quiet, console, resume=True)


def _run_stages(
    stages: list[RunConfig], dirs: list[Path], run_dir: Path, quiet: bool, console: Console, resume: bool = False
) -> list[dict]:
    summaries = []
    for i, (stage, stage_dir) in enumerate(zip(stages, dirs)):
        if stage.model.init_from == "previous":
            if i == 0:
                raise SmallViTError(
                    f"stage '{stage.name}' has model.init_from=previous but no stage before it: "
                    "give model.init_from=runs/<pre-training run>"
                )
            stage = stage.model_copy(update={"model": stage.model.model_copy(update={"init_from": str(dirs[i - 1])})})
        summary_path = stage_dir / "summary.json"
        if resume and summary_path.is_file():
            console.print(f"stage {stage.name} already finished: {stage_dir}")
            summaries.append(yaml.safe_load(summary_path.read_text()))
            continue
        has_checkpoint = (stage_dir / "checkpoints" / "last.safetensors").is_file()
        if len(stages) > 1:
            console.rule(f"stage {i + 1}/{len(stages)}: {stage.name}")
        summaries.append(train(stage, stage_dir, resume=resume and has_checkpoint, quiet=quiet, console=console))
    if len(stages) > 1:
        write_json(run_dir / "summary.json", {"stages": summaries})
    return summaries
