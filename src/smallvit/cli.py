"""The ``smallvit`` command line: train, evaluate, export, and manage recipes and datasets.

Every user error is a :class:`~smallvit.errors.SmallViTError` and is printed as one line (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from typer.core import TyperGroup

from smallvit.errors import SmallViTError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="Train Vision Transformers from scratch on small image datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a live progress bar.")]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where run folders are created.")]


def _print_summary(summaries: list[dict]) -> None:
    """One panel per stage: final accuracy, best checkpoint, speed and where the run folder is."""
    from smallvit.engine.trainer import epochs_text

    for s in summaries:
        final = s.get("final", {})
        lines = [f"{k}: {v:.4f}" for k, v in final.items() if k.endswith(("acc1", "acc5"))]
        best = s.get("best", {})
        if best.get("value") is not None:
            lines.append(f"best {best['metric']} = {best['value']:.4f} at epoch {best.get('epoch')}")
        lines.append(
            f"{epochs_text(s)} in {s.get('wall_clock_s', 0):.0f} s, {s.get('images_per_s') or 0:.0f} images/s "
            f"on {s.get('device')} ({s.get('precision')})"
        )
        lines.append(f"run folder: {s.get('run_dir')}")
        console.print(Panel("\n".join(lines), title=f"[bold]{s.get('name')}[/bold]", expand=False))


def _stage(run: Path) -> Path:
    """The folder a command reads: ``run`` itself, or the last stage of a multi-stage run (and say so)."""
    from smallvit.engine.experiment import last_stage

    stage = last_stage(run)
    if stage != run:
        console.print(f"{run} is a multi-stage run: using its last stage {stage.name} (give a stage folder to choose)")
    return stage


def _run_and_summarise(recipe, run_dir: Path, quiet: bool) -> None:
    """Train a loaded recipe into ``run_dir`` (a new run), or continue ``run_dir`` when ``recipe`` is None; on
    Ctrl-C or SIGTERM, say how to resume; a new run that fails or stops before training leaves no folder."""
    from smallvit.engine.runner import resume_run, run_new
    from smallvit.engine.signals import Interrupted

    try:
        if recipe is None:
            summaries = resume_run(run_dir, quiet=quiet, console=console)
        else:
            summaries = run_new(recipe, run_dir, quiet=quiet, console=console)
    except (KeyboardInterrupt, Interrupted) as err:
        if not run_dir.exists():  # a new run stopped before training began, and its folder was removed
            err_console.print(f"{str(err) or 'interrupted'} before training began: nothing to resume")
            raise typer.Exit(130) from None
        err_console.print(
            f"{str(err) or 'interrupted'}: continue with `smallvit train --resume {run_dir}`",
            soft_wrap=True,  # one line, so that the command can be copied
            markup=False,
            highlight=False,
        )
        raise typer.Exit(130) from None
    _print_summary(summaries)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
    epilog="Examples:\n\n  smallvit train quickstart\n\n  smallvit train supervised dataset=cifar10-jpeg epochs=50"
    " data.subset.per_class=204\n\n  smallvit train --resume runs/quickstart-20261125-120000",
)
def train(
    recipe: Annotated[str | None, typer.Argument(help="Recipe name (see `smallvit recipes`) or a .yaml path.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. train.epochs=5")] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name (default: <recipe>-<timestamp>).")] = None,
    runs_dir: RunsDir = Path("runs"),
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run folder.")] = None,
    quiet: Quiet = False,
) -> None:
    """Train a recipe; with --resume, continue an interrupted run."""
    from smallvit.config import load_recipe
    from smallvit.engine.runner import check_devices, training_run_dir

    if resume is not None:
        if recipe or overrides:
            raise SmallViTError("--resume continues a run with its saved config: drop the recipe and overrides")
        _run_and_summarise(None, resume, quiet)
        return
    if recipe is None:
        raise SmallViTError("no recipe given: run `smallvit recipes` to list them, e.g. `smallvit train quickstart`")
    loaded = load_recipe(recipe, overrides or [])
    check_devices(loaded)
    run_dir = training_run_dir(runs_dir, loaded.name, name)
    console.print(f"[bold]{loaded.name}[/bold] → {run_dir}")
    _run_and_summarise(loaded, run_dir, quiet)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
    epilog="Examples:\n\n  smallvit finetune runs/idmm-pretrain-20261125-120000 --recipe idmm-finetune"
    "\n\n  smallvit finetune runs/idmm-pretrain-20261125-120000 --recipe idmm-transfer epochs=50",
)
def finetune(
    run: Annotated[Path, typer.Argument(help="Pre-trained run folder, export folder or .safetensors file.")],
    recipe: Annotated[str, typer.Option(help="Fine-tuning recipe (see `smallvit recipes`) or a .yaml path.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. train.epochs=5")] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name (default: <recipe>-<timestamp>).")] = None,
    runs_dir: RunsDir = Path("runs"),
    quiet: Quiet = False,
) -> None:
    """Fine-tune a pre-trained run with a recipe: its first stage starts from RUN's backbone (model.init_from=RUN)."""
    from smallvit.engine.runner import check_devices, finetune_recipe, new_run_dir

    run = _stage(run)
    loaded = finetune_recipe(run, recipe, overrides or [])
    check_devices(loaded)
    run_dir = new_run_dir(runs_dir, loaded.name, name)
    console.print(f"[bold]{loaded.name}[/bold] from {run} → {run_dir}")
    _run_and_summarise(loaded, run_dir, quiet)


