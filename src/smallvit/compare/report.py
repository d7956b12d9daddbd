"""A comparison's output: the table (rich, markdown, JSON), its footnotes, the plots, and the report folder."""

from __future__ import annotations

import io
from pathlib import Path

from rich.table import Table

from smallvit.compare.result import RunResult
from smallvit.compare.rows import Row, epochs_text, mean_std
from smallvit.compare.table import write_table


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def gain_text(row: Row) -> str:
    """The gain column's text: "baseline", the gain ± its std in points, or nothing."""
    if row.baseline:
        return "baseline"
    if row.gain_mean is None:
        return ""
    return f"{row.gain_mean:+.2f} ± {row.gain_std:.2f}" if row.gain_std is not None else f"{row.gain_mean:+.2f}"


def _runs_text(row: Row) -> str:
    seeds = [s for s in row.seeds if s is not None]
    return f"{len(row.runs)} ({', '.join(map(str, seeds))})" if seeds else str(len(row.runs))


def table_cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table (the balanced top-1, kNN and linear-probe columns only when a row
    has them)."""
    labels = any(r.label for r in rows)
    balanced = any(r.balanced_mean is not None for r in rows)
    knn = any(r.knn_mean is not None for r in rows)
    linear = any(r.linear_mean is not None for r in rows)
    header = ["row", *(["label"] if labels else []), "runs (seeds)", "dataset", "epochs", "test top-1 %"]
    header += [*(["balanced top-1 % (test)"] if balanced else []), "val top-1 %", "gain (points)"]
    header += [*(["kNN % (test)"] if knn else []), *(["linear probe % (test)"] if linear else [])]
    header += ["wall-clock (s)", "images/s", "device"]
    cells = []
    for row in rows:
        line = [row.name + (" †" if row.legacy else ""), *([row.label or ""] if labels else []), _runs_text(row)]
        line += [str(row.dataset or "?"), epochs_text(row.epochs), _fmt(row.top1_mean, row.top1_std)]
        line += [_fmt(row.balanced_mean, row.balanced_std)] if balanced else []
        line += [_fmt(row.val_mean, row.val_std), gain_text(row)]
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
BALANCED_NOTE = "balanced top-1: test top-1 averaged over classes (the mean of per-class accuracies), where recorded."
LEGACY_NOTE = "† legacy summary (before validation splits): top-1 measured on the test split, no validation."


def footnotes(rows: list[Row]) -> list[str]:
    """What the table's numbers are: which weights were read, the gain, the marks and columns some rows have."""
    read = dict.fromkeys(run.checkpoint for row in rows for run in row.runs)
    notes = [CHECKPOINT_NOTES[c] for c in read or ["final"]] + [GAIN_NOTE]
    notes += [BALANCED_NOTE] if any(r.balanced_mean is not None for r in rows) else []
    return notes + ([LEGACY_NOTE] if any(r.legacy for r in rows) else [])


def rich_table(header: list[str], cells: list[list[str]], caption: str, bold: list[bool] | None = None) -> Table:
    """A rich table of ``cells`` under ``header``, ``caption`` left-aligned below; lines where ``bold`` is true in
    bold."""
    table = Table(*header)
    for line, strong in zip(cells, bold or [False] * len(cells), strict=True):
        table.add_row(*line, style="bold" if strong else None)
    table.caption = caption
    table.caption_justify = "left"
    return table


def rows_table(rows: list[Row]) -> Table:
    """The comparison as a rich table."""
    return rich_table(*table_cells(rows), "\n".join(footnotes(rows)), [row.baseline for row in rows])


def rows_json(rows: list[Row]) -> list[dict]:
    return [row.to_json() for row in rows]


def markdown(header: list[str], cells: list[list[str]]) -> str:
    """A markdown table (``|`` inside a cell escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    return markdown(*table_cells(rows))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """``fig`` as a PNG of 256 colours (plots have few: a third of the bytes of matplotlib's RGBA file), closed."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def _bars(ax, rows: list[Row], positions: list[int]) -> None:
    """Test top-1 (the baseline's orange) and validation top-1 bars, with their std and their value written."""
    height = 0.38
    series = [
        (height / 2, "top1_mean", "top1_std", {"color": "tab:blue"}),
        (-height / 2, "val_mean", "val_std", {"color": "tab:gray", "alpha": 0.6}),
    ]
    for offset, mean_key, std_key, style in series:
        bars = [(p + offset, r) for p, r in zip(positions, rows) if getattr(r, mean_key) is not None]
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


def _plot_accuracy(rows: list[Row], path: Path) -> Path | None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    shown = [r for r in rows if r.top1_mean is not None or r.val_mean is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.5 * len(shown)))
    positions = list(range(len(shown)))[::-1]
    _bars(ax, shown, positions)
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
    return _save(fig, path)


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
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
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
    return _save(fig, path)


def report_text(rows: list[Row], plots: list[tuple[Path, str]], command: str | None = None) -> str:
    """``report.md``: the table, its footnotes, the plots' links and each row's commands."""
    lines = ["# Comparison", "", f"Generated by `{command or 'smallvit compare'}`.", "", markdown_table(rows), ""]
    lines += [f"- {note}" for note in footnotes(rows)]
    lines.append("")
    for plot, title in plots:
        lines += [f"![{title}]({plot.name})", ""]
    lines += ["## Commands", ""]
    for row in rows:
        commands = row.commands or ["(not recorded)"]
        label = f" — {row.label}" if row.label else ""
        lines += [f"**{row.name}**{label} ({row.device}):", ""] + [f"- `{c}`" for c in commands] + [""]
    return "\n".join(lines)


def write_report(rows: list[Row], output: str | Path, command: str | None = None) -> list[Path]:
    """Write ``report.md`` (the table, notes and each row's commands), ``accuracy.png``, ``val_curves.png`` (rows
    with validation curves), and the runs' table, ``runs.csv`` and ``curves.jsonl.gz`` (see
    :mod:`smallvit.compare.table`), from which ``smallvit compare OUTPUT`` gives the same report again. Runs
    compared with OUTPUT's own table are kept in it, so a report grows as seeds finish elsewhere (``smallvit compare
    OUTPUT runs/sweeps/NAME --output OUTPUT``). Returns the files written, ``report.md`` first."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    drawn = [
        (_plot_accuracy(rows, output / "accuracy.png"), "Top-1 accuracy per row"),
        (_plot_curves(rows, output / "val_curves.png"), "Validation top-1 per epoch"),
    ]
    plots = [(plot, title) for plot, title in drawn if plot is not None]
    tables = write_table([run for row in rows for run in row.runs], output)
    report = output / "report.md"
    report.write_text(report_text(rows, plots, command))
    return [report, *(plot for plot, _ in plots), *tables]
