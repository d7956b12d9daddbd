"""Reading finished runs: run folders, summary files (new and old formats) and studies' tables, into
:class:`~smallvit.compare.result.RunResult` (see :mod:`smallvit.compare` for what each number is)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import statistics
from pathlib import Path

import yaml

from smallvit.compare.result import BALANCED, CHECKPOINTS, LEGACY_TOP1, TOP1, VAL1, RunResult, Scores
from smallvit.compare.table import TABLE, read_table
from smallvit.errors import SmallViTError


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


def _last_evaluation(stage_dir: Path, kind: str) -> float | None:
    """The last ``kind`` (knn, linear) evaluation of the test split (runs from before validation splits: of their one
    split), so that it compares with the table's test top-1."""
    records = _records(stage_dir / "evaluations.jsonl")
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


def _legacy_dataset(args: list[str], near: Path) -> str | None:
    """The dataset an old summary's run trained on: its ``dataset=`` override, else its recipe's (the recipe found
    from the current directory or from a folder above the summary)."""
    from smallvit.config import load_recipe, override_value

    if dataset := override_value(args, "data.dataset"):
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


def _best_checkpoint(stage: dict, curve: list[tuple[float, float]]) -> Scores | None:
    """Test top-1, validation top-1 and balanced top-1 of the checkpoint a stage chose on validation; None when it
    chose none."""
    best = stage.get("best") or {}
    test = best.get("test") or {}
    if test.get(TOP1) is None:
        return None
    if best.get("metric") == VAL1:
        return Scores(test[TOP1], best.get("value"), test.get(BALANCED))
    val = dict(curve).get(float(best["epoch"])) if best.get("epoch") is not None else None
    return Scores(test[TOP1], val, test.get(BALANCED))


def _legacy_fields(run: RunResult, entry: dict, path: Path) -> None:
    """What an old summary's entry (written by the former results/run.py) tells: command, seed, dataset, recipe."""
    from smallvit.config import override_value

    args = [str(a) for a in entry.get("args", [])]
    run.command = "smallvit train " + shlex.join(args)
    seed = override_value(args, "train.seed") or (re.findall(r"-s(\d+)$", entry.get("id", "")) or [None])[0]
    run.seed = int(seed) if seed is not None else None
    run.dataset = _legacy_dataset(args, path)
    run.recipe = args[0] if args else None


def _folder_fields(run: RunResult, folder: Path, stage_dir: Path) -> None:
    """What a run folder adds to its summary: the probes of its first stage and its last stage's curve."""
    first = _first_stage_dir(folder)
    run.knn = run.knn if run.knn is not None else _last_evaluation(first, "knn")
    run.linear = run.linear if run.linear is not None else _last_evaluation(first, "linear")
    run.curve = _validation_curve(stage_dir)


def _summary(path: Path) -> tuple[dict, Path | None]:
    """A run's summary and its run folder (None for a lone summary file)."""
    folder = path if path.is_dir() else (path.parent if path.name == "summary.json" else None)
    summary_path = path / "summary.json" if path.is_dir() else path
    data = _load_json(summary_path)
    if not _is_summary(data):
        raise SmallViTError(f"'{summary_path}' is not a run summary (no 'final' or 'stages'): give a run folder")
    return data, folder