class _EvalGroup(TyperGroup):
    """``smallvit eval RUN`` means ``smallvit eval classify RUN``; ``knn`` and ``linear`` are subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["classify", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(cls=_EvalGroup, help="Evaluate a run: top-1/top-5 (default), kNN or linear probe.")
app.add_typer(eval_app, name="eval")


@eval_app.command("classify", epilog="Example:\n\n  smallvit eval runs/quickstart-20261125-120000 --split test")
def eval_classify(
    run: Annotated[Path, typer.Argument(help="Run folder (a multi-stage run: its last stage).")],
    split: Annotated[str | None, typer.Option(help="val, test (default) or another split of the dataset.")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: the metrics, accuracy per class and the confusion matrix.")
    ] = False,
) -> None:
    """Top-1, top-5 and loss of a trained run on a split (--json: also per class, and the confusion matrix)."""
    import json

    from smallvit.runs import check_finite, evaluate_run, evaluation_report

    if as_json:
        typer.echo(json.dumps(evaluation_report(_stage(run), split, checkpoint), indent=2))
        return
    metrics = evaluate_run(_stage(run), split=split, checkpoint=checkpoint)
    for key, value in metrics.items():
        console.print(f"{key}: {value:.4f}")
    check_finite(metrics)


@eval_app.command("knn", epilog="Example:\n\n  smallvit eval knn runs/idmm-pretrain-20261125-120000")
def eval_knn(
    run: Annotated[Path, typer.Argument(help="Run folder (a multi-stage run: its last stage).")],
    split: Annotated[str | None, typer.Option(help="Queries: val, test (default) or another split.")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    k: Annotated[int, typer.Option(help="Neighbours that vote.")] = 20,
    temperature: Annotated[float, typer.Option(help="Vote weight exp(cosine / temperature).")] = 0.07,
) -> None:
    """Weighted kNN top-1 on frozen features (training set as the bank); features cached in the run folder."""
    from smallvit.runs import knn_evaluate_run

    result = knn_evaluate_run(_stage(run), split=split, checkpoint=checkpoint, k=k, temperature=temperature)
    console.print(f"knn/acc1 ({result['split']}, k={k}, T={temperature}): {result['acc1']:.4f}")


@eval_app.command("linear", epilog="Example:\n\n  smallvit eval linear runs/idmm-pretrain-20261125-120000")
def eval_linear(
    run: Annotated[Path, typer.Argument(help="Run folder (a multi-stage run: its last stage).")],
    split: Annotated[str | None, typer.Option(help="val, test (default) or another split of the dataset.")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    weight_decay: Annotated[
        float | None, typer.Option(help="L2 strength; default: chosen on a held-out fifth of the training set.")
    ] = None,
) -> None:
    """Linear-probe top-1 on frozen features (L-BFGS logistic regression); features cached in the run folder."""
    from smallvit.runs import linear_probe_run

    result = linear_probe_run(_stage(run), split=split, checkpoint=checkpoint, weight_decay=weight_decay)
    console.print(f"linear/acc1 ({result['split']}, weight decay {result['weight_decay']:g}): {result['acc1']:.4f}")


@app.command(
    epilog="Examples:\n\n  smallvit export runs/quickstart-20261125-120000 --output exported/"
    "\n\n  smallvit export runs/quickstart-20261125-120000 --output exported/ --format onnx"
)
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (a multi-stage run: its last stage).")],
    output: Annotated[Path, typer.Option(help="Folder for model.safetensors, config.json and README.md.")],
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    format: Annotated[
        str, typer.Option("--format", help="safetensors (timm), or onnx: also model.onnx (pip install smallvit[onnx]).")
    ] = "safetensors",
) -> None:
    """Write timm-loadable weights (model.safetensors + config.json) of a run's backbone and classifier, and a model
    card (README.md): data, recipe, accuracy per class, how to load it, limitations."""
    from smallvit.export import export_folder

    written = export_folder(_stage(run), output, format=format, checkpoint=checkpoint)
    console.print(f"wrote {', '.join(map(str, written))}", highlight=False)


@app.command(
    epilog="Examples:\n\n  smallvit fit photos/ --budget 15m\n\n  smallvit fit photos/ --epochs 30 --device cuda"
    "\n\n  smallvit fit scans/ --budget 1h --on-bad-file skip --output runs/scans"
    "\n\n  smallvit fit photos/ --recipe small-data   # this recipe instead of the rule's choice"
    "\n\n  smallvit fit photos/ model.preset=vit_tiny   # fit's choices, then any override",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
)
def fit(
    folder: Annotated[Path, typer.Argument(help="FOLDER/<class>/<image>, or FOLDER/{train,val,test}/<class>/<image>.")],
    budget: Annotated[
        str,
        typer.Option(
            help="Time for everything after decoding the images once: 90s, 15m, 1h30m. Training gets what fit's own "
            "steps leave of it, and its learning rate follows the clock (train.time_budget_s)."
        ),
    ] = "15m",
    epochs: Annotated[int | None, typer.Option(help="Train this many epochs instead of filling --budget.")] = None,
    recipe: Annotated[
        str | None, typer.Option(help="Train this shipped recipe (smallvit recipes) instead of the rule's choice.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train even a plan of fewer than 10 epochs or 200 optimizer steps.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    output: Annotated[
        Path | None, typer.Option(help="Run folder to create (default: runs/fit-<folder name>-<time>).")
    ] = None,
    on_bad_file: Annotated[
        str,
        typer.Option(
            "--on-bad-file", help="An image that cannot be read: error (stop and name it) or skip (leave it out)."
        ),
    ] = "error",
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.sub=value settings applied after fit's choices.")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train the best model this folder of images can give: size, patch, recipe and epochs chosen from the data and
    the budget (each choice and why printed and kept in report.md), then evaluate, export and explain it."""
    from smallvit.engine.trainer import epochs_text
    from smallvit.fit import fit_folder, parse_duration
    from smallvit.metrics.classification import balanced_accuracy_from_per_class

    if on_bad_file not in ("error", "skip"):
        raise SmallViTError(f"--on-bad-file {on_bad_file!r} is not valid: use error or skip")
    result = fit_folder(
        folder,
        budget_s=parse_duration(budget) if epochs is None else None,
        epochs=epochs,
        device=device,
        output=output,
        on_bad_file=on_bad_file,
        overrides=overrides or [],
        recipe=recipe,
        force=force,
        quiet=quiet,
        console=console,
    )
    run = result.run_summary
    final, best = run.get("final", {}), run.get("best", {})
    lines = [f"{key}: {value:.4f}" for key, value in final.items() if key.endswith("/acc1")]
    if best.get("value") is not None:
        lines.append(f"best {best['metric']} = {best['value']:.4f} at epoch {result.best_epoch} (exported)")
    spent = f"{result.after_decoding_s:.0f} s after decoding"
    if result.budget_s is not None:
        spent += f" (budget {result.budget_s:.0f} s)"
        if result.slowdown and result.after_decoding_s > result.budget_s:
            spent += f", epochs {result.slowdown:.1f}x slower than measured"
    if result.test_classes:
        balanced = balanced_accuracy_from_per_class(result.test_classes["per_class"])
        lines.append(f"balanced test accuracy (mean per-class recall; the classes are unbalanced): {balanced:.4f}")
    lines += [
        f"{epochs_text(run)} of {result.recipe.text} at {result.geometry.image_size} px / patch "
        f"{result.geometry.patch_size}; {spent}; decoding {result.decode_s:.0f} s",
        f"report: {result.run_dir / 'report.md'}",
        f"export: {result.export_dir}",
        f"predict: smallvit predict {result.run_dir} IMAGE_OR_FOLDER...",
    ]
    console.print(Panel("\n".join(lines), title=f"[bold]fit {folder}[/bold]", expand=False), highlight=False)


