"""Compare finished runs: rows of runs (one row per recipe row, its seeds averaged), as a table, JSON or a report.

**What a row is.** Runs are grouped by their row name — the sweep row (``sweep.json`` in the run folder, written by
``smallvit sweep``), else the ``id`` of an old summary (written by the former ``results/run.py``) without its
``-s<seed>`` suffix, else the recipe's name — *and* by their protocol: the dataset, the epochs of each stage, and the
splits (the sha256 of the train / validation / test splits that the summary's provenance records; summaries written
before validation splits existed form their own protocol, ``legacy``). Runs with the same name but another protocol
become another row, its name followed by what differs (``quickstart [cifar10-jpeg, 1 ep]``), so numbers from different
protocols are never averaged together. The same run found twice (a run folder and its line in a study's table) counts
once.

**What the numbers are.** Top-1 is the test top-1 of the run's last epoch (``final["test/supervised/acc1"]``,
pre-declared: never a checkpoint chosen on the test split); validation top-1 is ``final["val/supervised/acc1"]``; a
multi-stage run's are those of its last stage. With ``checkpoint="best"`` both are those of the checkpoint the run chose
on validation (``best.safetensors``: ``best["test"]`` and the validation top-1 at ``best["epoch"]``), the figures a user
who keeps that checkpoint gets; a run that chose none (``train.best_metric: null``) keeps its last weights, so its final
figures stand. A legacy summary (``eval/supervised/acc1``, measured on the test split) gives the test top-1 and no
validation. Accuracies are in %, as mean ± the sample standard deviation over the row's runs (n − 1 in the denominator;
none for one run). The gain of a row is its mean minus the baseline row's mean, in points, ± sqrt(s1²/n1 + s2²/n2), the
standard deviation of a difference of two independent means (given only when both rows have two runs or more). The
baseline row is ``baseline`` (a row name), else the row a sweep marked ``baseline: true``; a gain is only given for rows
tested on the same images as the baseline: the same dataset and the same test split (its sha256 in the summaries'
provenance; old summaries count as one protocol of their own, so a legacy row gets no gain against a new baseline).
Wall-clock is the sum over a run's stages, images/s the training throughput of its stages weighted by their wall-clock;
both averaged over the row's runs. kNN and linear probe are the last ``smallvit eval knn|linear --split test`` logged
for a multi-stage run's first (pre-training) stage, or for a single-stage run's folder, when there is one. A summary
that records the test top-1 averaged over classes (``test/supervised/balanced_acc1``, which differs from top-1 on an
unbalanced test split such as Caltech-101's) adds a balanced top-1 column; it is never computed here.

**Where runs are read from.** Run folders, summary files and studies' tables (``runs.csv`` and ``curves.jsonl.gz``,
written beside every report: :mod:`smallvit.compare.table`), so a kept report regenerates from its folder alone.
Modules: :mod:`~smallvit.compare.read` (runs), :mod:`~smallvit.compare.rows` (statistics; renaming rows,
so that those of several studies line up, and choosing some),
:mod:`~smallvit.compare.report` (tables, plots, report folder), :mod:`~smallvit.compare.datasets` (one table across
datasets), :mod:`~smallvit.compare.leave_one_out` (the leave-one-dataset-out check).
"""

from smallvit.compare.datasets import dataset_cells, dataset_json, dataset_rows, dataset_table, write_dataset_table
from smallvit.compare.leave_one_out import (
    leave_one_out,
    leave_one_out_json,
    leave_one_out_table,
    write_leave_one_out,
)
from smallvit.compare.read import collect_runs, last_stage_dir, read_run
from smallvit.compare.report import (
    curve_panels,
    curve_style,
    footnotes,
    markdown_table,
    rows_json,
    rows_table,
    table_cells,
    write_report,
)
from smallvit.compare.result import BALANCED, CHECKPOINTS, LEGACY_TOP1, TOP1, VAL1, RunResult, Scores
from smallvit.compare.rows import Row, compare_rows, gain, mean_std, parse_aliases, rename_runs, select_rows
from smallvit.compare.table import read_table, write_table

__all__ = [
    "BALANCED",
    "CHECKPOINTS",
    "LEGACY_TOP1",
    "TOP1",
    "VAL1",
    "Row",
    "RunResult",
    "Scores",
    "collect_runs",
    "compare_rows",
    "curve_panels",
    "curve_style",
    "dataset_cells",
    "dataset_json",
    "dataset_rows",
    "dataset_table",
    "footnotes",
    "gain",
    "last_stage_dir",
    "leave_one_out",
    "leave_one_out_json",
    "leave_one_out_table",
    "markdown_table",
    "mean_std",
    "parse_aliases",
    "read_run",
    "read_table",
    "rename_runs",
    "rows_json",
    "rows_table",
    "select_rows",
    "table_cells",
    "write_dataset_table",
    "write_leave_one_out",
    "write_report",
    "write_table",
]
