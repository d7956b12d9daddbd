"""What ``smallvit fit`` chooses from the folder: the recipe, the image geometry and the batch.

The rules are data: :data:`RECIPE_RULES` is a table of rules, each with an id, the recipe it names, when it applies
and the results rows it rests on (:class:`Evidence`, cited by study and row name; the figures are in the results
pages, ``docs/results.md``, not here). :data:`MEASURED` holds the range of folders the results were measured on: a
folder outside it gets a ``not measured`` note in the reason, and the rules keep their decision there rather than
extrapolate a gain (the plain baseline above the small-data range, at most 112 px for the conv tokenizer).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from smallvit.errors import DataError

RESULTS_PAGE = "docs/results.md"
SMALL_DATA_RECIPE = "small-data"  # the shipped recipe fit trains on small data (recipes/small-data.yaml)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
TOKEN_GRID = 8  # tokens per side aimed at: 8 x 8 = 64, the CIFAR results' grid (32 px / patch 4; imagenette: 7 x 7)
DECODED_MEMORY_BYTES = 4 * 2**30  # the decoded training images must fit in this much memory
CONV_TOKENIZER_MAX_SIZE = 112  # the conv tokenizer's largest size measured: imagenette-2040's protocol (patch 16)
MIN_BATCH = 16
BATCH_SHARE = 10  # a batch holds at most a tenth of the training images: at least 10 optimizer steps an epoch


@dataclass(frozen=True)
class Evidence:
    """A result a rule rests on: a row of a results study (or a benchmark record), and what it showed, in words."""

    study: str  # "results: imagenette-40ep", "benchmarks: conv_tokenizer_layout"
    row: str
    shows: str

    @property
    def citation(self) -> str:
        return f"{self.study}, {'rows' if ', ' in self.row else 'row'} {self.row}"


@dataclass(frozen=True)
class Measured:
    """The range of one property of a folder that the results were measured on (cifar10-sample, imagenette-2040)."""

    what: str
    low: float
    high: float


MEASURED = (
    Measured("classes", 10, 10),
    Measured("training images per class", 204, 204),
    Measured("px median shorter side", 32, 224),  # the CIFAR images; the imagenette-2040 files
)


def unmeasured(num_classes: int, per_class: float, median_side: float | None) -> list[str]:
    """The properties of a folder outside :data:`MEASURED`, each as ``"100 classes (results: 10)"`` (a None
    value is not checked)."""
    notes = []
    for measured, value in zip(MEASURED, (num_classes, per_class, median_side)):
        if value is not None and not measured.low <= value <= measured.high:
            span = f"{measured.low:g}" if measured.low == measured.high else f"{measured.low:g}–{measured.high:g}"
            notes.append(f"{value:.0f} {measured.what} (results: {span})")
    return notes


# ---------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class RecipeRule:
    """One row of the recipe table: it applies up to ``max_per_class`` training images per class (inclusive)."""

    id: str
    recipe: str
    max_per_class: float
    max_image_size: int
    why: str
    evidence: tuple[Evidence, ...] = ()


_IMAGENETTE, _CIFAR = "results: imagenette-40ep", "results: cifar10-60ep"
RECIPE_RULES: tuple[RecipeRule, ...] = (
    RecipeRule(
        "small-data",
        SMALL_DATA_RECIPE,
        max_per_class=1000,
        max_image_size=CONV_TOKENIZER_MAX_SIZE,
        why="relvit-joint on the conv tokenizer without a position embedding, the best recipe of the results at equal "
        f"time, on images of at most {CONV_TOKENIZER_MAX_SIZE} px",
        evidence=(
            Evidence(
                _IMAGENETTE,
                "conv-tokenizer-relvit-joint-no-pe-equal-time",
                "beat relvit-joint on vit_lite in the same training time (3 seeds; the margin fixed before the runs)",
            ),
            Evidence(
                _CIFAR,
                "conv-tokenizer-relvit-joint-no-pe",
                "the best ViT row against the crop + flip baseline (row weak), 3 seeds; chosen on validation over the "
                "same with a position embedding (row conv-tokenizer-relvit-joint)",
            ),
            Evidence(
                _IMAGENETTE, "conv-tokenizer-relvit-joint-no-pe", "beat the baseline at 112 px / patch 16, 3 seeds"
            ),
            Evidence(
                _IMAGENETTE,
                "relvit-joint-224",
                "photos at 224 px / patch 32 on vit_lite scored below the tokenizer at 112 px in about the same time: "
                "why larger photos are stored at 112 px",
            ),
            Evidence(
                "benchmarks: conv_tokenizer_layout",
                "224:32",
                "the tokenizer's step at 224 px / patch 32 costs several vit_lite steps",
            ),
            Evidence(
                "results: cifar10-60ep-pretrain",
                "relvit-30-lpft-30, mae-30-lpft-30, idmm16-30-lpft-30",
                "pre-training then fine-tuning stayed below the baseline at these budgets, so none is chosen",
            ),
        ),
    ),
    RecipeRule(
        "more-data",
        "quickstart",
        max_per_class=math.inf,
        max_image_size=MAX_IMAGE_SIZE,
        why="the plain supervised baseline: the gains were measured with fewer images per class and are not assumed "
        "to carry over",
    ),
)


@dataclass(frozen=True)
class RecipeChoice:
    """The recipe :func:`choose_recipe` picked, the overrides it adds, the largest image size to train it at, the
    id of the rule that fired, why, and the results it rests on."""

    recipe: str
    rule: str
    reason: str
    overrides: tuple[str, ...] = ()
    max_image_size: int = MAX_IMAGE_SIZE
    evidence: tuple[Evidence, ...] = ()

    @property
    def text(self) -> str:
        """The recipe and its overrides as ``smallvit train`` takes them."""
        return " ".join([self.recipe, *self.overrides])


def cite(evidence: Sequence[Evidence]) -> str:
    """``results: <study>, row <row>`` of the first result, how many more, and the results page."""
    if not evidence:
        return f"no result yet ({RESULTS_PAGE})"
    more = f" and {len(evidence) - 1} more" if len(evidence) > 1 else ""
    return f"{evidence[0].citation}{more} ({RESULTS_PAGE})"


def choose_recipe(
    num_train: int, num_classes: int, median_side: float | None = None, rules: Sequence[RecipeRule] = RECIPE_RULES
) -> RecipeChoice:
    """The first rule of ``rules`` whose ``max_per_class`` holds this folder's training images per class.

    The reason names the rule's recipe and why, cites its first result, and says which properties of the folder
    lie outside what the results measured (:func:`unmeasured`; ``median_side`` None: not checked).
    """
    per_class = num_train / max(num_classes, 1)
    index = next(i for i, r in enumerate(rules) if per_class <= r.max_per_class)
    rule = rules[index]
    bounds = [f"more than {rules[index - 1].max_per_class:g}"] if index else []
    bounds += [f"at most {rule.max_per_class:g}"] if math.isfinite(rule.max_per_class) else []
    bound = " and ".join(bounds) or "any number"
    reason = f"{per_class:.0f} training images per class ({bound}): {rule.why}; {cite(rule.evidence)}"
    notes = unmeasured(num_classes, per_class, median_side)
    if notes:
        reason += "; not measured: " + ", ".join(notes)
    return RecipeChoice(rule.recipe, rule.id, reason, (), rule.max_image_size, rule.evidence)


# ---------------------------------------------------------------- the geometry


@dataclass(frozen=True)
class Geometry:
    """The image size the data is stored and trained at, the ViT patch size, the channels, and why each."""

    image_size: int
    patch_size: int
    in_chans: int
    size_reason: str
    patch_reason: str
    channels_reason: str
    rule: str = "median-side-grid-8"

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
    results' protocols (32 px / patch 4; imagenette-2040: 112 px / patch 16, 7 x 7), so that a step costs about the
    same at every size; a power of two because the conv tokenizer halves the resolution once per factor of 2
    (:class:`smallvit.models.ConvTokenizer`).

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
        f"the power of two nearest size / {TOKEN_GRID}: {grid}x{grid} = {grid * grid} tokens, near the grids of the "
        f"results' protocols (32 px / patch 4: 8x8; 112 px / patch 16: 7x7; {RESULTS_PAGE}); a power of two for the "
        "conv tokenizer",
        "colour images as they are, grayscale ones as 3 equal channels",
    )


# ---------------------------------------------------------------- the batch


@dataclass(frozen=True)
class BatchChoice:
    """The batch size and learning rate :func:`choose_batch` picked, the id of its rule, and why."""

    batch_size: int
    lr: float
    reason: str
    rule: str = "batch-tenth"

    @property
    def overrides(self) -> tuple[str, ...]:
        return (f"train.batch_size={self.batch_size}", f"optim.lr={self.lr:.6g}")


def choose_batch(num_train: int, recipe_batch: int, recipe_lr: float) -> BatchChoice:
    """The largest power of two that is at most a tenth of the training images, at least 16 and at most the recipe's
    batch; the learning rate scales linearly with it (``recipe_lr * batch / recipe_batch``, the recipe's own
    batch-to-lr ratio), so that a small folder still takes at least 10 optimizer steps an epoch.

    Examples (recipe batch 128): 200 images -> 16; 700 -> 64; 2040 -> 128; 100 000 -> 128; 50 -> 16.
    """
    tenth = num_train // BATCH_SHARE
    power = 2 ** int(math.log2(tenth)) if tenth >= 1 else 1
    batch = min(max(power, MIN_BATCH), recipe_batch)
    lr = recipe_lr * batch / recipe_batch
    steps = max(num_train // batch, 1)
    reason = (
        f"the largest power of two at most a tenth of {num_train} training images, at least {MIN_BATCH}, at most the "
        f"recipe's {recipe_batch}: {steps} optimizer step{'s' if steps > 1 else ''} an epoch"
    )
    if batch != recipe_batch:
        reason += f"; lr {lr:.3g}, the recipe's {recipe_lr:g} scaled by {batch}/{recipe_batch}"
    return BatchChoice(batch, lr, reason)