def read_run(path: Path, checkpoint: str = "final") -> RunResult:
    """Read a run folder (its ``summary.json``, ``sweep.json`` and configs) or a summary file, new or old format;
    ``checkpoint`` ("final" or "best") names the weights whose accuracies are read (see :mod:`smallvit.compare`)."""
    data, folder = _summary(path)
    stages = data["stages"] if isinstance(data.get("stages"), list) else [data]
    last = stages[-1] if stages else {}
    final, provenance, entry = last.get("final") or {}, last.get("provenance") or {}, data.get("entry") or {}
    sweep = data.get("sweep") or {}
    if not sweep and folder and (folder / "sweep.json").is_file():
        sweep = _load_json(folder / "sweep.json")
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
        final=Scores(final.get(LEGACY_TOP1)) if legacy else Scores(*(final.get(k) for k in (TOP1, VAL1, BALANCED))),
        wall_clock_s=wall,
        images_per_s=rate,
        device=last.get("device"),
        precision=last.get("precision"),
        commit=provenance.get("git_commit"),
        recipe=sweep.get("recipe") or provenance.get("recipe") or last.get("recipe"),
        knn=data.get("knn"),
        linear=data.get("linear"),
        baseline=bool(sweep.get("baseline")),
        sweep=sweep.get("sweep"),
        index=sweep.get("index"),
        command=sweep.get("command"),
        folder=folder,
    )
    if entry:
        _legacy_fields(run, entry, path)
    recipe_name = _read_yaml(folder / "recipe.yaml").get("name") if folder else None
    names = (sweep.get("row"), re.sub(r"-s\d+$", "", entry.get("id", "")), recipe_name, last.get("recipe"))
    names += (provenance.get("recipe"), last.get("name"), (folder or path).name)
    run.name = next(str(n) for n in names if n)
    run.dataset = provenance.get("dataset") or (config.get("data") or {}).get("dataset") or run.dataset
    seeds = (sweep.get("seed"), provenance.get("seed"), run.seed, (config.get("train") or {}).get("seed"))
    run.seed = next((int(s) for s in seeds if s is not None), None)
    if folder:
        _folder_fields(run, folder, stage_dir)
    run.best = None if legacy else _best_checkpoint(last, run.curve)
    return run.select(checkpoint)


def _find(root: Path) -> list[Path]:
    """Study tables, run folders (with summary.json) and summary files under ``root``, in sorted order; a folder
    with a table is read from its table alone, and an unfinished multi-stage run's finished stages are not runs of
    their own."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs.sort()
        for name in (TABLE, "summary.json"):
            if name in files:
                found.append(here / TABLE if name == TABLE else here)
                dirs.clear()
                break
        else:
            if "recipe.yaml" in files:
                dirs.clear()
                continue
            found += [here / n for n in sorted(files) if n.endswith(".json") and n != "sweep.json"]
    return [path for path in found if path.is_dir() or path.name == TABLE or _looks_like_summary(path)]


def _looks_like_summary(path: Path) -> bool:
    """Whether a .json file met while searching a folder is a run summary (unreadable files are not)."""
    try:
        return _is_summary(_load_json(path))
    except SmallViTError:
        return False


def _given(path: Path) -> list[Path]:
    """What one path given to :func:`collect_runs` stands for: tables, run folders or summary files."""
    from smallvit.sweep import load_sweep

    if not path.exists():
        raise SmallViTError(f"'{path}' does not exist: give run folders, summary.json files or folders of them")
    if path.suffix in (".yaml", ".yml"):
        return _find(load_sweep(path).default_runs_dir())
    if path.is_file() or (path / "summary.json").is_file():
        return [path]
    return _find(path)


def collect_runs(paths: list[str | Path], checkpoint: str = "final") -> list[RunResult]:
    """Every finished run in ``paths``: run folders, summary files, study tables (``runs.csv``), sweep files (their
    runs_dir) or folders searched recursively, read at ``checkpoint`` ("final" or "best"). Raises a one-line error
    for a missing path, an unknown checkpoint or when nothing is found."""
    if checkpoint not in CHECKPOINTS:
        raise SmallViTError(f"unknown checkpoint '{checkpoint}': use one of {', '.join(CHECKPOINTS)}")
    found = [p for given in map(Path, paths) for p in _given(given)]
    originals = {p.resolve(): p for p in found}
    unique = list(dict.fromkeys(p.resolve() for p in found))
    runs = []
    for path in unique:
        given = originals[path]
        runs += read_table(given, checkpoint) if given.suffix == ".csv" else [read_run(given, checkpoint)]
    if not runs:
        shown = " ".join(map(str, paths))
        raise SmallViTError(f"no finished run (summary.json) under {shown}: train or finish runs first")
    return runs
