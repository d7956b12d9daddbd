"""A study's runs as one table: ``runs.csv`` (one line per run) and ``curves.jsonl.gz`` (each run's validation curve).

``smallvit compare --output FOLDER`` writes both beside ``report.md``, and reads them back wherever it meets them
(``smallvit compare FOLDER``), so a report regenerates from these two small files alone and grows when new run
folders are compared with it. Accuracies are fractions, exactly as the runs' ``summary.json`` holds them (so the
statistics come back to the last bit); empty cells are values the run did not record.

Columns of ``runs.csv``: ``row`` (the row name), ``seed``, ``dataset``, ``epochs`` (per stage, ``30+30``),
``test_acc1`` and ``val_acc1`` (the last epoch's), ``best_test_acc1`` and ``best_val_acc1`` (the checkpoint chosen on
validation; empty when the run chose none), ``test_balanced_acc1`` and ``best_test_balanced_acc1`` (top-1 averaged
over classes, when the summary records it), ``wall_clock_s``, ``images_per_s``, ``device``, ``precision``, ``commit``,
``recipe``, ``command``, ``label``, ``sweep`` and ``index`` (the row's sweep and place in it), ``baseline``,
``protocol`` and ``test_split`` (what the run was tested on: see :mod:`smallvit.compare`), ``knn``, ``linear``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from smallvit.compare.result import RunResult, Scores
from smallvit.errors import SmallViTError

TABLE, CURVES = "runs.csv", "curves.jsonl.gz"
COLUMNS = (
    "row",
    "seed",
    "dataset",
    "epochs",
    "test_acc1",
    "val_acc1",
    "best_test_acc1",
    "best_val_acc1",
    "test_balanced_acc1",
    "best_test_balanced_acc1",
    "wall_clock_s",
    "images_per_s",
    "device",
    "precision",
    "commit",
    "recipe",
    "command",
    "label",
    "sweep",
    "index",
    "baseline",
    "protocol",
    "test_split",
    "knn",
    "linear",
)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # a float's shortest text that reads back as the same float


def _line(run: RunResult) -> dict[str, str]:
    best = run.best or Scores()
    values = {
        "row": run.name,
        "seed": run.seed,
        "dataset": run.dataset,
        "epochs": "+".join(map(str, run.epochs)),
        "test_acc1": run.final.top1,
        "val_acc1": run.final.val1,
        "best_test_acc1": best.top1,
        "best_val_acc1": best.val1,
        "test_balanced_acc1": run.final.balanced,
        "best_test_balanced_acc1": best.balanced,
        "wall_clock_s": run.wall_clock_s,
        "images_per_s": run.images_per_s,
        "device": run.device,
        "precision": run.precision,
        "commit": run.commit,
        "recipe": run.recipe,
        "command": run.command,
        "label": run.label,
        "sweep": run.sweep,
        "index": run.index,
        "baseline": run.baseline,
        "protocol": run.protocol,
        "test_split": run.test_split,
        "knn": run.knn,
        "linear": run.linear,
    }
    return {key: _cell(value) for key, value in values.items()}


def _curve_key(run: RunResult) -> list:
    return [run.name, run.seed, run.dataset, "+".join(map(str, run.epochs)), run.protocol]


def _write_gzip(path: Path, text: str) -> None:
    """``text`` gzipped without a time stamp or file name, so the same curves give the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as file:
        file.write(text.encode())
    path.write_bytes(buffer.getvalue())


def write_table(runs: list[RunResult], folder: Path) -> list[Path]:
    """Write ``runs.csv`` (the runs in the given order) and, when a run has a validation curve, ``curves.jsonl.gz``
    (a stale one is removed); returns the files written."""
    table = folder / TABLE
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_line(run) for run in runs)
    table.write_text(text.getvalue())
    curves = [
        {"run": _curve_key(run), "epoch": [e for e, _ in run.curve], "val_acc1": [v for _, v in run.curve]}
        for run in runs
        if run.curve
    ]
    if not curves:
        (folder / CURVES).unlink(missing_ok=True)
        return [table]
    _write_gzip(folder / CURVES, "".join(json.dumps(c) + "\n" for c in curves))
    return [table, folder / CURVES]


def _optional(text: str, kind=float):
    return kind(text) if text != "" else None


def _scores(line: dict[str, str], prefix: str) -> Scores:
    keys = (f"{prefix}test_acc1", f"{prefix}val_acc1", f"{prefix}test_balanced_acc1")
    return Scores(*(_optional(line[key]) for key in keys))


def _run(line: dict[str, str], path: Path) -> RunResult:
    best = _scores(line, "best_")
    text = {key: line[key] or None for key in COLUMNS}
    return RunResult(
        source=path,
        name=line["row"],
        label=text["label"],
        dataset=text["dataset"],
        epochs=tuple(int(e) for e in line["epochs"].split("+") if e),
        protocol=text["protocol"],
        test_split=text["test_split"],
        seed=_optional(line["seed"], int),
        final=_scores(line, ""),
        best=best if best != Scores() else None,
        wall_clock_s=_optional(line["wall_clock_s"]),
        images_per_s=_optional(line["images_per_s"]),
        device=text["device"],
        precision=text["precision"],
        commit=text["commit"],
        recipe=text["recipe"],
        knn=_optional(line["knn"]),
        linear=_optional(line["linear"]),
        baseline=line["baseline"] == "true",
        sweep=text["sweep"],
        index=_optional(line["index"], int),
        command=text["command"],
    )


def _read_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    if not path.is_file():
        return {}
    try:
        records = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
        return {json.dumps(r["run"]): list(zip(r["epoch"], r["val_acc1"])) for r in records}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SmallViTError(f"'{path}' is not a readable curves file ({err}): regenerate it or remove it") from None


def read_table(path: Path, checkpoint: str = "final") -> list[RunResult]:
    """The runs of a study's ``runs.csv`` (with their curves from ``curves.jsonl.gz`` beside it), read at
    ``checkpoint``."""
    try:
        lines = list(csv.DictReader(io.StringIO(path.read_text())))
        missing = [key for key in COLUMNS if lines and key not in lines[0]]
        if missing:
            raise ValueError(f"no column {', '.join(missing)}")
        runs = [_run(line, path) for line in lines]
    except (OSError, ValueError, csv.Error) as err:
        raise SmallViTError(f"'{path}' is not a readable table of runs ({err}): regenerate it or remove it") from None
    curves = _read_curves(path.parent / CURVES)
    for run in runs:
        run.curve = curves.get(json.dumps(_curve_key(run)), [])
    return [run.select(checkpoint) for run in runs]
