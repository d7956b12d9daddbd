"""Sweeps: a YAML list of runs (a recipe and its overrides) × seeds, trained one after another, resumable.

A sweep file::

    name: cifar10-sample-60ep                 # the sweep; the default runs_dir is runs/sweeps/<name>
    description: weak vs strong augmentation  # optional
    runs_dir: runs/sweeps/cifar10-sample-60ep # optional; relative to the current directory, like train --runs-dir
    seeds: [0, 1, 2]                          # every run's seeds (default [0]), unless the run gives its own
    overrides: [epochs=60]                    # applied to every run, before the run's own
    probe: [knn, linear]                      # optional: after a multi-stage run, `smallvit eval knn|linear` of
                                              # its first (pre-training) stage
    runs:
      - {name: weak, recipe: quickstart, label: "ViT, crop + flip"}
      - {name: strong, recipe: supervised, baseline: true, label: "ViT, RandAugment + mixup/CutMix + erasing"}
      - {name: relvit-joint, recipe: ../recipes/x.yaml, overrides: [objectives.1.weight=0.5], seeds: [0]}

Each run has a ``name`` (its folder and its row in ``smallvit compare``), a ``recipe`` (a shipped recipe's name, or a
``.yaml`` path looked up next to the sweep file first, then in the current directory), and optionally
``overrides``, ``seeds`` (replacing the sweep's), a ``label`` (a longer description for tables) and
``baseline: true`` (at most one run: the row ``smallvit compare`` measures gains against). Unknown keys are errors.
In overrides, ``{runs_dir}`` and ``{seed}`` stand for the sweep's run folder and the run's seed, so a row can start
from another row's run of the same seed: ``model.init_from={runs_dir}/pretrain/seed{seed}``.

Run ``name`` with seed ``k`` trains into ``<runs_dir>/<name>/seed<k>`` by ``smallvit train RECIPE OVERRIDES seed=k
--runs-dir <runs_dir>/<name> --name seed<k> --quiet``, in a child process of the same Python (memory is returned
after every run, and a crash stays in its run), in the sweep file's order. A rerun of the sweep skips a run whose
folder has ``summary.json`` (a multi-stage run writes it when its last stage finished), continues one with a
``config.yaml`` or ``recipe.yaml`` but no summary by ``smallvit train --resume FOLDER``, and starts the others.
Each run folder gets a ``sweep.json`` (sweep, row, label, baseline flag, seed, command) that ``smallvit compare``
reads.

Time estimates: epochs × training images (per stage, summed) ÷ images/s, where images/s is the mean training
throughput (``images_per_s`` of ``summary.json``) of the finished runs of the same row, else of all finished runs of
the sweep, else :data:`DEFAULT_IMAGES_PER_S`. A probe counts as one more epoch of the first stage. The training-set
size is the recipe's subset size, else the split's size (loaded once; a carved validation share taken off), so an
estimate is approximate, and unknown (``?``) when the dataset cannot be read here.
"""

from __future__ import annotations

import functools
import json
import shlex
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, model_validator
from rich.console import Console
from rich.table import Table

from smallvit.config import Recipe, RunConfig, load_recipe, split_override, validate_run
from smallvit.errors import ConfigError, SmallViTError, Strict, validation_error

DEFAULT_IMAGES_PER_S = 100.0
"""Training throughput assumed before a sweep has finished runs: vit_lite at 32 px on two CPU threads (fp32) trains
about 100-120 images/s (results/legacy-20ep/runs.csv)."""

Status = Literal["done", "partial", "todo"]
Runner = Callable[[list[str]], int]
"""Runs one command (a full argv) to completion and returns its exit status."""

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
Seed = Annotated[int, Field(ge=0)]


def _check_overrides(overrides: list[str]) -> list[str]:
    """Each override is key=value and none sets the seed (that is what ``seeds`` is for)."""
    for pair in overrides:
        try:
            key, _ = split_override(pair)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        if key == "train.seed":
            raise ValueError(f"override '{pair}': give seeds with 'seeds: [...]', not as an override")
    return overrides


def _check_seeds(seeds: list[int] | None) -> list[int] | None:
    """No seed twice."""
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed: list each seed once")
    return seeds


Overrides = Annotated[list[str], AfterValidator(_check_overrides)]
Seeds = Annotated[list[Seed], Field(min_length=1), AfterValidator(_check_seeds)]