@app.command(
    epilog="Examples:\n\n  smallvit predict runs/fit-photos-20261201-120000 new/ --top-k 3"
    "\n\n  smallvit predict exported/ a.jpg b.png --csv predictions.csv",
)
def predict(
    model: Annotated[
        Path, typer.Argument(help="Run folder, export folder (smallvit export / fit's export/) or its model.onnx.")
    ],
    images: Annotated[list[Path], typer.Argument(help="Image files and folders of images (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes shown per image, most probable first.")] = 5,
    csv_file: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write path, top1_class, top1_probability, top2_class, ... to this file."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    checkpoint: Annotated[str, typer.Option(help="best or last (run folders).")] = "best",
) -> None:
    """Classify images with a trained run, preprocessed as the run's evaluation was; unreadable files are reported
    one per line and the rest are still classified (exit code 1 if any could not be read)."""
    from smallvit.predict import check_csv_path, find_images, load_predictor, predict_files, write_csv

    if csv_file is not None:
        check_csv_path(csv_file)
    predictor = load_predictor(model, device=device, checkpoint=checkpoint)
    files = find_images(images)

    def report_error(path: str, why: str) -> None:
        message = f"error: cannot read {path} ({why}): skipped"
        err_console.print(message, markup=False, highlight=False, soft_wrap=True)

    result = predict_files(predictor, files, top_k=top_k, on_error=report_error)
    k = min(top_k, len(predictor.classes))
    if csv_file is None or len(result.predictions) <= 20:
        table = Table("image", *[name for rank in range(1, k + 1) for name in (f"top-{rank}", "p")], box=None)
        for p in result.predictions:
            table.add_row(p.path, *[cell for c, v in zip(p.classes, p.probabilities) for cell in (c, f"{v:.3f}")])
        console.print(table)
    if csv_file is not None:
        write_csv(result.predictions, csv_file, k)
        console.print(f"wrote {len(result.predictions)} predictions to {csv_file}", highlight=False)
    if result.errors:
        err_console.print(f"{len(result.errors)} of {len(files)} files could not be read", highlight=False)
        raise typer.Exit(1)


