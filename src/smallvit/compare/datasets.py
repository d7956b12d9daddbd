"""One table across datasets: a line per row name, a column per dataset, each cell the test top-1 of that row's runs
on that dataset (mean ± sample std over seeds, and how many runs), its gain over the dataset's baseline row and its
seconds per epoch. Rows of several studies are matched by their row name, so a recipe row run under the same name on
each development dataset lines up, as the leave-one-dataset-out protocol needs: choose on all datasets but one, then
read the held-out column. ``--alias OLD=NEW`` renames a row first where studies named the same recipe differently;
``--rows`` keeps some rows, in its order. ``results/overview/datasets.md`` is such a table; its third line is the
command that writes it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from smallvit.compare.report import gain_text, markdown, rich_table
from smallvit.compare.rows import Row
from smallvit.errors import SmallViTError


@dataclass
class Cell:
    """One row's test top-1 on one dataset (in %), its gain over that dataset's baseline row (in points; see
    :mod:`smallvit.compare`) and its seconds per epoch."""

    mean: float | None
    std: float | None
    runs: int
    gain: str = ""
    gain_mean: float | None = None
    gain_std: float | None = None
    seconds_per_epoch: float | None = None

    @classmethod
    def of(cls, row: Row) -> Cell:
        epochs = sum(row.epochs)
        seconds = row.wall_clock_s / epochs if row.wall_clock_s is not None and epochs else None
        runs = sum(run.top1 is not None for run in row.runs)
        return cls(row.top1_mean, row.top1_std, runs, gain_text(row), row.gain_mean, row.gain_std, seconds)

    def text(self) -> str:
        if self.mean is None:
            return MISSING
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        parts = [f"{self.mean:.2f}{spread} ({self.runs})", self.gain]
        parts += [f"{self.seconds_per_epoch:.0f} s/epoch"] if self.seconds_per_epoch is not None else []
        return " · ".join(part for part in parts if part)


MISSING = "—"  # a row not run on a dataset


@dataclass
class DatasetRow:
    """A row name and its cell on each dataset it was run on."""

    name: str
    cells: dict[str, Cell] = field(default_factory=dict)


def dataset_rows(rows: list[Row]) -> tuple[list[DatasetRow], list[str]]:
    """The rows matched across datasets by row name (in the order first met), and the datasets (likewise). A row
    name with two protocols on one dataset (other epochs or other splits) is an error: compare one study per
    dataset."""
    datasets = list(dict.fromkeys(str(row.dataset or "?") for row in rows))
    lines: dict[str, DatasetRow] = {}
    for row in rows:
        name, dataset = row.runs[0].name, str(row.dataset or "?")
        line = lines.setdefault(name, DatasetRow(name))
        if dataset in line.cells:
            raise SmallViTError(
                f"row '{name}' has runs under two protocols on {dataset} (other epochs or splits): "
                "compare one study per dataset"
            )
        line.cells[dataset] = Cell.of(row)
    return list(lines.values()), datasets


def dataset_cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the table across datasets ("—" where a row was not run on a dataset)."""
    lines, datasets = dataset_rows(rows)
    header = ["row", *(f"{dataset}: test top-1 % (runs) · gain · s/epoch" for dataset in datasets)]
    cells = [[line.name, *(line.cells[d].text() if d in line.cells else MISSING for d in datasets)] for line in lines]
    return header, cells


def dataset_table(rows: list[Row]) -> Table:
    """The table across datasets as a rich table."""
    return rich_table(*dataset_cells(rows), NOTE)


def four(value: float | None) -> float | None:
    """4 decimals, as the rows' JSON."""
    return None if value is None else round(value, 4)


def dataset_json(rows: list[Row]) -> list[dict]:
    """One object per row name: its cells by dataset (test top-1 mean and std in %, gain mean and std in points,
    seconds per epoch; 4 decimals, null for none; runs)."""
    lines, _ = dataset_rows(rows)
    return [
        {
            "name": line.name,
            "datasets": {
                d: {"mean": four(c.mean), "std": four(c.std), "runs": c.runs}
                | {"gain_mean": four(c.gain_mean), "gain_std": four(c.gain_std)}
                | {"seconds_per_epoch": four(c.seconds_per_epoch)}
                for d, c in line.cells.items()
            },
        }
        for line in lines
    ]


NOTE = (
    "test top-1 of each row's runs on each dataset: mean ± sample std over seeds (runs); gain: points over the row "
    "the study marked baseline on that dataset, ± sqrt(s1²/n1 + s2²/n2) when both rows have ≥ 2 runs; s/epoch: the "
    "runs' mean wall-clock (their summaries' wall_clock_s) over their epochs, on the devices their study's report "
    f"names; {MISSING} where not run."
)


def write_dataset_table(rows: list[Row], output: str | Path, command: str | None = None) -> list[Path]:
    """Write ``datasets.md`` (the table and its note) and ``datasets.csv`` (one line per row and dataset: row,
    dataset, runs, test top-1 mean and std in %, gain mean and std in points, seconds per epoch; 4 decimals) into
    ``output``; returns the files written."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    lines, _ = dataset_rows(rows)
    text = ["# Test top-1 across datasets", "", f"Generated by `{command or 'smallvit compare --by-dataset'}`.", ""]
    text += [markdown(*dataset_cells(rows)), "", f"- {NOTE}", ""]
    (output / "datasets.md").write_text("\n".join(text))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(
        ["row", "dataset", "runs", "test_top1_mean", "test_top1_std", "gain_mean", "gain_std", "seconds_per_epoch"]
    )
    for line in lines:
        for dataset, cell in line.cells.items():
            values = (cell.mean, cell.std, cell.gain_mean, cell.gain_std, cell.seconds_per_epoch)
            figures = ["" if v is None else v for v in map(four, values)]
            writer.writerow([line.name, dataset, cell.runs, *figures])
    (output / "datasets.csv").write_text(table.getvalue())
    return [output / "datasets.md", output / "datasets.csv"]