class SweepRun(Strict):
    """One row of a sweep: a recipe and its overrides, trained once per seed."""

    name: str = Field(pattern=_NAME, description="folder name and row name in `smallvit compare`")
    recipe: str = Field(description="shipped recipe name or .yaml path (sweep file's folder first, then cwd)")
    overrides: Overrides = Field([], description="key=value overrides after the sweep's own")
    seeds: Seeds | None = Field(None, description="replaces the sweep's seeds")
    label: str | None = Field(None, description="longer description shown by `smallvit compare`")
    baseline: bool = Field(False, description="the row `smallvit compare` measures gains against")


class Sweep(Strict):
    """A sweep file: runs × seeds. ``path`` is the file it was loaded from (set by :func:`load_sweep`)."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    runs_dir: str | None = Field(None, description="relative to the current directory; default runs/sweeps/<name>")
    seeds: Seeds = [0]
    overrides: Overrides = Field([], description="applied to every run, before the run's own")
    probe: list[Literal["knn", "linear"]] = Field([], description="frozen evaluations of multi-stage runs' stage 1")
    runs: list[SweepRun] = Field(min_length=1)
    _path: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _rows(self):
        names = [r.name for r in self.runs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"run name(s) {repeated} appear more than once: give every run its own name")
        baselines = [r.name for r in self.runs if r.baseline]
        if len(baselines) > 1:
            raise ValueError(f"runs {baselines} are all marked baseline: mark at most one")
        return self

    @property
    def path(self) -> Path | None:
        return self._path

    def seeds_of(self, run: SweepRun) -> list[int]:
        return run.seeds if run.seeds is not None else self.seeds

    def default_runs_dir(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else Path("runs") / "sweeps" / self.name


# ---------------------------------------------------------------- loading


def _relative(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (commands stay short and portable)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve_recipe(recipe: str, sweep_dir: Path) -> str:
    """A shipped recipe's name unchanged; a .yaml path found next to the sweep file, else in the current directory."""
    if Path(recipe).suffix not in (".yaml", ".yml"):
        return recipe
    for candidate in (sweep_dir / recipe, Path(recipe)):
        if candidate.is_file():
            return _relative(candidate)
    raise ConfigError(
        f"recipe file '{recipe}' is neither in {sweep_dir} (the sweep file's folder) nor in the current directory"
    )


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; recipe paths come back resolved (relative to the current directory)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file '{path}' does not exist: check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"sweep file '{path}' is not valid YAML: it is binary, not text; give a sweep file") from None
    except (yaml.YAMLError, ValueError, RecursionError) as err:  # ValueError: e.g. a date that does not exist
        reason = "nested too deeply" if isinstance(err, RecursionError) else (str(err).splitlines() or ["?"])[0]
        raise ConfigError(f"sweep file '{path}' is not valid YAML: {reason}") from None
    except OSError as err:
        raise ConfigError(f"sweep file '{path}' cannot be read ({err.strerror}): check the path") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file '{path}' must be a YAML mapping with name, runs and optionally seeds, overrides")
    try:
        sweep = Sweep.model_validate(raw)
    except ValidationError as err:
        raise validation_error(err, Sweep, f"sweep file '{path}'") from None
    runs = []
    for run in sweep.runs:
        try:
            runs.append(run.model_copy(update={"recipe": resolve_recipe(run.recipe, path.parent)}))
        except ConfigError as err:
            raise ConfigError(f"sweep file '{path}', run '{run.name}': {err}") from None
    sweep = sweep.model_copy(update={"runs": runs})
    sweep._path = path
    return sweep


# ---------------------------------------------------------------- planning


@dataclass
class PlannedRun:
    """One (run, seed) of a sweep: where it trains, how far it got, and what is left to run."""

    run: SweepRun
    index: int
    seed: int
    folder: Path
    recipe: Recipe
    overrides: list[str]  # the sweep's and the run's, placeholders filled in (without seed=)
    train_command: list[str]
    status: Status = "todo"
    progress: str = ""
    commands: list[list[str]] = field(default_factory=list)
    image_epochs_left: float | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.run.name}/seed{self.seed}"


@dataclass
class SweepPlan:
    """Every planned (run, seed) in order, with the images/s each row's estimate uses and where it came from."""

    sweep: Sweep
    runs_dir: Path
    runs: list[PlannedRun]
    rates: dict[str, tuple[float, str]]

    def seconds(self, planned: PlannedRun) -> float | None:
        if planned.image_epochs_left is None:
            return None
        return planned.image_epochs_left / self.rates[planned.run.name][0]

    @property
    def total_seconds(self) -> float:
        """Seconds left over the runs whose estimate is known (see :attr:`unknown`)."""
        return sum(s for p in self.runs if p.commands and (s := self.seconds(p)) is not None)

    @property
    def unknown(self) -> int:
        """Runs with something left whose time cannot be estimated here (their dataset cannot be read)."""
        return sum(p.commands != [] and self.seconds(p) is None for p in self.runs)


