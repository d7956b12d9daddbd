"""``smallvit fit FOLDER``: from a folder of images in class folders to a trained, exported and explained model.

:func:`fit_folder` runs the steps in order, each a function that can be used alone:

1. :func:`scan_folder` — the folder's layout, classes, image counts, sizes, modes and unreadable files (headers only);
2. :func:`choose_recipe` and :func:`choose_geometry` — the recipe (and the largest image size it was measured at),
   then the image size, patch size and channels, by rules written as small pure functions with their evidence in the
   docstring, so that they can be checked and updated;
3. decoding every split once into the decoded-split cache (timed, reported, not counted in the budget);
4. :func:`measure_speed` — a few real training steps of the chosen model at the chosen size, an evaluation batch
   and a checkpoint write, and :func:`plan_epochs` — the epochs that fit ``--budget`` (``--epochs`` overrides);
5. training through the engine (:func:`smallvit.engine.runner.run_recipe`), which also draws the run's pictures;
6. a timm export in ``<run>/export/`` and ``<run>/report.md``: the data, every choice and why, curves, accuracy,
   per-class accuracy, the confusion matrix and the worst-classified validation images.

``--budget B`` covers everything after decoding (measuring, training, evaluation, pictures, export, report): epochs
are planned to fill 90 % of it, and ``train.time_limit_s`` is set to the share of B left for the training loop, so
that a machine that slows down during the run stops training early (after the step that reaches the limit, with its
evaluation, checkpoint and summary) and still ends within B + 20 %. The learning-rate schedule stays the one planned
for the epoch count; ``fit.json`` and the report give the planned and the trained epochs and the epoch time measured
against the one planned.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from smallvit.config import DataConfig, RunConfig, load_recipe
from smallvit.data import split_validation
from smallvit.data.formats import IMAGE_SUFFIXES
from smallvit.data.loader import InMemoryLoader
from smallvit.engine.checkpoint import optimizer_to_flat, prefixed, save_checkpoint
from smallvit.engine.experiment import build_experiment, load_splits
from smallvit.engine.runner import new_run_dir, run_recipe
from smallvit.engine.trainer import (
    build_optimizer,
    epochs_text,
    evaluate,
    objective_weights,
    optimizer_step,
    resolve_precision,
)
from smallvit.errors import ConfigError, DataError
from smallvit.runs import export_run

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
TOKEN_GRID = 8  # tokens per side aimed at: 8 x 8 = 64, the CIFAR results' grid (32 px / patch 4; imagenette: 7 x 7)
DECODED_MEMORY_BYTES = 4 * 2**30  # the decoded training images must fit in this much memory
BUDGET_FILL = 0.9  # plan epochs to fill this share of the budget
SMALL_DATA_PER_CLASS = 1000
# The conv tokenizer's largest size: imagenette-2040's protocol (patch 16, 7 x 7), where it was measured. A
# vit_lite_conv model step against vit_lite's (benchmarks/bench_tokenizer.py): 1.16x at 32 px / patch 4, 1.38x at
# 64 / 8, 2.49x at 112 / 16, 7.66x at 224 / 32.
CONV_TOKENIZER_MAX_SIZE = 112


# ---------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Geometry:
    """The image size the data is stored and trained at, the ViT patch size, the channels, and why each."""

    image_size: int
    patch_size: int
    in_chans: int
    size_reason: str
    patch_reason: str
    channels_reason: str

    @property
    def reason(self) -> str:
        return f"{self.size_reason}; {self.patch_reason}; {self.channels_reason}"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def choose_geometry(
    short_sides: Sequence[int],
    num_images: int | None = None,
    memory_bytes: int = DECODED_MEMORY_BYTES,
    max_size: int = MAX_IMAGE_SIZE,
) -> Geometry:
    """Image size, patch size and channels from the images' shorter sides (the side :func:`fit` resizes).

    | step     | rule                                                                                      |
    |----------|-------------------------------------------------------------------------------------------|
    | size     | the median shorter side, clamped to 32 px – ``max_size`` (224, or the recipe's) (1)       |
    | memory   | lowered until ``num_images`` decoded images fit in ``memory_bytes`` (2)                   |
    | patch    | the power of two nearest ``size / 8`` (by ratio), at least 4 px (3)                       |
    | snap     | the size becomes the nearest multiple of the patch: a grid of 6 x 6 to 11 x 11 tokens     |
    | channels | 3: colour images as they are, grayscale ones as 3 equal channels (2)                      |

    (1) Images are resized so that their shorter side is the size, then center-cropped; at the median, half the images
    are at or below their own resolution, so little is upsampled. (2) 4 GiB: 85,000 RGB images at 128 px. A folder of
    only grayscale images would fit three times as many as one channel, but the engine does not train
    ``data.in_chans=1`` yet (its normalisation makes 3 channels). (3) About 8 x 8 = 64 tokens, the grid of the
    README's CIFAR results (32 px / patch 4; imagenette-2040: 112 px / patch 16, 7 x 7), so that a step costs about the
    same at every size; a power of two because the conv tokenizer :func:`choose_recipe` picks halves the resolution
    once per factor of 2 (:class:`smallvit.models.ConvTokenizer`).

    Examples: median 32 px -> 32 / 4 (8 x 8); 112 px -> 112 / 16 (7 x 7); 100 px -> 96 / 16 (6 x 6);
    60 px -> 64 / 8 (8 x 8); 500 px photos -> 224 / 32 (7 x 7), or 112 / 16 with ``max_size=112``.
    """
    if not short_sides:
        raise DataError("no readable image to choose a size from: the folder's images are all unreadable")
    median = statistics.median(short_sides)
    size = min(max(median, MIN_IMAGE_SIZE), max_size)
    reasons = [f"median shorter side {median:g} px"]
    if median > max_size or median < MIN_IMAGE_SIZE:
        reasons.append(f"clamped to {MIN_IMAGE_SIZE}–{max_size} px")
    channels = 3
    if num_images:
        fits = math.isqrt(memory_bytes // (num_images * channels))
        if fits < size:
            size = max(fits, MIN_IMAGE_SIZE)
            reasons.append(f"lowered so that {num_images} decoded images fit in {memory_bytes / 2**30:g} GiB")
    patch = max(4, 2 ** round(math.log2(size / TOKEN_GRID)))
    grid = round(size / patch)
    image_size = patch * grid
    if image_size != round(size):
        reasons.append(f"snapped to {grid} x the patch, {image_size} px")
    return Geometry(
        image_size,
        patch,
        channels,
        ", ".join(reasons),
        f"the power of two nearest size / {TOKEN_GRID}: {grid}x{grid} = {grid * grid} tokens, near the "
        "README's results (32 px / patch 4: 8x8; 112 px / patch 16: 7x7); a power of two for the conv tokenizer",
        "colour images as they are, grayscale ones as 3 equal channels",
    )


@dataclass(frozen=True)
class RecipeChoice:
    """The recipe :func:`choose_recipe` picked, the overrides it adds, the largest image size to train it at, the
    name of the rule that fired, and why."""

    recipe: str
    rule: str
    reason: str
    overrides: tuple[str, ...] = ()
    max_image_size: int = MAX_IMAGE_SIZE

    @property
    def text(self) -> str:
        """The recipe and its overrides as ``smallvit train`` takes them."""
        return " ".join([self.recipe, *self.overrides])


def choose_recipe(num_train: int, num_classes: int) -> RecipeChoice:
    """The recipe the project's own results found best for data of this size, and the largest image size for it.

    | rule           | when                               | recipe                                         | evidence |
    |----------------|------------------------------------|------------------------------------------------|----------|
    | ``small-data`` | ≤ 1,000 training images per class  | ``relvit-joint``, conv tokenizer, ≤ 112 px (1) | (2), (3) |
    | ``more-data``  | more than 1,000 per class          | ``quickstart``, ≤ 224 px                       | (4)      |

    (1) The quickstart baseline (vit_lite, crop + flip, label smoothing 0.1, AdamW 1e-3) + RelViT's relations and
    absolute-position objectives, on ``vit_lite_conv`` (CCT's convolutional tokenizer instead of the patch projection)
    without a position embedding (RelViT's setting: the position tasks keep teaching).
    (2) CIFAR-10 sample at 32 px / patch 4, 204 images per class, 60 epochs (issue 10's protocol, README results):
    test top-1 57.83 ± 0.63 against 47.65 ± 0.40 for the baseline (3 seeds each), +10.18; validation 62.00 against
    53.73, and against 57.53 for the same recipe with the position embedding (chosen on validation); its step costs
    1.18x the baseline's (bench_objectives). imagenette-2040 at 112 px / patch 16, 40 epochs, not re-tuned: 69.07 ±
    0.81 test against 50.07 ± 0.38 (+19.00) and 54.83 for ``relvit-joint`` on vit_lite (3 seeds). There its step
    costs 2.03x (bench_objectives), so fit's budget trains about half the epochs: at equal time (20 epochs against
    relvit-joint's 40, the margin fixed before the runs) it scored 59.53 ± 0.76 validation against 51.33 ± 1.50
    (64.93 test against 54.83; 3 seeds). Patch 8 (64 px) lies between the two: a model step 1.38x vit_lite's, against
    1.16x at patch 4 and 2.49x at 16 (bench_tokenizer).
    (3) Why at most 112 px: larger photos would get patch 32 at 224 px, where the tokenizer's five stages make a
    model step 7.66x vit_lite's (bench_tokenizer). The alternative, ``relvit-joint`` on vit_lite at 224 px / patch
    32, scored 50.47 ± 2.08 validation / 53.63 ± 0.90 test on imagenette-2040 (40 epochs, 3 seeds, about the time of
    the tokenizer's 20 epochs at 112 px), far below the tokenizer's 59.53 / 64.93 at 112 px; the rule (val below
    58.03) was fixed before its seeds 1 and 2 ran.
    (4) No result yet with this much data per class: the gains were measured at 204 per class, so they are not
    assumed to carry over.

    Not chosen, and why: the strong-augmentation ``supervised`` recipe (RandAugment, mixup/CutMix) — 40.65 against
    the baseline's 47.65 at 60 epochs, still climbing; every pre-training recipe (RelViT, MAE, IDMM) — below the
    baseline at 20 and 50 epochs on the CIFAR-10 sample, and fine-tuning loses most of what they learned at these
    budgets (README, "Fine-tuning that keeps what pre-training learned").
    """
    per_class = num_train / max(num_classes, 1)
    if per_class > SMALL_DATA_PER_CLASS:
        return RecipeChoice(
            "quickstart",
            "more-data",
            f"{per_class:.0f} training images per class (more than {SMALL_DATA_PER_CLASS}): the gains were "
            "measured at 204 per class only, so the plain supervised baseline is trained",
        )
    return RecipeChoice(
        "relvit-joint",
        "small-data",
        f"{per_class:.0f} training images per class (at most {SMALL_DATA_PER_CLASS}): the conv tokenizer + "
        "relations + abs_position without a position embedding gained +10.18 test points over the baseline on the "
        "204-per-class CIFAR-10 sample (32 px / patch 4, 60 epochs; chosen on validation over the same with a position "
        "embedding) and +19.00 on imagenette-2040 (112 px / patch 16, 40 epochs), 3 seeds each; its step costs 1.18x "
        "the baseline's at patch 4 and 2.03x at patch 16, and at equal time on imagenette-2040 it still beat "
        "relvit-joint on vit_lite (59.53 against 51.33 validation, 3 seeds); images at most "
        f"{CONV_TOKENIZER_MAX_SIZE} px, as there: at 224 px / patch 32 its step costs 7.66x, and relvit-joint on "
        "vit_lite there scored 50.47 validation in about the same time (3 seeds); pre-training did not pay at these "
        "budgets",
        ("model.preset=vit_lite_conv", "model.pos_embed=false"),
        max_image_size=CONV_TOKENIZER_MAX_SIZE,
    )


@dataclass(frozen=True)
class Speed:
    """What a run costs, measured by :func:`measure_speed` (seconds)."""

    step_s: float  # one optimizer step (augmentation, forward, backward, update) of a full batch
    steps_per_epoch: int
    eval_s: float  # one pass over the validation split
    test_s: float  # one pass over the test split (0 without one)
    checkpoint_s: float  # writing the last checkpoint, once per epoch
    setup_s: float  # building the experiment from the decoded cache, at the start of training and of the export
    pictures_s: float  # drawing the run's pictures at the end of training (5 figures, 3 validation passes)


@dataclass(frozen=True)
class EpochPlan:
    epochs: int
    eval_every: int
    planned_s: float  # everything after decoding, as planned
    epoch_s: float  # one epoch, as planned
    time_limit_s: float  # train.time_limit_s: the budget less everything outside the training loop and a stop's tail
    reason: str


def plan_epochs(budget_s: float, speed: Speed, spent_s: float = 0.0) -> EpochPlan:
    """The most epochs whose planned cost stays within ``BUDGET_FILL`` (90 %) of ``budget_s``.

    Planned cost = ``spent_s`` (measuring) + fixed + epochs x per epoch, where per epoch = steps x step + checkpoint
    + one validation pass every ``eval_every`` epochs (every epoch up to 20 epochs, then about 20 evaluations in all),
    and fixed = two set-ups (training, export) + the final validation pass + two test passes (final and best
    weights) + the pictures. At least one epoch is planned, even when that exceeds the budget (the reason says so).

    The time limit (``train.time_limit_s``) is ``budget_s`` - fixed - one step - one checkpoint: a loop stopped at it
    (after the step that reaches it, then the final validation pass and the checkpoint) leaves fixed's other parts
    time within the budget. Planned epochs end at 90 % of the budget, so the limit stops a run slower than measured,
    or one whose budget does not hold one epoch (after at least one step).
    """
    fixed = 2 * speed.setup_s + speed.eval_s + 2 * speed.test_s + speed.pictures_s + spent_s
    available = BUDGET_FILL * budget_s - fixed

    def per_epoch(eval_every: int) -> float:
        return speed.steps_per_epoch * speed.step_s + speed.checkpoint_s + speed.eval_s / eval_every

    epochs = max(int(available // per_epoch(1)), 1)
    eval_every = max(1, round(epochs / 20))
    if eval_every > 1:
        epochs = max(int(available // per_epoch(eval_every)), 1)
        eval_every = max(1, round(epochs / 20))
    planned = fixed + epochs * per_epoch(eval_every)
    time_limit = round(max(budget_s - fixed - speed.step_s - speed.checkpoint_s, 0.01), 2)
    reason = (
        f"{speed.step_s:.2f} s a step x {speed.steps_per_epoch} steps + {speed.checkpoint_s:.2f} s checkpoint + "
        f"{speed.eval_s:.2f} s validation every {eval_every} epoch(s) = {per_epoch(eval_every):.1f} s an epoch; "
        f"{fixed:.0f} s fixed (measuring, set-ups, final evaluations, pictures)"
    )
    if available < per_epoch(eval_every):
        reason += (
            f"; the budget of {budget_s:.0f} s does not hold one epoch ({planned:.0f} s): 1 epoch is planned and "
            f"training stops at {time_limit:g} s (train.time_limit_s)"
        )
    else:
        reason += (
            f"; planned {planned:.0f} s of the {budget_s:.0f} s budget; training stops at {time_limit:g} s "
            "(train.time_limit_s) if it runs slower than measured"
        )
    return EpochPlan(epochs, eval_every, planned, per_epoch(eval_every), time_limit, reason)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``15m``, ``1h``, ``1h30m``, ``2.5m``."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", value)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", value).strip():
            raise ConfigError(f"--budget {text!r} is not a duration: write e.g. 90s, 15m, 1h or 1h30m")
        seconds = sum(float(number) * {"h": 3600, "m": 60, "s": 1}[unit] for number, unit in parts)
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r} is not positive: give the time training may take, e.g. 15m")
    return seconds


# ---------------------------------------------------------------- the folder


@dataclass
class FolderSummary:
    """What :func:`scan_folder` found. ``counts[split][class]`` counts readable images; ``flat`` folders (no split
    folders) have one split, ``all``."""

    folder: Path
    flat: bool
    classes: list[str]
    counts: dict[str, dict[str, int]]
    sizes: list[tuple[int, int]]  # (width, height) of every readable image
    modes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def total(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def carves_val(self) -> bool:
        """Split folders without ``val/``: validation is held out of ``train/`` (``data.val_split=none``)."""
        return not self.flat and "val" not in self.counts

    def train_count(self, val_fraction: float = 0.1) -> int:
        """Training images after the validation split is held out (flat folders and split folders without ``val/``:
        ``val_fraction`` of each class, as the imagefolder dataset and the engine hold it out)."""
        if self.flat:
            return sum(n - round(val_fraction * n) for n in self.counts["all"].values())
        train = self.counts.get("train", {})
        if self.carves_val:
            labels = torch.repeat_interleave(torch.arange(len(train)), torch.tensor(list(train.values())))
            return len(split_validation(labels, val_fraction)[0])
        return sum(train.values())

    def to_json(self) -> dict:
        sides = [min(size) for size in self.sizes]
        return {
            "folder": str(self.folder),
            "layout": "FOLDER/<class>/<image>" if self.flat else "FOLDER/<split>/<class>/<image>",
            "classes": self.classes,
            "counts": self.counts,
            "images": self.total,
            "shorter_side": _distribution(sides),
            "modes": dict(self.modes),
            "formats": dict(self.formats),
            "unreadable": [{"path": path, "why": why} for path, why in self.unreadable],
        }


def _distribution(values: list[int]) -> dict:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(folder: Path) -> FolderSummary:
    """Read every image's header in ``FOLDER/<class>/<image>`` or ``FOLDER/{train,val,test}/<class>/<image>`` (the
    layouts of the ``imagefolder`` dataset): sizes, modes, formats, and the files that cannot be opened. Nothing is
    decoded; a file whose header reads but whose pixels are damaged is found while decoding."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give FOLDER holding FOLDER/<class>/<image>")
    subdirs = _class_folders(folder)
    flat = any(_image_files(d) for d in subdirs)
    if flat:
        splits = {"all": subdirs}
    else:
        known = [d for d in subdirs if d.name in ("train", "val", "test")]
        if not any(d.name == "train" for d in known):
            found = ", ".join(d.name for d in subdirs) or "nothing"
            raise DataError(
                f"{folder} holds no class folders with images (found: {found}): expected FOLDER/<class>/<image> "
                "or FOLDER/train/<class>/<image>"
            )
        splits = {
            d.name: _class_folders(d) for d in sorted(known, key=lambda d: ("train", "val", "test").index(d.name))
        }
    summary = FolderSummary(folder, flat, [], {}, [])
    classes = set()
    for split, class_dirs in splits.items():
        summary.counts[split] = {}
        for class_dir in class_dirs:
            readable = 0
            for path in _image_files(class_dir):
                try:
                    with Image.open(path) as image:
                        summary.sizes.append(image.size)
                        summary.modes[image.mode] += 1
                        summary.formats[image.format or "?"] += 1
                        readable += 1
                except Exception as err:  # a header PIL cannot read: not an image, truncated, hostile
                    summary.unreadable.append((str(path), " ".join(str(err).split()) or type(err).__name__))
            summary.counts[split][class_dir.name] = readable
            classes.add(class_dir.name)
    summary.classes = sorted(classes)
    for per_class in summary.counts.values():
        for name in summary.classes:
            per_class.setdefault(name, 0)
    if summary.total == 0:
        raise DataError(f"{folder} holds no readable image: add images in FOLDER/<class>/<image>")
    return summary


def summary_table(summary: FolderSummary) -> Table:
    splits = list(summary.counts)
    table = Table("class", *splits)
    for name in summary.classes:
        table.add_row(name, *(str(summary.counts[split][name]) for split in splits))
    return table


def summary_lines(summary: FolderSummary, unreadable: bool = True) -> list[str]:
    sides = _distribution([min(size) for size in summary.sizes])
    widths = _distribution([size[0] for size in summary.sizes])
    heights = _distribution([size[1] for size in summary.sizes])
    lines = [
        f"{summary.folder}: {len(summary.classes)} classes, {summary.total} readable images",
        f"image sizes: width {widths['min']}–{widths['max']} (median {widths['median']:g}), height "
        f"{heights['min']}–{heights['max']} (median {heights['median']:g}); shorter side median {sides['median']:g} px",
        "modes: " + ", ".join(f"{mode} {count}" for mode, count in summary.modes.most_common()),
        "formats: " + ", ".join(f"{name} {count}" for name, count in summary.formats.most_common()),
    ]
    if summary.unreadable and unreadable:
        first = summary.unreadable[0]
        lines.append(f"unreadable files: {len(summary.unreadable)}, the first {first[0]} ({first[1]})")
    return lines


# ---------------------------------------------------------------- measuring


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speed(config: RunConfig, scratch: Path, seconds: float = 2.0) -> Speed:
    """Time what a run of ``config`` spends its time on, with its data already in the decoded cache: building the
    experiment, optimizer steps on real training batches (one warm-up step, then timed steps for ``seconds``: at
    least one, at most 20), one evaluation batch (scaled to the validation and test splits), one checkpoint write
    and one figure (into ``scratch``, removed after). The modules a run imports late (TensorBoard, matplotlib) are
    imported here, so that their first-import time is spent now, not in the planned training."""
    import matplotlib.pyplot  # noqa: F401  (first import: seconds on a busy machine)
    import torch.utils.tensorboard  # noqa: F401

    from smallvit.engine.pictures import draw_confusion_matrix

    started = time.perf_counter()
    exp = build_experiment(config)
    setup_s = time.perf_counter() - started
    tc = config.train
    model = exp.model
    optimizer = build_optimizer(model, config)
    precision = resolve_precision(tc.precision, exp.device)
    loader = InMemoryLoader(
        exp.train_images,
        exp.train_labels,
        batch_size=tc.batch_size,
        seed=tc.seed,
        drop_last=len(exp.train_labels) >= tc.batch_size,
    )
    gen = torch.Generator(device=exp.device).manual_seed(tc.seed)
    weights = objective_weights(config, 0.0)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        optimizer_step(exp, model, optimizer, batch, gen, 0, weights, precision)

    step()  # warm-up: first-call allocation and kernel selection
    _synchronize(exp.device)
    started, count = time.perf_counter(), 0
    while count < 1 or (time.perf_counter() - started < seconds and count < 20):
        step()
        count += 1
    _synchronize(exp.device)
    step_s = (time.perf_counter() - started) / count

    def eval_seconds(which: str) -> float:
        data = exp.val if which == "val" else exp.test
        if data is None:
            return 0.0
        part = replace(data, images=data.images[: tc.batch_size], labels=data.labels[: tc.batch_size])
        timed = replace(exp, val=part) if which == "val" else replace(exp, test=part)
        begun = time.perf_counter()
        evaluate(timed, model, which)
        _synchronize(exp.device)
        return (time.perf_counter() - begun) * len(data.labels) / len(part.labels)

    eval_s, test_s = eval_seconds("val"), eval_seconds("test")
    optim_tensors, optim_meta = optimizer_to_flat(optimizer)
    folder = scratch / ".speed-test"
    folder.mkdir(parents=True, exist_ok=True)
    begun = time.perf_counter()
    tensors = {**prefixed("model.", model.state_dict()), **optim_tensors}
    save_checkpoint(folder / "last.safetensors", tensors, {"optimizer": optim_meta})
    checkpoint_s = time.perf_counter() - begun
    classes = exp.classes
    for _attempt in range(2):  # the second figure is the one timed: the first pays for loading fonts
        begun = time.perf_counter()
        draw_confusion_matrix(torch.zeros(len(classes), len(classes)), classes, folder / "figure.png", "timing")
    figure_s = time.perf_counter() - begun
    shutil.rmtree(folder)
    pictures_s = 5 * figure_s + 3 * eval_s
    return Speed(step_s, len(loader), eval_s, test_s, checkpoint_s, setup_s, pictures_s)


# ---------------------------------------------------------------- fit


@dataclass
class FitResult:
    """Everything :func:`fit_folder` decided and measured; ``fit.json`` in the run folder holds it."""

    run_dir: Path
    summary: FolderSummary
    geometry: Geometry
    recipe: RecipeChoice
    epochs: int
    epochs_reason: str
    budget_s: float | None
    overrides: list[str]
    validation: str = ""
    time_limit_s: float | None = None
    decode_s: float = 0.0
    measure_s: float = 0.0
    train_s: float = 0.0
    report_s: float = 0.0
    planned_s: float | None = None
    planned_epoch_s: float | None = None
    speed: Speed | None = None
    run_summary: dict = field(default_factory=dict)
    export_dir: Path | None = None

    @property
    def best_epoch(self) -> int | None:
        """The epoch of the exported, validation-chosen checkpoint (None: the run has none)."""
        path = self.run_dir / "checkpoints" / "best.json"
        return json.loads(path.read_text()).get("epoch") if path.is_file() else None

    @property
    def actual_epoch_s(self) -> float | None:
        """One epoch as it ran: the training loop's time over the epochs it trained."""
        seconds, epochs = self.run_summary.get("training_s"), self.run_summary.get("epochs_run")
        return seconds / epochs if seconds and epochs else None

    @property
    def stopped_on_time_limit(self) -> bool:
        return bool((self.run_summary.get("time_limit") or {}).get("stopped"))

    @property
    def slowdown(self) -> float | None:
        """How much slower the epochs ran than measured (above 1: other work slowed the machine down)."""
        if self.planned_epoch_s and self.actual_epoch_s:
            return self.actual_epoch_s / self.planned_epoch_s
        return None

    @property
    def after_decoding_s(self) -> float:
        """Measuring + training + export + report: what ``--budget`` covers."""
        return self.measure_s + self.train_s + self.report_s

    def to_json(self) -> dict:
        return {
            "folder": self.summary.to_json(),
            "geometry": asdict(self.geometry),
            "recipe": asdict(self.recipe),
            "epochs": self.epochs,
            "epochs_run": self.run_summary.get("epochs_run"),
            "epochs_reason": self.epochs_reason,
            "validation": self.validation,
            "budget_s": self.budget_s,
            "time_limit_s": self.time_limit_s,
            "stopped_on_time_limit": self.stopped_on_time_limit,
            "planned_s": self.planned_s,
            "epoch_s": {"planned": self.planned_epoch_s, "actual": self.actual_epoch_s, "slowdown": self.slowdown},
            "speed": asdict(self.speed) if self.speed else None,
            "overrides": self.overrides,
            "seconds": {
                "decoding": round(self.decode_s, 1),
                "measuring": round(self.measure_s, 1),
                "training": round(self.train_s, 1),
                "training_loop": self.run_summary.get("training_s"),
                "export_and_report": round(self.report_s, 1),
                "after_decoding": round(self.after_decoding_s, 1),
            },
            "export": str(self.export_dir) if self.export_dir else None,
        }


def fit_overrides(summary: FolderSummary, geometry: Geometry, device: str, on_bad_file: str) -> list[str]:
    """The ``key=value`` overrides that turn the chosen recipe into a run on the folder."""
    overrides = [
        "data.dataset=imagefolder",
        f"data.root={summary.folder.resolve()}",
        f"data.image_size={geometry.image_size}",
        f"data.in_chans={geometry.in_chans}",
        f"data.on_bad_file={on_bad_file}",
        f"data.test_split={'test' if 'test' in summary.counts else 'none'}",
        *(["data.val_split=none"] if summary.carves_val else []),  # held out of train/ (data.val_fraction)
        f"model.patch_size={geometry.patch_size}",
        f"augment.main.ops.0.padding={geometry.patch_size}",  # random crop: shift by up to one patch, as at 32 px / 4
        f"train.device={device}",
        "data.decode=draft",  # camera photos: JPEGs decoded at reduced scale (Pillow's draft mode)
    ]
    return overrides


def validation_source(summary: FolderSummary, data: DataConfig) -> str:
    """Where the validation images (which choose the exported checkpoint) come from, in words."""
    if summary.flat:
        return "10 % of each class held out at random with seed 0 (the imagefolder dataset's split)"
    if summary.carves_val:
        return (
            f"no val/ folder: {100 * data.val_fraction:g} % of each class of train/ held out at random with seed "
            f"{data.val_seed} (data.val_fraction, data.val_seed)"
        )
    return "the folder's val/ split"


def _check_folder(summary: FolderSummary, on_bad_file: str) -> None:
    if summary.unreadable and on_bad_file == "error":
        path, why = summary.unreadable[0]
        raise DataError(
            f"{len(summary.unreadable)} unreadable image file(s) in {summary.folder}, the first {path} ({why}): "
            "remove them, or pass --on-bad-file skip to leave them out"
        )
    empty = [name for name, n in (summary.counts.get("train") or summary.counts["all"]).items() if n == 0]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no readable training image in {summary.folder}: add images or remove it"
        )


def fit_folder(
    folder: Path,
    *,
    budget_s: float | None = 15 * 60,
    epochs: int | None = None,
    device: str = "auto",
    output: Path | None = None,
    runs_dir: Path = Path("runs"),
    on_bad_file: str = "error",
    overrides: Sequence[str] = (),
    quiet: bool = False,
    console: Console | None = None,
) -> FitResult:
    """Scan ``folder``, choose, decode, measure, train, export and report; see the module docstring.

    overrides: ``key=value`` settings applied after fit's own choices (``model.preset=vit_tiny``), as ``smallvit
        train`` takes them; the report lists them.
    """
    console = console or Console()
    if epochs is not None and epochs <= 0:
        raise ConfigError(f"--epochs {epochs} must be at least 1")
    summary = scan_folder(folder)
    console.print(summary_table(summary))
    for line in summary_lines(summary):
        console.print(line, markup=False, highlight=False)
    _check_folder(summary, on_bad_file)

    recipe = choose_recipe(summary.train_count(), len(summary.classes))
    sides = [min(size) for size in summary.sizes]
    geometry = choose_geometry(sides, num_images=summary.total, max_size=recipe.max_image_size)
    say = dict(markup=False, highlight=False)
    console.print(f"geometry: {geometry.image_size} px, patch {geometry.patch_size} ({geometry.reason})", **say)
    console.print(f"recipe: {recipe.text} (rule {recipe.rule}: {recipe.reason})", **say)

    run_dir = _run_folder(output, runs_dir, summary.folder)
    overrides = [*fit_overrides(summary, geometry, device, on_bad_file), *recipe.overrides, *overrides]
    loaded = load_recipe(recipe.recipe, [*overrides, "train.epochs=1"])
    config = loaded.stages[0]
    validation = validation_source(summary, config.data)
    console.print(f"validation: {validation}", **say)

    started = time.perf_counter()
    load_splits(config)  # decode every split once, into the cache the run then reads
    decode_s = time.perf_counter() - started
    console.print(f"decoded the images in {decode_s:.1f} s (not counted in the budget)", **say)

    result = FitResult(run_dir, summary, geometry, recipe, 0, "", budget_s if epochs is None else None, overrides)
    result.decode_s, result.validation = decode_s, validation
    started = time.perf_counter()
    if epochs is None:
        speed = measure_speed(config, run_dir, seconds=min(2.0, 0.03 * budget_s))
        result.measure_s = time.perf_counter() - started
        plan = plan_epochs(budget_s, speed, spent_s=result.measure_s)
        result.speed, result.planned_s, result.planned_epoch_s = speed, plan.planned_s, plan.epoch_s
        result.epochs, eval_every, result.time_limit_s = plan.epochs, plan.eval_every, plan.time_limit_s
        result.epochs_reason = f"--budget {budget_s:.0f} s: {plan.reason}"
    else:
        result.epochs, eval_every = epochs, max(1, round(epochs / 20))
        result.epochs_reason = f"--epochs {epochs}"
    console.print(f"epochs: {result.epochs} ({result.epochs_reason})", **say)
    result.overrides = [*overrides, f"train.epochs={result.epochs}", f"train.eval_every={eval_every}"]
    if result.time_limit_s is not None:
        result.overrides.append(f"train.time_limit_s={result.time_limit_s}")
    (run_dir / "fit.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")

    started = time.perf_counter()
    loaded = load_recipe(recipe.recipe, result.overrides)
    result.run_summary = run_recipe(loaded, run_dir, quiet=quiet, console=console)[-1]
    result.train_s = time.perf_counter() - started

    started = time.perf_counter()
    result.export_dir = run_dir / "export"
    export_run(run_dir, result.export_dir)
    _record_preprocessing(result.export_dir, config)
    result.report_s = time.perf_counter() - started
    (run_dir / "fit.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    write_report(result)
    result.report_s = time.perf_counter() - started
    (run_dir / "fit.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _run_folder(output: Path | None, runs_dir: Path, folder: Path) -> Path:
    if output is None:
        return new_run_dir(runs_dir, f"fit-{folder.resolve().name}", None)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not an empty folder: give a new folder")
    output.mkdir(parents=True, exist_ok=True)
    return output


def _record_preprocessing(export_dir: Path, config: RunConfig) -> None:
    """Add to the export's ``config.json`` how ``smallvit predict`` must decode images for it: the storage size and
    the decode method of the run (the model's input size and normalisation are in ``pretrained_cfg_overlay``)."""
    path = export_dir / "config.json"
    exported = json.loads(path.read_text())
    exported["smallvit_preprocess"] = {
        "image_size": config.data.image_size,
        "decode": getattr(config.data, "decode", "full"),
        "resize": "shorter side to image_size (bilinear, antialiased), then center crop",
    }
    path.write_text(json.dumps(exported, indent=2) + "\n")


# ---------------------------------------------------------------- report.md


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def write_report(result: FitResult) -> Path:
    """``<run>/report.md``: the data, every choice and why, training, results and pictures, and how to use it."""
    run_dir, summary, geometry = result.run_dir, result.summary, result.geometry
    run = result.run_summary
    final, best = run.get("final", {}), run.get("best", {})
    analysis_path = run_dir / "analysis.json"
    analysis = json.loads(analysis_path.read_text()) if analysis_path.is_file() else {}
    accuracy_key = best.get("metric") or "val/supervised/acc1"  # the metric that chose the exported checkpoint
    test_key = accuracy_key.replace("val/", "test/", 1)
    has_test = "test" in summary.counts
    lines = [f"# fit report: {summary.folder.resolve()}", ""]
    headline = f"Validation top-1 **{_percent(final.get(accuracy_key))}** (final weights)"
    if best.get("value") is not None:
        headline += f", **{_percent(best['value'])}** (best checkpoint, epoch {result.best_epoch}, exported)"
    if has_test:
        best_test = (best.get("test") or {}).get(test_key)
        if best_test is not None:
            headline += f"; test top-1 of the exported checkpoint **{_percent(best_test)}**"
            headline += f" (final weights {_percent(final.get(test_key))})"
        else:
            headline += f"; test top-1 **{_percent(final.get(test_key))}** (final weights, exported)"
    else:
        headline += (
            "; no test split (the validation images chose the checkpoint, so their accuracy is slightly optimistic: "
            "put images in FOLDER/test/<class>/ for an unbiased number)"
        )
    lines += [headline + ".", ""]

    splits = run.get("provenance", {}).get("splits", {})
    columns = dict(summary.counts)
    if summary.carves_val and "val" in splits:  # as trained: train/ less the validation images held out of it
        for role, heading in (("train", "trained"), ("val", "val, held out of train/")):
            columns[heading] = dict(zip(summary.classes, splits[role]["per_class"]))
    lines += ["## Data", "", "| class | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in summary.classes:
        lines.append(f"| {name} | " + " | ".join(str(counts[name]) for counts in columns.values()) + " |")
    lines += [""] + [f"- {line}" for line in summary_lines(summary, unreadable=False)]
    lines.append(f"- validation: {result.validation}")
    if summary.unreadable:
        lines.append(f"- unreadable files, left out ({len(summary.unreadable)}):")
        lines += [f"  - `{path}`: {why}" for path, why in summary.unreadable[:20]]
    if (run_dir / "skipped_files.txt").is_file():
        lines.append("- every file left out while decoding: `skipped_files.txt`")
    if splits:
        sizes = ", ".join(f"{role} {info['images']}" for role, info in splits.items())
        lines.append(f"- images per split as trained: {sizes}")
    decode = "draft: JPEGs decoded at reduced scale, EXIF orientation applied"
    lines.append(f"- decoding: {result.decode_s:.1f} s ({decode}), not counted in the budget")
    lines.append("")

    lines += [
        "## Choices",
        "",
        "| choice | value | why |",
        "|---|---|---|",
        f"| image size | {geometry.image_size} px | {geometry.size_reason} |",
        f"| patch size | {geometry.patch_size} px | {geometry.patch_reason} |",
        f"| channels | {geometry.in_chans} | {geometry.channels_reason} |",
        f"| recipe | `{result.recipe.text}` | rule `{result.recipe.rule}`: {result.recipe.reason} |",
        f"| epochs | {result.epochs} planned | {result.epochs_reason} |",
        f"| validation | {result.validation} | chooses the best checkpoint, which is exported |",
        f"| test | {'test/' if has_test else 'none'} | {'reported once, chooses nothing' if has_test else 'none'} |",
        f"| augmentation | random crop (padding {geometry.patch_size} px = one patch) + flip | the recipe's, shifted "
        "by up to one patch at every size as at 32 px / patch 4 |",
        "",
        f"The rules are `choose_geometry`, `choose_recipe` and `plan_epochs` in `smallvit/fit.py`; the exact run is "
        f"`config.yaml`, the overrides `{' '.join(result.overrides)}`.",
        "",
    ]

    budget = f" of a {result.budget_s:.0f} s budget" if result.budget_s else ""
    lines += [
        "## Training",
        "",
        f"- {epochs_text(run)}: {run.get('training_s') or 0:.0f} s of training (steps, validation, checkpoints), "
        f"{run.get('images_per_s') or 0:.0f} training images/s on {run.get('device')} ({run.get('precision')})",
        f"- after decoding: {result.after_decoding_s:.0f} s{budget} (measuring {result.measure_s:.0f} s, training "
        f"{result.train_s:.0f} s, export and report {result.report_s:.0f} s)"
        + (f"; planned {result.planned_s:.0f} s" if result.planned_s else "")
        + (
            f"; epochs ran at {result.slowdown:.2f}x the measured time (other work on the machine)"
            if result.slowdown and result.slowdown > 1.1
            else ""
        ),
        *(
            [
                f"- the time limit stopped training after {run.get('epochs_run'):.3g} of {result.epochs} epochs; the "
                f"learning-rate schedule was planned for {result.epochs} epochs, so it ended above its minimum"
            ]
            if result.stopped_on_time_limit
            else []
        ),
        "",
        "![loss and accuracy curves](curves.png)",
        "",
        "## Results",
        "",
        "| split | final weights | best checkpoint |",
        "|---|---|---|",
        f"| validation | {_percent(final.get(accuracy_key))} | {_percent(best.get('value'))} |",
    ]
    if has_test:
        lines.append(f"| test | {_percent(final.get(test_key))} | {_percent((best.get('test') or {}).get(test_key))} |")
    lines.append("")
    if analysis.get("per_class"):
        confusion = analysis.get("confusion") or []
        lines += [
            f"Per class, {'validation' if analysis.get('split') == 'val' else analysis.get('split')} split, "
            f"{analysis.get('weights')}:",
            "",
            "| class | images | accuracy |",
            "|---|---|---|",
        ]
        for i, (name, value) in enumerate(analysis["per_class"].items()):
            count = sum(confusion[i]) if i < len(confusion) else 0
            lines.append(f"| {name} | {count} | {_percent(value)} |")
        lines.append("")
    captions = {
        "confusion matrix": "Confusion matrix (rows: true class, columns: predicted)",
        "worst-classified images": "Worst-classified validation images, with their true and predicted classes",
        "position predictions": "Predicted vs true grid position of every patch (the abs_position objective)",
        "position embedding similarity": "Cosine similarity of the learned position embeddings",
        "mean attention distance": "Mean attention distance per block",
    }
    for name, file_name in (analysis.get("pictures") or {}).items():
        lines += [f"### {captions.get(name, name)}", "", f"![{name}]({file_name})", ""]

    export = result.export_dir.name if result.export_dir else "export"
    lines += [
        "## Use the model",
        "",
        "```bash",
        f"smallvit predict {run_dir} IMAGE_OR_FOLDER... --top-k 5 --csv predictions.csv",
        f"smallvit predict {run_dir / export} IMAGE_OR_FOLDER...   # the exported model, same preprocessing",
        "```",
        "",
        f"`{export}/` holds `model.safetensors` and `config.json` for timm "
        '(`smallvit.models.create_timm_model("' + str(run_dir / export) + '")`); the class names are in '
        "`config.json` under `classes`.",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
