"""Runs a recipe: one stage into its run folder, or several in sequence (pre-train → fine-tune).

A multi-stage run folder holds one sub-folder per stage (``1-relvit-pretrain/``, ``2-relvit-finetune/``);
a stage whose ``model.init_from`` is ``previous`` starts from the stage before it. Resuming skips the stages
that finished (they have ``summary.json``) and continues the first that did not. A stage that its
``train.time_limit_s`` stopped counts as finished until that limit is raised or removed in the run's config.

A new run gets its folder from :func:`training_run_dir` (under ``torchrun``, the one folder all ranks name) after
:func:`check_devices`, and :func:`run_new` removes that folder again if the run stops before training began.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import yaml
from rich.console import Console

from smallvit.config import Recipe, RunConfig, distributed_env, load_recipe, read_yaml_mapping, validate_run
from smallvit.engine.experiment import resolve_checkpoint, resolve_device, write_json
from smallvit.engine.interrupts import sigterm_as_interrupt
from smallvit.engine.logging import read_summary
from smallvit.engine.trainer import epochs_text, train
from smallvit.errors import SmallViTError


def new_run_dir(runs_dir: Path, recipe_name: str, name: str | None) -> Path:
    """Create and return a new, empty run folder ``<runs_dir>/<name or recipe-timestamp>``, adding ``-2``, ``-3``…
    when taken. Creation is one ``mkdir``, which only one process can win, so concurrent runs never share a folder."""
    stem = name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for suffix in range(1, 10_000):
            run_dir = runs_dir / (stem if suffix == 1 else f"{stem}-{suffix}")
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except (FileExistsError, NotADirectoryError):
        in_the_way = next((p for p in (runs_dir, *runs_dir.parents) if p.exists() and not p.is_dir()), runs_dir)
        where = "is a file" if in_the_way == runs_dir else f"is inside a file, {in_the_way}"
        raise SmallViTError(f"--runs-dir {runs_dir} {where}, not a folder: give a folder") from None
    except OSError as err:
        raise SmallViTError(
            f"cannot create a run folder in {runs_dir} ({err.strerror}): give a writable --runs-dir"
        ) from None
    raise SmallViTError(f"{runs_dir} already holds 9999 runs named {stem}: choose another --name")


def training_run_dir(runs_dir: Path, recipe_name: str, name: str | None) -> Path:
    """The folder a new training run writes to: a new one (:func:`new_run_dir`), or under ``torchrun`` the one every
    process names with ``--name``, which rank 0 alone checks holds no run yet (the other ranks may see the folder it
    is making; torchrun stops them all if the check fails)."""
    launch = distributed_env()
    if not launch.distributed:
        return new_run_dir(runs_dir, recipe_name, name)
    if name is None:
        raise SmallViTError("under torchrun every process must write to the same run folder: pass --name NAME")
    run_dir = runs_dir / name
    if launch.is_main and (run_dir / "config.yaml").exists():
        raise SmallViTError(
            f"run folder {run_dir} already holds a run: continue it with --resume {run_dir}, or pass another --name"
        )
    return run_dir


def discard_untrained(run_dir: Path) -> bool:
    """Remove a new run's folder if it stopped before any stage began training (no ``config.yaml`` in it yet: a
    set-up error such as an impossible patch size), so that no empty run is left behind and a retry with the same
    ``--name`` gets that name. Under torchrun the folder is every process's, and is kept. Returns whether it went."""
    if distributed_env().distributed or any(run_dir.rglob("config.yaml")):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def check_devices(recipe: Recipe) -> None:
    """Every stage's ``train.device`` exists here: checked before a run folder is made."""
    for stage in recipe.stages:
        resolve_device(stage.train.device)


def finetune_recipe(source: Path, recipe: str, overrides: list[str]) -> Recipe:
    """``recipe`` with ``overrides``, its first stage starting from the backbone of ``source`` (``model.init_from``):
    a run folder, an export folder or a .safetensors file, checked to hold a checkpoint before the recipe is read."""
    resolve_checkpoint(source)
    loaded = load_recipe(recipe, overrides)
    first = loaded.stages[0]
    loaded.stages[0] = first.model_copy(update={"model": first.model.model_copy(update={"init_from": str(source)})})
    return loaded