def shown(command: list[str]) -> str:
    """A ``smallvit`` argument list as the line a user would type."""
    return "smallvit " + shlex.join(command)


@functools.cache
def _split_size(dataset: str, split: str, root: str | None, image_size: int | None, in_chans: int) -> tuple[int, int]:
    from smallvit.data import load_dataset

    loaded = load_dataset(dataset, split, root=root, image_size=image_size, in_chans=in_chans)
    return len(loaded), len(loaded.classes)


def train_image_count(stage: RunConfig) -> int | None:
    """Images one epoch of ``stage`` trains on (approximately: see the module docstring); None when unknown here."""
    from smallvit.data import get_dataset_info

    data = stage.data
    try:
        info = get_dataset_info(data.dataset)
        if data.subset is not None and data.subset.total is not None:
            return data.subset.total
        if data.subset is not None and info.num_classes:
            return data.subset.per_class * info.num_classes
        count, classes = _split_size(data.dataset, data.train_split, data.root, data.image_size, data.in_chans)
    except (SmallViTError, OSError):
        return None
    if data.subset is not None:
        return min(count, data.subset.per_class * classes)
    carved = data.val_split == "none" or (data.val_split is None and info.val_split is None)
    return round(count * (1 - data.val_fraction)) if carved else count


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _epochs_done(stage_dir: Path) -> int:
    state = _read_json(stage_dir / "checkpoints" / "last.json") or {}
    return int(state.get("epoch") or 0)


def _probes_done(stage_dir: Path) -> set[str]:
    path = stage_dir / "evaluations.jsonl"
    if not path.is_file():
        return set()
    kinds = set()
    for line in path.read_text().splitlines():
        try:
            kinds.add(json.loads(line).get("kind"))
        except ValueError:
            continue
    return kinds


def _config_changed(folder: Path, recipe: Recipe) -> bool:
    """Whether the config a run folder was started with differs from the sweep's (False when it cannot tell)."""
    try:
        if len(recipe.stages) > 1:
            saved = yaml.safe_load((folder / "recipe.yaml").read_text())["stages"]
        else:
            saved = [yaml.safe_load((folder / "config.yaml").read_text())]
        return [validate_run(s, str(folder)) for s in saved] != recipe.stages
    except (OSError, KeyError, TypeError, yaml.YAMLError, SmallViTError):
        return False


def _summary_stages(folder: Path) -> list[dict]:
    summary = _read_json(folder / "summary.json") or {}
    return summary.get("stages", [summary])


def _run_rate(stages: list[dict], image_epochs: list[float | None]) -> float | None:
    """A finished run's training throughput over all its stages (images/s)."""
    rates = [s.get("images_per_s") for s in stages]
    if len(rates) == len(image_epochs) and all(rates) and all(image_epochs):
        return sum(image_epochs) / sum(n / r for n, r in zip(image_epochs, rates))
    known = [r for r in rates if r]
    return statistics.mean(known) if known else None


def _expand(override: str, runs_dir: Path, seed: int) -> str:
    """``{runs_dir}`` and ``{seed}`` filled in (plain replacement: an override's YAML may hold other braces)."""
    return override.replace("{runs_dir}", runs_dir.as_posix()).replace("{seed}", str(seed))