@app.command(epilog="Example:\n\n  smallvit plot runs/quickstart-20261125-120000")
def plot(
    run: Annotated[Path, typer.Argument(help="Run folder (a multi-stage run: its last stage).")],
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
) -> None:
    """Draw a run's pictures into its folder: curves, confusion matrix, worst-classified validation images,
    predicted vs true patch positions, position-embedding similarity, mean attention distance (those that apply)."""
    from smallvit.engine.logging import plot_curves
    from smallvit.engine.pictures import draw_run_pictures
    from smallvit.runs import load_run

    stage = _stage(run)
    experiment = load_run(stage, checkpoint)
    written = [path.name for path in [plot_curves(stage)] if path is not None]
    analysis = draw_run_pictures(experiment, experiment.model, stage, checkpoint=checkpoint)
    written += list(analysis.pictures.values())
    console.print(f"{stage}: wrote {', '.join(written)} and analysis.json ({analysis.weights})", highlight=False)


@app.command()
def recipes() -> None:
    """List the shipped recipes with one-line descriptions, the recommended one for small data first."""
    from smallvit.config import available_recipes
    from smallvit.fit import rules as fit_rules

    table = Table("recipe", "description")
    shipped = available_recipes()
    recommended = fit_rules.SMALL_DATA_RECIPE  # listed first: the recipe to start from on small data
    for name in sorted(shipped, key=lambda name: name != recommended):
        table.add_row(name, shipped[name])
    console.print(table)


