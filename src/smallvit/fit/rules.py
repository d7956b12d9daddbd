"""What ``smallvit fit`` chooses from the folder: the recipe, the image geometry and the batch.

The rules are data: :data:`RECIPE_RULES` is a table of rules, each with an id, the recipe it names, the kind of
folder its results were measured on and the results rows it rests on (:class:`Evidence`, cited by study and row name;
the figures are in the results pages, ``docs/results.md``, not here). The first rule whose kind holds the folder fires;
a folder that no rule's kind holds gets :data:`FALLBACK_RULE`, the crop + flip baseline ``quickstart``, with a reason
that says nothing was measured for this kind of folder and which of its properties lie outside.

The kind of a folder: its number of classes, its training images per class and its trained side, the median shorter
side of its images capped at the rule's largest image size (fit resizes larger images down to it, so that is what the
model sees: a folder of 500 px photos and one of 144 px photos both train at 112 px). A rule's :class:`Kind` holds the
range of each property its results were measured on; a folder counts as that kind when each property lies within a
factor of two (:data:`KIND_FACTOR`) of the range, from half the lowest value measured to twice the highest.
``small-data`` was measured on 10 classes of 204 training images, trained at 32–112 px, so it holds 5–20 classes,
102–408 images per class and 16–224 px; ``many-classes`` on 101 classes of 20 training photos trained at 112 px, so it
holds 50.5–202 classes, 10–40 images per class and 56–224 px.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from smallvit.config import available_recipes
from smallvit.errors import ConfigError, DataError

RESULTS_PAGE = "docs/results.md"
SMALL_DATA_RECIPE = "small-data"  # the shipped recipe fit trains on small data (recipes/small-data.yaml)
MANY_CLASSES_RECIPE = "small-data-stem"  # ... and on many classes of few images (recipes/small-data-stem.yaml)
BASELINE_RECIPE = "quickstart"  # the crop + flip baseline (recipes/quickstart.yaml)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
TOKEN_GRID = 8  # tokens per side aimed at: 8 x 8 = 64, the CIFAR results' grid (32 px / patch 4; imagenette: 7 x 7)
DECODED_MEMORY_BYTES = 4 * 2**30  # the decoded training images must fit in this much memory
CONV_TOKENIZER_MAX_SIZE = 112  # the conv tokenizer's largest size measured: imagenette-2040's protocol (patch 16)
CONV_STEM_MAX_SIZE = 112  # the conv stem's largest size measured: the equal-time protocols of caltech101-2020 et al.
MIN_BATCH = 16
BATCH_SHARE = 10  # a batch holds at most a tenth of the training images: at least 10 optimizer steps an epoch
KIND_FACTOR = 2  # a folder is of a rule's kind when each property lies within this factor of the measured range


@dataclass(frozen=True)
class Evidence:
    """A result a rule rests on: a row of a results study (or a benchmark record), and what it showed, in words."""

    study: str  # "results: imagenette-40ep", "benchmarks: conv_tokenizer_layout"
    row: str
    shows: str

    @property
    def citation(self) -> str:
        return f"{self.study}, {'rows' if ', ' in self.row else 'row'} {self.row}"


def _number(value: float) -> str:
    """A count or size as a reader checks it: whole numbers without decimals, others to one decimal."""
    return f"{value:.0f}" if value == round(value) else f"{value:.1f}"


def _span(low: float, high: float) -> str:
    return _number(low) if low == high else f"{_number(low)}–{_number(high)}"


@dataclass(frozen=True)
class Kind:
    """The kind of folder a rule's results were measured on: the range (lowest, highest) of its number of classes,
    training images per class and trained side in px (the median shorter side, at most the rule's image size). A
    folder is of this kind when each property lies within a factor of :data:`KIND_FACTOR` of its range (see the module
    docstring)."""

    classes: tuple[float, float]
    per_class: tuple[float, float]
    trained_side: tuple[float, float]

    def _properties(self) -> tuple[tuple[str, tuple[float, float]], ...]:
        return (
            ("classes", self.classes),
            ("training images per class", self.per_class),
            ("px trained side", self.trained_side),
        )

    @property
    def measured(self) -> str:
        """``"10 classes, 204 training images per class, 32–112 px trained side"``."""
        return ", ".join(f"{_span(*span)} {what}" for what, span in self._properties())

    @property
    def bounds(self) -> str:
        """The ranges a folder of this kind lies in: ``"5–20 classes, 102–408 training images per class, ..."``."""
        return ", ".join(
            f"{_span(low / KIND_FACTOR, high * KIND_FACTOR)} {what}" for what, (low, high) in self._properties()
        )

    def outside(self, num_classes: int, per_class: float, trained_side: float | None) -> list[str]:
        """The folder's properties outside this kind, each as ``"101 classes (measured: 10)"`` (a None side is not
        checked); empty when the folder is of this kind."""
        notes = []
        for (what, (low, high)), value in zip(self._properties(), (num_classes, per_class, trained_side)):
            if value is not None and not low / KIND_FACTOR <= value <= high * KIND_FACTOR:
                notes.append(f"{_number(value)} {what} (measured: {_span(low, high)})")
        return notes


# ---------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class RecipeRule:
    """One row of the recipe table: it fires for a folder of its ``kind`` (None: any folder, the fallback)."""

    id: str
    recipe: str
    kind: Kind | None
    max_image_size: int
    why: str
    evidence: tuple[Evidence, ...] = ()


_IMAGENETTE, _CIFAR = "results: imagenette-40ep", "results: cifar10-60ep"
RECIPE_RULES: tuple[RecipeRule, ...] = (
    RecipeRule(
        "small-data",
        SMALL_DATA_RECIPE,
        # the CIFAR-10 sample and imagenette-2040: 10 classes of 204 training images, 32 px files and 224 px ones
        # trained at 112 px
        kind=Kind(classes=(10, 10), per_class=(204, 204), trained_side=(32, CONV_TOKENIZER_MAX_SIZE)),
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
        "many-classes",
        MANY_CLASSES_RECIPE,
        # caltech101-2020: 101 classes of 20 training photos, 144 px files trained at 112 px
        kind=Kind(classes=(101, 101), per_class=(20, 20), trained_side=(CONV_STEM_MAX_SIZE, CONV_STEM_MAX_SIZE)),
        max_image_size=CONV_STEM_MAX_SIZE,
        why="relvit-joint on the conv stem without a position embedding, the equal-time row with the best validation "
        "gain over the baseline on the many-class development dataset (3 seeds of it, of the baseline and of the conv "
        f"tokenizer's row; the other rows seed 0 so far), on images of at most {CONV_STEM_MAX_SIZE} px",
        evidence=(
            Evidence(
                "results: equal-time-caltech101",
                "small-data-stem",
                "the best validation gain of the equal-time rows, and beat the crop + flip baseline (row weak) on test "
                "in the same training time, by more than the conv tokenizer's row small-data; 3 seeds (the other rows: "
                "seed 0 so far)",
            ),
            Evidence(
                "results: equal-time-overview",
                "leave-one-out: caltech101-2020",
                "the row chosen on the other development datasets' validation splits beat the baseline on this "
                "dataset's test split by at least 3 points (the other datasets' rows: seed 0 so far)",
            ),
        ),
    ),
)
FALLBACK_RULE = RecipeRule(
    "not-measured",
    BASELINE_RECIPE,
    kind=None,
    max_image_size=MAX_IMAGE_SIZE,
    why=f"the crop + flip baseline, on images of at most {MAX_IMAGE_SIZE} px: a gain measured on one kind of folder "
    "is not assumed on another",
)


@dataclass(frozen=True)
class RecipeChoice:
    """The recipe :func:`choose_recipe` picked, the overrides it adds, the largest image size to train it at, the
    id of the rule that fired, why, the results it rests on, and (for the fallback) what lay outside each rule's
    kind of folder."""

    recipe: str
    rule: str
    reason: str
    overrides: tuple[str, ...] = ()
    max_image_size: int = MAX_IMAGE_SIZE
    evidence: tuple[Evidence, ...] = ()
    unmeasured: tuple[str, ...] = ()

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
    num_train: int,
    num_classes: int,
    median_side: float | None = None,
    rules: Sequence[RecipeRule] = RECIPE_RULES,
    fallback: RecipeRule = FALLBACK_RULE,
) -> RecipeChoice:
    """The first rule of ``rules`` whose kind holds this folder (``median_side`` None: not checked), else ``fallback``.

    A rule sees the folder's trained side: ``median_side`` capped at the rule's ``max_image_size``. The reason names
    the folder, the kind the rule was measured on, the rule's why and its first result; the fallback's says that
    nothing was measured for this kind of folder and which properties lie outside each rule's kind (also in
    :attr:`RecipeChoice.unmeasured`), and that fit therefore trains the baseline.
    """
    per_class = num_train / max(num_classes, 1)
    unmeasured = []
    for rule in rules:
        trained_side = None if median_side is None else min(median_side, rule.max_image_size)
        outside = rule.kind.outside(num_classes, per_class, trained_side) if rule.kind else []
        if not outside:
            side = "" if median_side is None else f", median shorter side {_number(median_side)} px"
            if trained_side is not None and trained_side < median_side:
                side += f" (trained at {_number(trained_side)} px)"
            kind = (
                f"the kind of folder rule {rule.id} was measured on ({rule.kind.measured}; each within a factor of "
                f"{KIND_FACTOR})"
                if rule.kind
                else f"any folder, rule {rule.id}"
            )
            reason = (
                f"{num_classes} classes, {_number(per_class)} training images per class{side}: {kind}; {rule.why}; "
                f"{cite(rule.evidence)}"
            )
            return RecipeChoice(rule.recipe, rule.id, reason, (), rule.max_image_size, rule.evidence)
        unmeasured.append(
            f"{', '.join(outside)}, more than a factor of {KIND_FACTOR} from what rule {rule.id} was measured on"
        )
    reason = (
        f"nothing was measured for this kind of folder: {'; '.join(unmeasured)}; fit therefore trains the baseline "
        f"{fallback.recipe} ({fallback.why}); {cite(fallback.evidence)}"
    )
    return RecipeChoice(
        fallback.recipe, fallback.id, reason, (), fallback.max_image_size, fallback.evidence, tuple(unmeasured)
    )


def given_recipe(
    name: str, rules: Sequence[RecipeRule] = RECIPE_RULES, fallback: RecipeRule = FALLBACK_RULE
) -> RecipeChoice:
    """The shipped recipe ``name`` given with ``--recipe``, over the rules (rule ``given``), at the largest image
    size of the rule that names the same recipe (else :data:`MAX_IMAGE_SIZE`); an unknown name is one ConfigError
    line listing the shipped recipes."""
    shipped = available_recipes()
    if name not in shipped:
        raise ConfigError(f"--recipe {name!r} is not a shipped recipe: choose one of {', '.join(shipped)}")
    max_size = next((rule.max_image_size for rule in (*rules, fallback) if rule.recipe == name), MAX_IMAGE_SIZE)
    return RecipeChoice(name, "given", "given with --recipe", (), max_size)


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