def plan_run(sweep: Sweep, run: SweepRun, index: int, seed: int, runs_dir: Path) -> PlannedRun:
    """Load the run's recipe with its overrides and seed, and find what is left to do in its folder."""
    from smallvit.engine.runner import stage_dirs

    overrides = [_expand(o, runs_dir, seed) for o in (*sweep.overrides, *run.overrides)]
    try:
        recipe = load_recipe(run.recipe, [*overrides, f"seed={seed}"])
    except ConfigError as err:
        raise ConfigError(f"sweep '{sweep.name}', run '{run.name}': {err}") from None
    folder = runs_dir / run.name / f"seed{seed}"
    train = ["train", run.recipe, *overrides, f"seed={seed}", "--runs-dir", str(folder.parent), "--name", folder.name]
    planned = PlannedRun(
        run=run,
        index=index,
        seed=seed,
        folder=folder,
        recipe=recipe,
        overrides=overrides,
        train_command=[*train, "--quiet"],
    )
    dirs = stage_dirs(folder, recipe.stages)
    images = [train_image_count(stage) for stage in recipe.stages]
    epochs = [stage.train.epochs for stage in recipe.stages]
    done = [0] * len(dirs)
    probes = []
    if len(dirs) > 1:
        probes = [kind for kind in sweep.probe if kind not in _probes_done(dirs[0])]
    if (folder / "summary.json").is_file():
        planned.status = "partial" if probes else "done"
        planned.progress = f"probe {', '.join(probes)}" if probes else ""
        done = epochs
    elif (folder / "recipe.yaml").is_file() or (folder / "config.yaml").is_file():
        planned.status = "partial"
        planned.commands.append(["train", "--resume", str(folder), "--quiet"])
        done = [e if (d / "summary.json").is_file() else min(_epochs_done(d), e) for d, e in zip(dirs, epochs)]
        current = next(i for i, (d, e) in enumerate(zip(done, epochs)) if d < e) if done != epochs else len(dirs) - 1
        stage = f"stage {current + 1}/{len(dirs)}, " if len(dirs) > 1 else ""
        planned.progress = f"{stage}epoch {done[current]}/{epochs[current]}"
    elif folder.exists() and any(folder.iterdir()):
        raise ConfigError(
            f"'{folder}' exists but is not a run folder (no summary.json, config.yaml or recipe.yaml): move it away"
        )
    else:
        planned.commands.append(planned.train_command)
    planned.commands += [["eval", kind, str(dirs[0])] for kind in probes]
    if planned.status != "todo" and _config_changed(folder, recipe):
        planned.note = "its config differs from the sweep's (the folder's is kept: delete the folder to retrain)"
    if all(n is not None for n in images):
        left = sum((e - d) * n for e, d, n in zip(epochs, done, images))
        planned.image_epochs_left = float(left + len(probes) * images[0])
    return planned