@app.command()
def datasets(root: Annotated[Path | None, typer.Option(help="Data root (default: $SMALLVIT_DATA).")] = None) -> None:
    """List the supported datasets and whether each is prepared."""
    from smallvit.data import DATASETS

    table = Table("dataset", "splits", "classes", "size / patch", "prepared")
    for name, info in DATASETS.items():
        table.add_row(
            name,
            ", ".join(info.splits),
            str(info.num_classes or "from folder"),
            f"{info.image_size} px / {info.patch_size}",
            "yes" if info.is_prepared(root) else "no",
        )
    console.print(table)


@app.command(
    epilog="Examples:\n\n  smallvit prepare cifar10-jpeg --source ../shared/data/cifar10-jpeg.tar.gz"
    "\n\n  smallvit prepare cifar10 --download",
)
def prepare(
    dataset: Annotated[str, typer.Argument(help="Dataset name (see `smallvit datasets`).")],
    source: Annotated[Path | None, typer.Option(help="Local archive or folder to prepare from.")] = None,
    download: Annotated[bool, typer.Option(help="Download from the dataset's official URL.")] = False,
    root: Annotated[Path | None, typer.Option(help="Data root (default: $SMALLVIT_DATA).")] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check a --source file that bears an upstream file's name against its published checksum "
            "(--no-verify: accept a repacked copy). Extracted folders cannot be checked; downloads always are.",
        ),
    ] = True,
) -> None:
    """Prepare a dataset from a local archive/folder or by downloading it."""
    from smallvit.data import prepare_dataset

    path = prepare_dataset(dataset, source=source, root=root, download=download, verify=verify)
    console.print(f"prepared {dataset} in {path}")


@app.command(
    epilog="Examples:\n\n  smallvit sweep results/sweeps/legacy-20ep.yaml --dry-run"
    "\n\n  smallvit sweep my-sweep.yaml --only weak --only strong"
    "\n\n  smallvit sweep my-sweep.yaml --seed 0",
)
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML: runs (recipe + overrides) × seeds.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and time left; train nothing.")] = False,
    runs_dir: Annotated[
        Path | None, typer.Option("--runs-dir", help="Where the run folders go (default: the sweep's runs_dir).")
    ] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Only this run of the sweep (repeatable).")] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Only this seed (repeatable).")] = None,
) -> None:
    """Train every run × seed of a sweep file, one process each, in order; rerun it to continue where it stopped."""
    import shlex

    from smallvit.sweep import load_sweep, plan_sweep, plan_table, plan_total, run_sweep

    plan = plan_sweep(load_sweep(sweep_file), runs_dir=runs_dir, only=only, seeds=seed)
    console.print(plan_table(plan))
    console.print(plan_total(plan))
    if dry_run:
        return
    try:
        run_sweep(plan, console=console)
    except KeyboardInterrupt:
        again = ["smallvit", "sweep", str(sweep_file), *(["--runs-dir", str(runs_dir)] if runs_dir else [])]
        again += [arg for name in only or [] for arg in ("--only", name)]
        again += [arg for value in seed or [] for arg in ("--seed", str(value))]
        err_console.print(f"interrupted: continue with `{shlex.join(again)}`", markup=False, highlight=False)
        raise typer.Exit(130) from None


