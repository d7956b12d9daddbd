"""Compare finished runs: rows of runs (one row per recipe row, its seeds averaged), as a table, JSON or a report.

**What a row is.** Runs are grouped by their row name — the sweep row (``sweep.json`` in the run folder, written by
``smallvit sweep``), else the ``id`` of an old summary (``results/summaries/``) without its ``-s<seed>`` suffix, else
the recipe's name — *and* by their protocol: the dataset, the epochs of each stage, and the splits (the sha256 of the
train / validation / test splits that the summary's provenance records; summaries written before validation splits
existed form their own protocol, ``legacy``). Runs with the same name but another protocol become another row, its
name followed by what differs (``quickstart [cifar10-jpeg, 1 ep]``), so numbers from different protocols are never
averaged together. The same run found twice (a run folder and a copy of its summary) counts once.

**What the numbers are.** Top-1 is the test top-1 of the run's last epoch (``final["test/supervised/acc1"]``,
pre-declared: never a checkpoint chosen on the test split); validation top-1 is ``final["val/supervised/acc1"]``;
a multi-stage run's are those of its last stage. With ``checkpoint="best"`` both are those of the checkpoint the run
chose on validation (``best.safetensors``: ``best["test"]`` and the validation top-1 at ``best["epoch"]``), the
figures a user who keeps that checkpoint gets; a run that chose none (``train.best_metric: null``) keeps its last
weights, so its final figures stand. A legacy summary (``eval/supervised/acc1``, measured on the test
split) gives the test top-1 and no validation. Accuracies are in %, as mean ± the sample standard deviation over
the row's runs (n − 1 in the denominator; none for one run). The gain of a row is its mean minus the baseline row's
mean, in points, ± sqrt(s1²/n1 + s2²/n2), the standard deviation of a difference of two independent means (given
only when both rows have two runs or more). The baseline row is ``baseline`` (a row name), else the row a sweep
marked ``baseline: true``; a gain is only given for rows tested on the same images as the baseline: the same dataset
and the same test split (its sha256 in the summaries' provenance; old summaries count as one protocol of their own,
so a legacy row gets no gain against a new baseline). Wall-clock is the sum over a run's stages, images/s the
training throughput of its stages weighted by their wall-clock; both averaged over the row's runs. kNN and linear
probe are the last ``smallvit eval knn|linear --split test`` logged for a multi-stage run's first (pre-training)
stage, or for a single-stage run's folder, when there is one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.table import Table

from smallvit.errors import SmallViTError

TOP1, VAL1, LEGACY_TOP1 = "test/supervised/acc1", "val/supervised/acc1", "eval/supervised/acc1"
CHECKPOINTS = ("final", "best")  # which weights' accuracies a comparison reads (see the module docstring)
_RUN_FILES = ("summary.json", "sweep.json", "config.yaml", "recipe.yaml", "metrics.jsonl", "evaluations.jsonl")


@dataclass
class RunResult:
    """One finished run (a run folder or a summary file), read into what a comparison needs."""

    source: Path
    name: str
    label: str | None = None
    dataset: str | None = None
    epochs: tuple[int, ...] = ()
    protocol: str | None = None  # "legacy", a hash of the splits' sha256s, or None when not recorded
    test_split: str | None = None  # the test split's sha256, when recorded
    seed: int | None = None
    top1: float | None = None  # fractions, as in summary.json, of the weights `checkpoint` names
    val1: float | None = None
    checkpoint: str = "final"
    wall_clock_s: float | None = None
    images_per_s: float | None = None
    device: str | None = None
    precision: str | None = None
    knn: float | None = None
    linear: float | None = None
    baseline: bool = False
    sweep: str | None = None
    index: int | None = None
    command: str | None = None
    folder: Path | None = None  # the run folder, when there is one (for metrics.jsonl)
    curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, validation top-1) of the last stage

    @property
    def legacy(self) -> bool:
        return self.protocol == "legacy"


@dataclass
class Row:
    """Runs of one row under one protocol, with their statistics (accuracies in %, gains in points)."""

    name: str
    runs: list[RunResult]
    label: str | None = None
    dataset: str | None = None
    epochs: tuple[int, ...] = ()
    protocol: str | None = None
    top1_mean: float | None = None
    top1_std: float | None = None
    val_mean: float | None = None
    val_std: float | None = None
    gain_mean: float | None = None
    gain_std: float | None = None
    baseline: bool = False
    baseline_row: str | None = None
    knn_mean: float | None = None
    linear_mean: float | None = None
    wall_clock_s: float | None = None
    images_per_s: float | None = None

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def legacy(self) -> bool:
        return self.protocol == "legacy"

    @property
    def device(self) -> str:
        devices = dict.fromkeys(f"{r.device} ({r.precision})" if r.precision else str(r.device) for r in self.runs)
        return "; ".join(devices)

    @property
    def commands(self) -> list[str]:
        return list(dict.fromkeys(r.command for r in self.runs if r.command))

    def to_json(self) -> dict:
        """The row as a JSON object (accuracies in %, gains in points, wall-clock in s; 4 decimals)."""
        return _rounded(
            {
                "name": self.name,
                "label": self.label,
                "dataset": self.dataset,
                "epochs": list(self.epochs),
                "protocol": self.protocol,
                "runs": len(self.runs),
                "seeds": self.seeds,
                "top1_mean": self.top1_mean,
                "top1_std": self.top1_std,
                "top1_runs": [_percent(r.top1) for r in self.runs],
                "checkpoint": self.runs[0].checkpoint,
                "val_mean": self.val_mean,
                "val_std": self.val_std,
                "baseline": self.baseline,
                "baseline_row": self.baseline_row,
                "gain_mean": self.gain_mean,
                "gain_std": self.gain_std,
                "knn_mean": self.knn_mean,
                "linear_mean": self.linear_mean,
                "wall_clock_s": self.wall_clock_s,
                "images_per_s": self.images_per_s,
                "device": self.device,
                "commands": self.commands,
                "sources": [str(r.source) for r in self.runs],
            }
        )


def _rounded(value):
    """``value`` with every float rounded to 4 decimals (0.1 + 0.2 prints as 0.3)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ---------------------------------------------------------------- reading runs


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SmallViTError(f"'{path}' is not a readable JSON file ({err}): remove it or give another path") from None
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_summary(data: dict) -> bool:
    return isinstance(data.get("final"), dict) or isinstance(data.get("stages"), list)


