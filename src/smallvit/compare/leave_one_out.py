"""The leave-one-dataset-out check: is a recipe chosen without looking at a dataset better than the baseline there?

For each dataset in turn (the held-out one), every candidate row (a row that is not its study's baseline) is scored on
the *other* datasets by its mean validation gain: its validation top-1 minus the baseline row's, in points, averaged
over those datasets (a candidate must have been run on all of them). The best-scoring candidate is the recipe that
evidence would recommend for data like the held-out set; its **test** gain over the held-out dataset's baseline is the
answer. Validation chooses, test only reports, and the held-out dataset never takes part in its own choice.
``smallvit compare STUDIES... --leave-one-out`` prints the check; ``--output`` writes ``leave-one-out.md``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from smallvit.compare.datasets import MISSING, DatasetRow, dataset_rows, four
from smallvit.compare.report import markdown, rich_table
from smallvit.compare.rows import Row
from smallvit.errors import SmallViTError

TARGET_POINTS = 3.0  # the test gain a recommended recipe must reach on the held-out dataset


@dataclass
class HeldOut:
    """The check for one held-out dataset: the candidate chosen on the others' validation splits, its mean validation
    gain there, and its test gain on the held-out dataset (points; std None for fewer than two runs a side)."""

    dataset: str
    chosen: str | None
    validation_gain: float | None
    test_gain: float | None = None
    test_gain_std: float | None = None
    runs: int = 0

    @property
    def verdict(self) -> str:
        if self.chosen is None:
            return "no candidate was run on all the other datasets"
        if self.test_gain is None:
            return f"{self.chosen} was not run on {self.dataset}"
        if self.test_gain >= TARGET_POINTS:
            return f"beats the baseline by ≥ {TARGET_POINTS:g} points"
        if self.test_gain > 0:
            return f"beats the baseline by less than {TARGET_POINTS:g} points"
        return "does not beat the baseline"


def _baselines(rows: list[Row]) -> dict[str, Row]:
    """The baseline row of each dataset; a dataset without one is an error naming the fix."""
    baselines = {str(row.dataset or "?"): row for row in rows if row.baseline}
    missing = sorted({str(row.dataset or "?") for row in rows} - set(baselines))
    if missing:
        raise SmallViTError(
            f"no baseline row on {', '.join(missing)}: keep the row each study marked baseline among --rows"
        )
    return baselines


def validation_gains(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Each candidate row name's validation gain over the baseline (points), by dataset, where both have one."""
    baselines = _baselines(rows)
    gains: dict[str, dict[str, float]] = {}
    for row in rows:
        dataset = str(row.dataset or "?")
        base = baselines[dataset]
        if row.baseline or row.val_mean is None or base.val_mean is None:
            continue
        gains.setdefault(row.runs[0].name, {})[dataset] = row.val_mean - base.val_mean
    return gains


def leave_one_out(rows: list[Row]) -> list[HeldOut]:
    """The check for every dataset of ``rows`` (rows of one study per dataset, matched by row name)."""
    lines, datasets = dataset_rows(rows)
    if len(datasets) < 2:
        raise SmallViTError("--leave-one-out needs studies on two datasets or more")
    gains = validation_gains(rows)
    by_name: dict[str, DatasetRow] = {line.name: line for line in lines}
    checks = []
    for held_out in datasets:
        others = [d for d in datasets if d != held_out]
        scores = {
            name: statistics.mean(per_dataset[d] for d in others)
            for name, per_dataset in gains.items()
            if all(d in per_dataset for d in others)
        }
        if not scores:
            checks.append(HeldOut(held_out, None, None))
            continue
        chosen = max(scores, key=scores.__getitem__)  # the first row met wins a tie
        cell = by_name[chosen].cells.get(held_out)
        check = HeldOut(held_out, chosen, scores[chosen])
        if cell is not None and cell.gain_mean is not None:
            check.test_gain, check.test_gain_std, check.runs = cell.gain_mean, cell.gain_std, cell.runs
        checks.append(check)
    return checks


def _points(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return MISSING
    return f"{value:+.2f}" + (f" ± {spread:.2f}" if spread is not None else "")


def leave_one_out_cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the check: one line per held-out dataset."""
    header = [
        "held-out dataset",
        "chosen on the others' validation",
        "its mean validation gain there",
        "its test gain on the held-out dataset (runs)",
        "verdict",
    ]
    cells = [
        [
            check.dataset,
            check.chosen or MISSING,
            _points(check.validation_gain),
            f"{_points(check.test_gain, check.test_gain_std)} ({check.runs})",
            check.verdict,
        ]
        for check in leave_one_out(rows)
    ]
    return header, cells


def gains_cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of what the choices saw: each candidate's validation gain on each dataset."""
    _, datasets = dataset_rows(rows)
    gains = validation_gains(rows)
    header = ["candidate", *(f"{d}: validation gain" for d in datasets)]
    return header, [[name, *(_points(g.get(d)) for d in datasets)] for name, g in gains.items()]


def leave_one_out_table(rows: list[Row]) -> Table:
    """The check as a rich table."""
    return rich_table(*leave_one_out_cells(rows), NOTE)


def leave_one_out_json(rows: list[Row]) -> list[dict]:
    """One object per held-out dataset (gains in points, 4 decimals)."""
    return [
        {
            "held_out": c.dataset,
            "chosen": c.chosen,
            "validation_gain": four(c.validation_gain),
            "test_gain_mean": four(c.test_gain),
            "test_gain_std": four(c.test_gain_std),
            "runs": c.runs,
            "verdict": c.verdict,
        }
        for c in leave_one_out(rows)
    ]


NOTE = (
    "each held-out dataset in turn: among the rows that are not a baseline, the one with the highest validation top-1 "
    "gain over its study's baseline, averaged over the other datasets, is chosen; its test gain (points, mean ± "
    "sqrt(s1²/n1 + s2²/n2) over seeds) is read on the held-out dataset only. The held-out dataset's own validation "
    f"and test splits take no part in the choice. The recommendation stands where every line beats the baseline by "
    f"≥ {TARGET_POINTS:g} points."
)


def write_leave_one_out(rows: list[Row], output: str | Path, command: str | None = None) -> list[Path]:
    """Write ``leave-one-out.md`` (the check, what the choices saw, the note) into ``output``; returns it."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    text = ["# Leave one dataset out", "", f"Generated by `{command or 'smallvit compare --leave-one-out'}`.", ""]
    text += [markdown(*leave_one_out_cells(rows)), "", f"- {NOTE}", ""]
    text += ["## Validation gains the choices saw", "", markdown(*gains_cells(rows)), ""]
    (output / "leave-one-out.md").write_text("\n".join(text))
    return [output / "leave-one-out.md"]