@app.command(
    epilog="Examples:\n\n  smallvit compare runs/sweeps/cifar10-sample-60ep --output results/cifar10-sample-60ep"
    "\n\n  smallvit compare results/legacy-20ep --baseline quickstart --json"
    "\n\n  smallvit compare results/cifar10-60ep results/imagenette-40ep --by-dataset"
    "\n\n  smallvit compare results/equal-time-* --leave-one-out --output results/equal-time-overview",
)
def compare(
    paths: Annotated[
        list[Path], typer.Argument(help="Run folders, summary.json files, sweep files, runs.csv tables, their folders.")
    ],
    baseline: Annotated[
        str | None, typer.Option(help="Row to measure gains against (default: the row a sweep marked baseline).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder for report.md, accuracy.png, val_curves.png and the runs' table (runs.csv)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
    checkpoint: Annotated[
        str,
        typer.Option(help="final: the last epoch's accuracies; best: those of the checkpoint chosen on validation."),
    ] = "final",
    by_dataset: Annotated[
        bool,
        typer.Option(
            "--by-dataset", help="One line per row name, one column per dataset (test top-1); --output: datasets.md."
        ),
    ] = False,
    leave_out: Annotated[
        bool,
        typer.Option(
            "--leave-one-out",
            help="Each dataset in turn: the row chosen on the others' validation gains, and its test gain there; "
            "--output: leave-one-out.md.",
        ),
    ] = False,
    rows_shown: Annotated[
        str | None, typer.Option("--rows", help="Only these rows, in this order (names separated by commas).")
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(help="OLD=NEW: rename a row before grouping, so rows of several studies line up (repeatable)."),
    ] = None,
) -> None:
    """Table of runs grouped by row: test/validation top-1 (mean ± std over seeds), gain over a baseline, speed."""
    import json
    import shlex

    from smallvit import compare as comparing

    if by_dataset and leave_out:
        raise SmallViTError("--by-dataset and --leave-one-out write different tables: give one of them per command")
    runs = comparing.rename_runs(comparing.collect_runs(paths, checkpoint), comparing.parse_aliases(alias or []))
    rows, notes = comparing.compare_rows(runs, baseline=baseline, datasets_as_columns=by_dataset or leave_out)
    rows = comparing.select_rows(rows, rows_shown.split(",")) if rows_shown else rows
    for note in notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    as_table, to_json, write = (comparing.rows_table, comparing.rows_json, comparing.write_report)
    if by_dataset:
        as_table, to_json, write = (comparing.dataset_table, comparing.dataset_json, comparing.write_dataset_table)
    if leave_out:
        as_table, to_json, write = (
            comparing.leave_one_out_table,
            comparing.leave_one_out_json,
            comparing.write_leave_one_out,
        )
    if as_json:
        typer.echo(json.dumps(to_json(rows), indent=2))
    else:
        console.print(as_table(rows))
    if output is not None:
        command = ["smallvit", "compare", *map(str, paths), *(["--baseline", baseline] if baseline else [])]
        command += ["--checkpoint", checkpoint] if checkpoint != "final" else []
        command += ["--by-dataset"] if by_dataset else []
        command += ["--leave-one-out"] if leave_out else []
        command += [arg for text in alias or [] for arg in ("--alias", text)]
        command += ["--rows", rows_shown] if rows_shown else []
        written = write(rows, output, command=shlex.join([*command, "--output", str(output)]))
        (err_console if as_json else console).print(f"wrote {', '.join(map(str, written))}", highlight=False)


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except SmallViTError as err:
        if debug:
            raise
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