def last_stage_dir(folder: Path) -> Path:
    """A multi-stage run folder's last stage (``2-relvit-finetune/``); any other folder unchanged."""
    stages = [p for p in folder.iterdir() if p.is_dir() and p.name.split("-")[0].isdigit() and "-" in p.name]
    if not (folder / "recipe.yaml").is_file() or not stages:
        return folder
    return max(stages, key=lambda p: int(p.name.split("-")[0]))


def _first_stage_dir(folder: Path) -> Path:
    """A multi-stage run's first (pre-training) stage; a single-stage run's own folder."""
    stages = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("1-")]
    return stages[0] if (folder / "recipe.yaml").is_file() and stages else folder


def _records(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file, skipping lines a crash left half-written."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _last_evaluation(stage_dir: Path | None, kind: str) -> float | None:
    """The last ``kind`` (knn, linear) evaluation of the test split (runs from before validation splits: of their one
    split), so that it compares with the table's test top-1."""
    records = _records(stage_dir / "evaluations.jsonl") if stage_dir else []
    found = [r for r in records if r.get("kind") == kind and r.get("split", "test") == "test"]
    return found[-1].get("acc1") if found else None


def _validation_curve(stage_dir: Path) -> list[tuple[float, float]]:
    records = _records(stage_dir / "metrics.jsonl")
    return [(float(r["epoch"]), float(r[VAL1])) for r in records if r.get("kind") == "eval" and r.get(VAL1) is not None]


def _splits_id(splits: dict | None) -> tuple[str | None, str | None]:
    """(a short hash of every split's sha256, the test split's sha256) from a summary's provenance."""
    if not isinstance(splits, dict) or not splits:
        return None, None
    shas = {name: (info or {}).get("sha256") for name, info in sorted(splits.items()) if isinstance(info, dict)}
    digest = hashlib.sha256(json.dumps(shas, sort_keys=True).encode()).hexdigest()[:8]
    return digest, shas.get("test")


def _override(args: list[str], *keys: str) -> str | None:
    for arg in reversed(args):
        key, sep, value = arg.partition("=")
        if sep and key in keys:
            return value
    return None


def _legacy_dataset(args: list[str], near: Path) -> str | None:
    """The dataset an old summary's run trained on: its ``dataset=`` override, else its recipe's (the recipe found
    from the current directory or from a folder above the summary)."""
    from smallvit.config import load_recipe

    if dataset := _override(args, "dataset", "data.dataset"):
        return dataset
    if not args:
        return None
    recipe = args[0]
    if Path(recipe).suffix in (".yaml", ".yml"):
        found = [p / recipe for p in (Path.cwd(), *near.resolve().parents) if (p / recipe).is_file()]
        if not found:
            return None
        recipe = str(found[0])
    try:
        return load_recipe(recipe, [a for a in args[1:] if "=" in a]).stages[-1].data.dataset
    except SmallViTError:
        return None


def _stage_wall_clock(stage: dict) -> float:
    """Seconds a stage took over all its starts: a resumed stage's ``training_s`` (summaries written before
    wall-clock counted every start kept only the last start's in ``wall_clock_s``)."""
    wall = float(stage.get("wall_clock_s") or 0)
    return max(wall, float(stage.get("training_s") or 0)) if stage.get("resumed") else wall


def _stage_numbers(stages: list[dict]) -> tuple[float | None, float | None]:
    """(wall-clock summed over stages, images/s weighted by each stage's wall-clock)."""
    walls = [_stage_wall_clock(s) for s in stages]
    rates = [(float(s["images_per_s"]), w) for s, w in zip(stages, walls) if s.get("images_per_s")]
    wall = sum(walls) if any(walls) else None
    if not rates:
        return wall, None
    weight = sum(w for _, w in rates)
    return wall, (sum(r * w for r, w in rates) / weight if weight else statistics.mean(r for r, _ in rates))


def _best_checkpoint(stage: dict, curve: list[tuple[float, float]]) -> tuple[float, float | None] | None:
    """(test top-1, validation top-1) of the checkpoint a stage chose on validation; None when it chose none."""
    best = stage.get("best") or {}
    test = (best.get("test") or {}).get(TOP1)
    if test is None:
        return None
    if best.get("metric") == VAL1:
        return test, best.get("value")
    return test, dict(curve).get(float(best["epoch"])) if best.get("epoch") is not None else None


def read_run(path: Path, checkpoint: str = "final") -> RunResult:
    """Read a run folder (its ``summary.json``, ``sweep.json`` and configs) or a summary file, new or old format;
    ``checkpoint`` ("final" or "best") names the weights whose accuracies are read (see the module docstring)."""
    folder = path if path.is_dir() else (path.parent if path.name == "summary.json" else None)
    summary_path = path / "summary.json" if path.is_dir() else path
    data = _load_json(summary_path)
    if not _is_summary(data):
        raise SmallViTError(f"'{summary_path}' is not a run summary (no 'final' or 'stages'): give a run folder")
    stages = data["stages"] if isinstance(data.get("stages"), list) else [data]
    last = stages[-1] if stages else {}
    final = last.get("final") or {}
    provenance = last.get("provenance") or {}
    sweep = data.get("sweep") or {}
    if not sweep and folder and (folder / "sweep.json").is_file():
        sweep = _load_json(folder / "sweep.json")
    entry = data.get("entry") or {}
    stage_dir = last_stage_dir(folder) if folder else None
    config = _read_yaml(stage_dir / "config.yaml") if stage_dir else {}
    split_keys = any(k.startswith(("test/", "val/")) for k in final)
    legacy = bool(entry) or (not split_keys and any(k.startswith("eval/") for k in final))
    protocol, test_split = ("legacy", None) if legacy else _splits_id(provenance.get("splits"))
    wall, rate = _stage_numbers(stages)
    run = RunResult(
        source=path,
        name="",
        label=sweep.get("label") or entry.get("label"),
        epochs=tuple(int(s.get("epochs") or 0) for s in stages),
        protocol=protocol,
        test_split=test_split,
        top1=final.get(LEGACY_TOP1 if legacy else TOP1),
        val1=None if legacy else final.get(VAL1),
        wall_clock_s=wall,
        images_per_s=rate,
        device=last.get("device"),
        precision=last.get("precision"),
        knn=data.get("knn"),
        linear=data.get("linear"),
        baseline=bool(sweep.get("baseline")),
        sweep=sweep.get("sweep"),
        index=sweep.get("index"),
        command=sweep.get("command"),
        folder=folder,
    )
    args = [str(a) for a in entry.get("args", [])]
    if entry:
        run.command = "smallvit train " + shlex.join(args)
        seed = _override(args, "seed", "train.seed") or (re.findall(r"-s(\d+)$", entry.get("id", "")) or [None])[0]
        run.seed = int(seed) if seed is not None else None
        run.dataset = _legacy_dataset(args, path)
    recipe_name = _read_yaml(folder / "recipe.yaml").get("name") if folder else None
    names = (sweep.get("row"), re.sub(r"-s\d+$", "", entry.get("id", "")), recipe_name, last.get("recipe"))
    names += (provenance.get("recipe"), last.get("name"), (folder or path).name)
    run.name = next(str(n) for n in names if n)
    run.dataset = provenance.get("dataset") or (config.get("data") or {}).get("dataset") or run.dataset
    seeds = (sweep.get("seed"), provenance.get("seed"), run.seed, (config.get("train") or {}).get("seed"))
    run.seed = next((int(s) for s in seeds if s is not None), None)
    if folder:
        first = _first_stage_dir(folder)
        run.knn = run.knn if run.knn is not None else _last_evaluation(first, "knn")
        run.linear = run.linear if run.linear is not None else _last_evaluation(first, "linear")
        run.curve = _validation_curve(stage_dir)
    if checkpoint == "best" and not legacy and (chosen := _best_checkpoint(last, run.curve)):
        run.top1, run.val1 = chosen
    run.checkpoint = checkpoint
    return run


def _find(root: Path) -> list[Path]:
    """Run folders (with summary.json) and summary files under ``root``, in sorted order; an unfinished multi-stage
    run's finished stages are not runs of their own."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs.sort()
        if "summary.json" in files:
            found.append(here)
            dirs.clear()
            continue
        if "recipe.yaml" in files:
            dirs.clear()
            continue
        for name in sorted(files):
            if name.endswith(".json") and name != "sweep.json" and _looks_like_summary(here / name):
                found.append(here / name)
    return found


def _looks_like_summary(path: Path) -> bool:
    """Whether a .json file met while searching a folder is a run summary (unreadable files are not)."""
    try:
        return _is_summary(_load_json(path))
    except SmallViTError:
        return False


def collect_runs(paths: list[str | Path], checkpoint: str = "final") -> list[RunResult]:
    """Every finished run in ``paths``: run folders, summary files, sweep files (their runs_dir) or folders searched
    recursively, read at ``checkpoint`` ("final" or "best"). Raises a one-line error for a missing path, an unknown
    checkpoint or when nothing is found."""
    from smallvit.sweep import load_sweep

    if checkpoint not in CHECKPOINTS:
        raise SmallViTError(f"unknown checkpoint '{checkpoint}': use one of {', '.join(CHECKPOINTS)}")
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.exists():
            raise SmallViTError(f"'{given}' does not exist: give run folders, summary.json files or folders of them")
        if given.suffix in (".yaml", ".yml"):
            found += _find(load_sweep(given).default_runs_dir())
        elif given.is_file() or (given / "summary.json").is_file():
            found.append(given)
        else:
            found += _find(given)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        shown = " ".join(map(str, paths))
        raise SmallViTError(f"no finished run (summary.json) under {shown}: train or finish runs first")
    originals = {p.resolve(): p for p in found}
    return [read_run(originals[p], checkpoint) for p in unique]


# ---------------------------------------------------------------- rows


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1); (None, None) for no values, std None for one value."""
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def gain(row: Row, base: Row) -> tuple[float | None, float | None]:
    """``row``'s mean minus ``base``'s, in points, and sqrt(s1²/n1 + s2²/n2) when both have a standard deviation."""
    if row.top1_mean is None or base.top1_mean is None:
        return None, None
    difference = row.top1_mean - base.top1_mean
    if row.top1_std is None or base.top1_std is None:
        return difference, None
    n1 = sum(r.top1 is not None for r in row.runs)
    n2 = sum(r.top1 is not None for r in base.runs)
    return difference, math.sqrt(row.top1_std**2 / n1 + base.top1_std**2 / n2)


def _test_identity(run: RunResult) -> str | None:
    """What a run was tested on, beyond its dataset: the test split's sha256; 'legacy' for old summaries (one
    protocol); None when not recorded."""
    return "legacy" if run.legacy else run.test_split


def _comparable(row: Row, base: Row) -> bool:
    """Tested on the same images: the same dataset and the same test identity (see :func:`_test_identity`)."""
    if row.dataset is None or row.dataset != base.dataset:
        return False
    return len({_test_identity(r) for r in row.runs + base.runs}) == 1


def _epochs_text(epochs: tuple[int, ...]) -> str:
    return "+".join(map(str, epochs))


def _disambiguate(groups: dict[tuple, list[RunResult]]) -> dict[tuple, str]:
    """Row names, with what differs appended where one name has several protocols."""
    names = {}
    for key in groups:
        name = key[0]
        rivals = [k for k in groups if k[0] == name]
        if len(rivals) == 1:
            names[key] = name
            continue
        parts = []
        if len({k[1] for k in rivals}) > 1:
            parts.append(str(key[1]))
        if len({k[2] for k in rivals}) > 1:
            parts.append(f"{_epochs_text(key[2])} ep")
        if len({k[3] for k in rivals}) > 1:
            parts.append("legacy" if key[3] == "legacy" else f"splits {key[3]}")
        names[key] = f"{name} [{', '.join(parts)}]"
    return names


def compare_rows(runs: list[RunResult], baseline: str | None = None) -> tuple[list[Row], list[str]]:
    """Group runs into rows and compute their statistics; returns the rows and notes (duplicates dropped).

    The baseline rows come first, then the other rows of the baseline's sweep, then the rest in sweep order (by each
    sweep's first appearance, then the row's place in its sweep file), then in the order the runs were found.
    ``baseline`` names the baseline row (a name shown in the table or a row name)."""
    notes = []
    sweep_first: dict[str | None, int] = {}
    for position, run in enumerate(runs):
        sweep_first.setdefault(run.sweep, position)
    ordered = sorted(enumerate(runs), key=lambda p: (sweep_first[p[1].sweep], p[1].index or 0, p[0]))
    groups: dict[tuple, list[RunResult]] = {}
    seen: dict[tuple, RunResult] = {}
    for _, run in ordered:
        key = (run.name, run.dataset, run.epochs, run.protocol)
        identity = (key, run.seed, run.top1, run.val1, run.wall_clock_s)
        if identity in seen:
            notes.append(f"{run.source} is the same run as {seen[identity].source}: counted once")
            continue
        seen[identity] = run
        groups.setdefault(key, []).append(run)
    names = _disambiguate(groups)
    rows = []
    for key, members in groups.items():
        members.sort(key=lambda r: (r.seed is None, r.seed or 0))  # seeds in order, wherever each was found
        top1 = mean_std([100 * r.top1 for r in members if r.top1 is not None])
        val = mean_std([100 * r.val1 for r in members if r.val1 is not None])
        walls = [r.wall_clock_s for r in members if r.wall_clock_s is not None]
        rates = [r.images_per_s for r in members if r.images_per_s is not None]
        knn = [100 * r.knn for r in members if r.knn is not None]
        linear = [100 * r.linear for r in members if r.linear is not None]
        labels = [r.label for r in members if r.label]
        rows.append(
            Row(
                name=names[key],
                runs=members,
                label=labels[0] if labels else None,
                dataset=key[1],
                epochs=key[2],
                protocol=key[3],
                top1_mean=top1[0],
                top1_std=top1[1],
                val_mean=val[0],
                val_std=val[1],
                knn_mean=statistics.mean(knn) if knn else None,
                linear_mean=statistics.mean(linear) if linear else None,
                wall_clock_s=statistics.mean(walls) if walls else None,
                images_per_s=statistics.mean(rates) if rates else None,
            )
        )
        if len({r.name for r in members}) == 1 and names[key] != key[0]:
            notes.append(f"row '{key[0]}' has runs under several protocols: shown as separate rows ('{names[key]}')")
    if baseline is not None:
        chosen = [r for r in rows if r.name == baseline] or [r for r in rows if r.runs[0].name == baseline]
        if not chosen:
            raise SmallViTError(f"--baseline {baseline}: no such row (rows: {', '.join(r.name for r in rows)})")
        if len(chosen) > 1:
            options = ", ".join(f"'{r.name}'" for r in chosen)
            raise SmallViTError(f"--baseline {baseline} names several rows ({options}): give one of those names")
        bases = chosen
    else:
        bases = [r for r in rows if any(run.baseline for run in r.runs)]
    for base in bases:
        base.baseline = True
    for row in rows:
        base = row if row in bases else next((b for b in bases if _comparable(row, b)), None)
        if base is None:
            continue
        row.baseline_row = base.name
        row.gain_mean, row.gain_std = (0.0, None) if base is row else gain(row, base)
    baseline_sweeps = {run.sweep for base in bases for run in base.runs}
    return sorted(rows, key=lambda row: (not row.baseline, row.runs[0].sweep not in baseline_sweeps)), notes


# ---------------------------------------------------------------- output


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _fmt_gain(row: Row) -> str:
    if row.baseline:
        return "baseline"
    if row.gain_mean is None:
        return ""
    return f"{row.gain_mean:+.2f} ± {row.gain_std:.2f}" if row.gain_std is not None else f"{row.gain_mean:+.2f}"


def _runs_text(row: Row) -> str:
    seeds = [s for s in row.seeds if s is not None]
    return f"{len(row.runs)} ({', '.join(map(str, seeds))})" if seeds else str(len(row.runs))


def table_cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table (the kNN / linear-probe columns only when a row has them)."""
    labels = any(r.label for r in rows)
    knn = any(r.knn_mean is not None for r in rows)
    linear = any(r.linear_mean is not None for r in rows)
    header = ["row", *(["label"] if labels else []), "runs (seeds)", "dataset", "epochs", "test top-1 %", "val top-1 %"]
    header += ["gain (points)", *(["kNN % (test)"] if knn else []), *(["linear probe % (test)"] if linear else [])]
    header += ["wall-clock (s)", "images/s", "device"]
    cells = []
    for row in rows:
        line = [row.name + (" †" if row.legacy else ""), *([row.label or ""] if labels else []), _runs_text(row)]
        line += [str(row.dataset or "?"), _epochs_text(row.epochs), _fmt(row.top1_mean, row.top1_std)]
        line += [_fmt(row.val_mean, row.val_std), _fmt_gain(row)]
        line += [_fmt(row.knn_mean, None)] if knn else []
        line += [_fmt(row.linear_mean, None)] if linear else []
        line += [f"{row.wall_clock_s:.0f}" if row.wall_clock_s is not None else "–"]
        line += [f"{row.images_per_s:.0f}" if row.images_per_s is not None else "–", row.device]
        cells.append(line)
    return header, cells


CHECKPOINT_NOTES = {
    "final": "test and val top-1: the last epoch's (never a checkpoint chosen on the test split); mean ± sample std "
    "over runs.",
    "best": "test and val top-1: the checkpoint each run chose on validation (best.safetensors; its last weights "
    "when it chose none); mean ± sample std over runs.",
}
GAIN_NOTE = (
    "gain: row mean − baseline mean in points, ± sqrt(s1²/n1 + s2²/n2) when both rows have ≥ 2 runs; only for rows "
    "tested on the baseline's test images."
)
LEGACY_NOTE = "† legacy summary (before validation splits): top-1 measured on the test split, no validation."


def footnotes(rows: list[Row]) -> list[str]:
    """What the table's numbers are: which weights were read, the gain, the legacy mark when a row has it."""
    read = dict.fromkeys(run.checkpoint for row in rows for run in row.runs)
    notes = [CHECKPOINT_NOTES[c] for c in read or ["final"]]
    return notes + [GAIN_NOTE] + ([LEGACY_NOTE] if any(r.legacy for r in rows) else [])


def rows_table(rows: list[Row]) -> Table:
    """The comparison as a rich table."""
    header, cells = table_cells(rows)
    table = Table(*header)
    for row, line in zip(rows, cells):
        table.add_row(*line, style="bold" if row.baseline else None)
    table.caption = "\n".join(footnotes(rows))
    table.caption_justify = "left"
    return table


def rows_json(rows: list[Row]) -> list[dict]:
    return [row.to_json() for row in rows]


def markdown_table(rows: list[Row]) -> str:
    header, cells = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join(lines)


def _plot_accuracy(rows: list[Row], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = [r for r in rows if r.top1_mean is not None or r.val_mean is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.5 * len(shown)))
    positions = list(range(len(shown)))[::-1]
    height = 0.38
    series = [
        (height / 2, "top1_mean", "top1_std", {"color": "tab:blue"}),
        (-height / 2, "val_mean", "val_std", {"color": "tab:gray", "alpha": 0.6}),
    ]
    for offset, mean_key, std_key, style in series:
        bars = [(p + offset, r) for p, r in zip(positions, shown) if getattr(r, mean_key) is not None]
        if not bars:
            continue
        y = [b for b, _ in bars]
        colors = ["tab:orange" if r.baseline and mean_key == "top1_mean" else style["color"] for _, r in bars]
        ax.barh(y, [getattr(r, mean_key) for _, r in bars], height, **{**style, "color": colors})
        spread = [(b, r) for b, r in bars if getattr(r, std_key) is not None]
        if spread:
            means, stds = [getattr(r, mean_key) for _, r in spread], [getattr(r, std_key) for _, r in spread]
            ax.errorbar(means, [b for b, _ in spread], xerr=stds, fmt="none", ecolor="black", capsize=3)
        for b, r in bars:
            x = getattr(r, mean_key) + (getattr(r, std_key) or 0) + 0.3
            ax.text(x, b, f"{getattr(r, mean_key):.1f}", va="center", fontsize=8)
    legend = [Patch(color="tab:blue", label="test top-1")]
    if any(r.val_mean is not None for r in shown):
        legend.append(Patch(color="tab:gray", alpha=0.6, label="validation top-1"))
    base = next((r for r in shown if r.baseline and r.top1_mean is not None), None)
    if base is not None:
        ax.axvline(base.top1_mean, color="tab:orange", linestyle="--", linewidth=1)
        legend.append(Patch(color="tab:orange", label=f"baseline test top-1 ({base.name})"))
        legend.append(Line2D([], [], color="tab:orange", linestyle="--", label="baseline mean"))
    ax.set_yticks(positions, [r.name for r in shown])
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title("Top-1 accuracy per row (mean ± sample std over seeds)")
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mean_curve(runs: list[RunResult]) -> tuple[list[float], list[float], list[float]] | None:
    """Epochs every run with a curve has, and the mean and sample std of validation top-1 (%) at each."""
    curves = [dict(r.curve) for r in runs if r.curve]
    if not curves:
        return None
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    stats = [mean_std([100 * c[e] for c in curves]) for e in epochs]
    return epochs, [m for m, _ in stats], [s or 0.0 for _, s in stats]


CURVE_LINESTYLES = ("-", "--", ":", "-.")


def _curve_runs(row: Row) -> int:
    """How many of the row's runs have a validation curve."""
    return sum(bool(run.curve) for run in row.runs)


def _curves(rows: list[Row]) -> list[tuple[Row, tuple[list[float], list[float], list[float]]]]:
    """Each row that has a validation curve, with its mean curve over seeds."""
    return [(row, curve) for row in rows if (curve := _mean_curve(row.runs))]


def curve_style(position: int) -> tuple[str, str]:
    """The colour and line style of the ``position``-th curve: matplotlib's 10 default colours, then the same colours
    dashed, dotted, dash-dotted, so that up to 40 rows stay apart in a legend."""
    return f"C{position % 10}", CURVE_LINESTYLES[(position // 10) % len(CURVE_LINESTYLES)]


def curve_panels(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """The validation-curve figure's panels as (title, rows): one panel, unless rows with several seeds (results)
    and rows with one (exploration) are mixed; then one panel each, the baseline drawn in both as the reference
    (and one panel still when the baseline is the only row with several seeds)."""
    seeded = [row for row in rows if _curve_runs(row) > 1]
    single = [row for row in rows if row not in seeded]
    if not single or all(row.baseline for row in seeded):
        return [("", rows)]
    reference = [row for row in seeded if row.baseline]
    return [("rows with several seeds", seeded), ("rows with one seed (exploration)", reference + single)]


def _plot_curves(rows: list[Row], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [(title, curves) for title, panel in curve_panels(rows) if (curves := _curves(panel))]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 5 * len(panels)), sharex=True, sharey=True, squeeze=False)
    for ax, (title, curves) in zip(axes[:, 0], panels):
        for position, (row, (epochs, mean, std)) in enumerate(curves):
            color, linestyle = curve_style(position)
            label = f"{row.name} (n={_curve_runs(row)})"
            ax.plot(epochs, mean, marker="o", markersize=3, color=color, linestyle=linestyle, label=label)
            low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
            ax.fill_between(epochs, low, high, alpha=0.15, color=color)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes[-1, 0].set_xlabel("epoch (of the last stage)")
    fig.suptitle("Validation top-1 per epoch (mean over seeds, band ± sample std)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _copy_run(run: RunResult, target: Path) -> None:
    """The small files of a run (summaries, configs, metrics; no checkpoints) into ``target``, same layout."""
    target.mkdir(parents=True, exist_ok=True)
    if run.folder is None:
        shutil.copyfile(run.source, target / "summary.json")
        return
    stages = [p for p in sorted(run.folder.iterdir()) if p.is_dir() and (p / "config.yaml").is_file()]
    for sub in [run.folder, *stages]:
        for name in _RUN_FILES:
            if (sub / name).is_file():
                destination = target / sub.relative_to(run.folder) / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sub / name, destination)


def _same_summary(run: RunResult, copy: Path) -> bool:
    """Whether ``copy`` (a folder of copies) holds ``run``'s summary, byte for byte."""
    source = run.folder / "summary.json" if run.folder else run.source
    copied = copy / "summary.json"
    return copied.is_file() and copied.read_bytes() == source.read_bytes()


def write_report(rows: list[Row], output: str | Path, command: str | None = None) -> list[Path]:
    """Write ``report.md`` (the table, notes and each row's commands), ``accuracy.png``, ``val_curves.png`` (rows
    with metrics.jsonl) and ``runs/`` (a copy of each run's summaries, configs and metrics, without checkpoints, so
    that ``smallvit compare OUTPUT/runs`` gives the same table from files small enough to keep). ``runs/`` is
    replaced on every write, unless some rows were read from it: then its copies are kept and the other runs are
    added to them, so a report grows as seeds finish on other machines (``smallvit compare OUTPUT/runs
    runs/sweeps/NAME --output OUTPUT``). Returns the files written, ``report.md`` first."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    copies = output / "runs"
    runs = [run for row in rows for run in row.runs]
    own_copies = copies.resolve()
    kept = [run for run in runs if own_copies in run.source.resolve().parents]
    if not kept:
        shutil.rmtree(copies, ignore_errors=True)
    for row in rows:
        folder = re.sub(r"[^A-Za-z0-9._+-]+", "_", row.name).strip("_") or "row"
        for i, run in enumerate(row.runs):
            if run in kept:
                continue
            leaf = copies / folder / (f"seed{run.seed}" if run.seed is not None else f"run{i}")
            if leaf.exists() and _same_summary(run, leaf):
                continue  # its copy, listed after the original: already there
            _copy_run(run, leaf if not leaf.exists() else leaf.with_name(f"{leaf.name}-{i}"))
    plots = [
        (_plot_accuracy(rows, output / "accuracy.png"), "Top-1 accuracy per row"),
        (_plot_curves(rows, output / "val_curves.png"), "Validation top-1 per epoch"),
    ]
    lines = ["# Comparison", "", f"Generated by `{command or 'smallvit compare'}`.", "", markdown_table(rows), ""]
    lines += [f"- {note}" for note in footnotes(rows)]
    lines.append("")
    for plot, title in plots:
        if plot is not None:
            lines += [f"![{title}]({plot.name})", ""]
            written.append(plot)
    lines += ["## Commands", ""]
    for row in rows:
        commands = row.commands or ["(not recorded)"]
        label = f" — {row.label}" if row.label else ""
        lines += [f"**{row.name}**{label} ({row.device}):", ""] + [f"- `{c}`" for c in commands] + [""]
    report = output / "report.md"
    report.write_text("\n".join(lines))
    return [report, *written]


__all__ = [
    "Row",
    "RunResult",
    "collect_runs",
    "compare_rows",
    "footnotes",
    "gain",
    "mean_std",
    "read_run",
    "rows_json",
    "rows_table",
    "write_report",
]
