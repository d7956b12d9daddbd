"""Rows of a comparison: runs grouped by row name and protocol, with their statistics (see :mod:`smallvit.compare`)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

from smallvit.compare.result import RunResult
from smallvit.errors import SmallViTError


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
    balanced_mean: float | None = None
    balanced_std: float | None = None
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
                "top1_runs": [percent(r.top1) for r in self.runs],
                "checkpoint": self.runs[0].checkpoint,
                "val_mean": self.val_mean,
                "val_std": self.val_std,
                "balanced_mean": self.balanced_mean,
                "balanced_std": self.balanced_std,
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


def percent(value: float | None) -> float | None:
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


def epochs_text(epochs: tuple[int, ...]) -> str:
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
            parts.append(f"{epochs_text(key[2])} ep")
        if len({k[3] for k in rivals}) > 1:
            parts.append("legacy" if key[3] == "legacy" else f"splits {key[3]}")
        names[key] = f"{name} [{', '.join(parts)}]"
    return names


def _groups(runs: list[RunResult]) -> tuple[dict[tuple, list[RunResult]], list[str]]:
    """Runs grouped by (row name, dataset, epochs, protocol), in sweep order (each sweep's first appearance, then the
    row's place in its sweep file, then the order found); the same run found twice is kept once, with a note."""
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
    return groups, notes


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _row(name: str, key: tuple, members: list[RunResult]) -> Row:
    """One row's statistics over its runs (seeds put in order, wherever each was found)."""
    members.sort(key=lambda r: (r.seed is None, r.seed or 0))
    top1 = mean_std([100 * r.top1 for r in members if r.top1 is not None])
    val = mean_std([100 * r.val1 for r in members if r.val1 is not None])
    balanced = mean_std([100 * r.balanced for r in members if r.balanced is not None])
    labels = [r.label for r in members if r.label]
    return Row(
        name=name,
        runs=members,
        label=labels[0] if labels else None,
        dataset=key[1],
        epochs=key[2],
        protocol=key[3],
        top1_mean=top1[0],
        top1_std=top1[1],
        val_mean=val[0],
        val_std=val[1],
        balanced_mean=balanced[0],
        balanced_std=balanced[1],
        knn_mean=_mean([100 * r.knn for r in members if r.knn is not None]),
        linear_mean=_mean([100 * r.linear for r in members if r.linear is not None]),
        wall_clock_s=_mean([r.wall_clock_s for r in members if r.wall_clock_s is not None]),
        images_per_s=_mean([r.images_per_s for r in members if r.images_per_s is not None]),
    )


def _baselines(rows: list[Row], baseline: str | None) -> list[Row]:
    """The baseline row named by ``baseline`` (a name shown in the table or a row name), else those a sweep marked."""
    if baseline is None:
        return [r for r in rows if any(run.baseline for run in r.runs)]
    chosen = [r for r in rows if r.name == baseline] or [r for r in rows if r.runs[0].name == baseline]
    if not chosen:
        raise SmallViTError(f"--baseline {baseline}: no such row (rows: {', '.join(r.name for r in rows)})")
    if len(chosen) > 1:
        options = ", ".join(f"'{r.name}'" for r in chosen)
        raise SmallViTError(f"--baseline {baseline} names several rows ({options}): give one of those names")
    return chosen


def compare_rows(
    runs: list[RunResult], baseline: str | None = None, datasets_as_columns: bool = False
) -> tuple[list[Row], list[str]]:
    """Group runs into rows and compute their statistics; returns the rows and notes (duplicates dropped, a row
    shown as several because its runs differ in protocol; not the latter with ``datasets_as_columns``, for the
    tables across datasets, whose columns are those rows and which refuse two protocols on one dataset).

    The baseline rows come first, then the other rows of the baseline's sweep, then the rest in sweep order (by each
    sweep's first appearance, then the row's place in its sweep file), then in the order the runs were found.
    ``baseline`` names the baseline row (a name shown in the table or a row name)."""
    groups, notes = _groups(runs)
    names = _disambiguate(groups)
    rows = [_row(names[key], key, members) for key, members in groups.items()]
    for key, row in zip(groups, rows):
        if not datasets_as_columns and len({r.name for r in row.runs}) == 1 and names[key] != key[0]:
            notes.append(f"row '{key[0]}' has runs under several protocols: shown as separate rows ('{names[key]}')")
    bases = _baselines(rows, baseline)
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


def parse_aliases(texts: list[str]) -> dict[str, str]:
    """``OLD=NEW`` texts as a mapping from old row name to new (one-line errors on bad syntax or an old name given
    twice)."""
    aliases: dict[str, str] = {}
    for text in texts:
        old, equals, new = (part.strip() for part in text.partition("="))
        if not (old and equals and new):
            raise SmallViTError(f"--alias {text}: expected OLD=NEW, two row names")
        if old in aliases:
            raise SmallViTError(f"--alias {text}: row '{old}' is renamed twice")
        aliases[old] = new
    return aliases


def rename_runs(runs: list[RunResult], aliases: dict[str, str]) -> list[RunResult]:
    """The runs with their row names renamed by ``aliases`` (old name -> new; not chained), before they are grouped
    into rows, so that rows that different studies named differently line up. An old name no run has, or a rename
    that would average two rows of one dataset together, is an error."""
    names = dict.fromkeys(run.name for run in runs)
    unknown = [old for old in aliases if old not in names]
    if unknown:
        raise SmallViTError(f"--alias {unknown[0]}=…: no such row (rows: {', '.join(names)})")
    sources: dict[tuple[str | None, str], set[str]] = {}
    for run in runs:
        sources.setdefault((run.dataset, aliases.get(run.name, run.name)), set()).add(run.name)
    for (dataset, new), olds in sources.items():
        if len(olds) > 1:
            raise SmallViTError(f"--alias: rows {', '.join(sorted(olds))} would all be '{new}' on {dataset}")
    return [replace(run, name=aliases.get(run.name, run.name)) for run in runs]


def select_rows(rows: list[Row], names: list[str]) -> list[Row]:
    """Only the rows ``names`` names (a name shown in the table or a row name), in that order; an unknown name is an
    error."""
    chosen = []
    for name in dict.fromkeys(names):
        found = [r for r in rows if r.name == name] or [r for r in rows if r.runs[0].name == name]
        if not found:
            raise SmallViTError(f"--rows {name}: no such row (rows: {', '.join(dict.fromkeys(r.name for r in rows))})")
        chosen += found
    return chosen