def plan_sweep(
    sweep: Sweep,
    runs_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> SweepPlan:
    """Every (run, seed) of ``sweep`` with its status (done / partial / todo), commands left and time estimate.

    ``runs_dir`` replaces the sweep's; ``only`` keeps the named runs and ``seeds`` those seeds (so a queue can run
    seed 0 of every row before the other seeds); the estimates still learn from every run.
    """
    runs_dir = Path(runs_dir) if runs_dir is not None else sweep.default_runs_dir()
    names = [r.name for r in sweep.runs]
    only = [n for item in only or [] for n in item.split(",") if n]
    unknown = [n for n in only if n not in names]
    if unknown:
        known = ", ".join(names)
        raise ConfigError(f"--only {', '.join(unknown)}: no such run in sweep '{sweep.name}' (its runs: {known})")
    planned = [
        plan_run(sweep, run, index, seed, runs_dir)
        for index, run in enumerate(sweep.runs)
        for seed in sweep.seeds_of(run)
    ]
    measured: dict[str, list[float]] = {}
    for p in planned:
        if (p.folder / "summary.json").is_file():
            counts = [train_image_count(s) for s in p.recipe.stages]
            image_epochs = [n * s.train.epochs if n else None for n, s in zip(counts, p.recipe.stages)]
            rate = _run_rate(_summary_stages(p.folder), image_epochs)
            if rate:
                measured.setdefault(p.run.name, []).append(rate)
    everything = [r for rates in measured.values() for r in rates]
    rates = {}
    for name in names:
        if measured.get(name):
            rates[name] = (statistics.mean(measured[name]), "row")
        elif everything:
            rates[name] = (statistics.mean(everything), "sweep")
        else:
            rates[name] = (DEFAULT_IMAGES_PER_S, "default")
    missing = sorted(set(seeds or []) - {p.seed for p in planned})
    if missing:
        raise ConfigError(f"--seed {', '.join(map(str, missing))}: no run of sweep '{sweep.name}' has that seed")
    kept = [p for p in planned if (not only or p.run.name in only) and (not seeds or p.seed in seeds)]
    return SweepPlan(sweep=sweep, runs_dir=runs_dir, runs=kept, rates=rates)


def format_duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3 h 05 min``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def plan_table(plan: SweepPlan) -> Table:
    """The plan as a table: run, seed, status, the command(s) left, the images/s used and the time estimate."""
    title = f"sweep {plan.sweep.name} → {plan.runs_dir}"
    table = Table("run", "seed", "status", "command", "images/s", "estimate", title=title, title_justify="left")
    styles = {"done": "green", "partial": "yellow", "todo": ""}
    for p in plan.runs:
        rate, source = plan.rates[p.run.name]
        status = f"[{styles[p.status]}]{p.status}[/]" if styles[p.status] else p.status
        if p.progress:
            status += f" ({p.progress})"
        if p.note:
            status += f"\n[red]{p.note}[/]"
        commands = "\n".join(shown(c) for c in p.commands) or "–"
        estimate = format_duration(plan.seconds(p)) if p.commands else "–"
        table.add_row(p.run.name, str(p.seed), status, commands, f"{rate:.0f} ({source})", estimate)
    return table


def plan_total(plan: SweepPlan) -> str:
    """One line: how many runs are in each status and the time left."""
    counts = {s: sum(p.status == s for p in plan.runs) for s in ("done", "partial", "todo")}
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    if not any(p.commands for p in plan.runs):
        estimate = "nothing left to run"
    else:
        estimate = f"about {format_duration(plan.total_seconds)} left"
        if plan.unknown:
            estimate += f" + {plan.unknown} run(s) whose dataset cannot be read here (?)"
    return (
        f"{len(plan.runs)} runs: {parts}; {estimate}. Images/s come from finished runs of the same row, else of the "
        f"sweep, else {DEFAULT_IMAGES_PER_S:.0f} (default)."
    )


# ---------------------------------------------------------------- running


def run_command(argv: list[str]) -> int:
    """Run ``argv`` in a child process on this terminal and return its exit status.

    On Ctrl-C the child (in the same process group) receives the interrupt too and stops; if it has not exited after
    10 s it is sent one, then killed after 10 s more. Checkpoints are written atomically, so the run resumes cleanly.
    """
    child = subprocess.Popen(argv)
    try:
        return child.wait()
    except KeyboardInterrupt:
        for action in (lambda: None, lambda: child.send_signal(signal.SIGINT), child.kill):
            action()
            try:
                child.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def sweep_entry(plan: SweepPlan, planned: PlannedRun) -> dict:
    """What ``sweep.json`` in a run folder records: which sweep, row and seed it is, and its command."""
    sweep, run = plan.sweep, planned.run
    return {
        "sweep": sweep.name,
        "file": _relative(sweep.path) if sweep.path else None,
        "row": run.name,
        "index": planned.index,
        "label": run.label,
        "baseline": run.baseline,
        "seed": planned.seed,
        "recipe": run.recipe,
        "overrides": planned.overrides,
        "command": shown(planned.train_command),
    }


def run_sweep(plan: SweepPlan, *, runner: Runner = run_command, console: Console | None = None) -> list[PlannedRun]:
    """Run what ``plan`` has left, in order, each command through ``runner`` (a child process by default).

    Finished runs are skipped and get their ``sweep.json`` refreshed. A run that fails is reported and the sweep goes
    on with the next; at the end a :class:`SmallViTError` names the failed runs. Ctrl-C (or a child that exits with
    130) raises ``KeyboardInterrupt`` after the current run's ``sweep.json`` is written. Returns the runs it ran.
    """
    console = console or Console()
    ran, failed = [], []
    todo = [p for p in plan.runs if p.commands]
    for planned in plan.runs:
        try:
            if not planned.commands:
                continue
            position = f"{len(ran) + len(failed) + 1}/{len(todo)}"
            console.rule(f"[{position}] {planned.key}: {'continue' if planned.status == 'partial' else 'start'}")
            if planned.note:
                console.print(f"[red]{planned.key}: {planned.note}[/]")
            if planned.status == "todo" and planned.folder.is_dir():
                planned.folder.rmdir()  # an empty folder left by a run that failed before writing its config
            for command in planned.commands:
                console.print(shown(command), markup=False, highlight=False)
                code = runner([sys.executable, "-m", "smallvit.cli", *command])
                if code in (130, -signal.SIGINT):
                    raise KeyboardInterrupt
                problem = f"exit status {code}" if code != 0 else None
                if code == 0 and command[0] == "train" and not (planned.folder / "summary.json").is_file():
                    problem = f"no summary.json in {planned.folder}"
                if problem:
                    failed.append(f"{planned.key} ({problem})")
                    break
            else:
                ran.append(planned)
        finally:
            if planned.folder.is_dir():
                entry = json.dumps(sweep_entry(plan, planned), indent=2)
                (planned.folder / "sweep.json").write_text(entry + "\n")
    console.print(
        f"sweep {plan.sweep.name}: {len(ran)} run(s) trained, {len(plan.runs) - len(todo)} already done, "
        f"{len(failed)} failed; compare them with `smallvit compare {plan.runs_dir}`"
    )
    if failed:
        raise SmallViTError(f"{len(failed)} run(s) failed: {'; '.join(failed)}: see their output above, fix, and rerun")
    return ran


__all__ = [
    "DEFAULT_IMAGES_PER_S",
    "PlannedRun",
    "Sweep",
    "SweepPlan",
    "SweepRun",
    "format_duration",
    "load_sweep",
    "plan_sweep",
    "plan_table",
    "plan_total",
    "run_command",
    "run_sweep",
    "train_image_count",
]