class RunLock:
    """``<run>/.lock`` holding the owner's PID and host, taken with ``O_EXCL`` so two processes never train into one
    folder at once; a lock left by a process that no longer runs (on this host) is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.held = False

    def __enter__(self) -> RunLock:
        owner = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    holder = self.path.read_text().strip() or "another process"
                    raise SmallViTError(
                        f"{self.path.parent} is in use by process {holder}: wait for it to finish, or stop it"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(owner + "\n")
            self.held = True
            return self
        raise SmallViTError(f"could not lock {self.path.parent}: try again")

    def _stale(self) -> bool:
        try:
            pid, host = self.path.read_text().split()
            if host != socket.gethostname():
                return False
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError):
            return False
        return False

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)


def stage_dirs(run_dir: Path, stages: list[RunConfig]) -> list[Path]:
    if len(stages) == 1:
        return [run_dir]
    return [run_dir / f"{i + 1}-{stage.name}" for i, stage in enumerate(stages)]


def run_recipe(recipe: Recipe, run_dir: Path, *, quiet: bool = False, console: Console | None = None) -> list[dict]:
    """Train every stage of ``recipe`` into ``run_dir``; returns their summaries."""
    console = console or Console()
    run_dir.mkdir(parents=True, exist_ok=True)
    with sigterm_as_interrupt(), _lock(run_dir):
        if len(recipe.stages) > 1:
            stages_yaml = {"name": recipe.name, "stages": [s.to_dict() for s in recipe.stages]}
            (run_dir / "recipe.yaml").write_text(yaml.safe_dump(stages_yaml, sort_keys=False))
        return _run_stages(recipe.stages, stage_dirs(run_dir, recipe.stages), run_dir, quiet, console)


def run_new(recipe: Recipe, run_dir: Path, *, quiet: bool = False, console: Console | None = None) -> list[dict]:
    """:func:`run_recipe` into a new run folder, which :func:`discard_untrained` removes if the run fails or is
    stopped before training began."""
    try:
        return run_recipe(recipe, run_dir, quiet=quiet, console=console)
    except BaseException:
        discard_untrained(run_dir)
        raise


def _lock(run_dir: Path):
    """The run folder's lock, taken by the first process only (under torchrun, rank 0 stands for all)."""
    return RunLock(run_dir) if distributed_env().is_main else nullcontext()


def resume_run(run_dir: Path, *, quiet: bool = False, console: Console | None = None) -> list[dict]:
    """Continue an interrupted run folder (single- or multi-stage) from its last checkpoints."""
    console = console or Console()
    if (run_dir / "recipe.yaml").is_file():
        raw = read_yaml_mapping(run_dir / "recipe.yaml", "run recipe")
        stages = [validate_run(s, f"run '{run_dir}'") for s in raw.get("stages", [])]
    elif (run_dir / "config.yaml").is_file():
        stages = [validate_run(read_yaml_mapping(run_dir / "config.yaml", "run config"), f"run '{run_dir}'")]
    else:
        raise SmallViTError(f"'{run_dir}' is not a run folder (no config.yaml or recipe.yaml): check the path")
    with sigterm_as_interrupt(), _lock(run_dir):
        return _run_stages(stages, stage_dirs(run_dir, stages), run_dir, quiet, console, resume=True)


def _finished(summary: dict, run_dir: Path, stages: int) -> str:
    """How a finished stage ended; for one stopped by its time limit, how to train on (a resume alone does not)."""
    if not (summary.get("time_limit") or {}).get("stopped"):
        return "already finished"
    config = run_dir / ("recipe.yaml" if stages > 1 else "config.yaml")
    return f"trained {epochs_text(summary)}: to train on, raise or remove train.time_limit_s in {config} and resume"


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
        summary = read_summary(stage_dir) if resume else None
        if summary is not None:
            limit = summary.get("time_limit") or {}
            raised = limit.get("stopped") and (stage.train.time_limit_s or math.inf) > limit["limit_s"]
            if not raised:
                console.print(f"stage {stage.name} {_finished(summary, run_dir, len(stages))}: {stage_dir}")
                summaries.append(summary)
                continue
        has_checkpoint = (stage_dir / "checkpoints" / "last.safetensors").is_file()
        if len(stages) > 1:
            console.rule(f"stage {i + 1}/{len(stages)}: {stage.name}")
        summaries.append(train(stage, stage_dir, resume=resume and has_checkpoint, quiet=quiet, console=console))
    if len(stages) > 1:
        write_json(run_dir / "summary.json", {"stages": summaries})
    return summaries
