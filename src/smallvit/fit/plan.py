"""How long ``smallvit fit`` trains: the budget split into fit's own time and the training loop's, and the plan
that refuses to train too little.

With ``--budget B``, fit's own time is budgeted part by part from the measured :class:`~smallvit.fit.speed.Speed`
(:func:`fit_parts`: measuring, set-ups, final evaluations, pictures, the tail of the last step) and the rest of B
goes to the training loop as ``train.time_budget_s``: the engine's learning rate follows the elapsed share of that
time (warm-up, then cosine to its minimum when the time is spent) and stops there, so the whole budget is used
whatever the machine's speed; ``train.epochs`` only caps the run. A plan of fewer than :data:`MIN_EPOCHS` epochs or
:data:`MIN_STEPS` optimizer steps is refused with one line naming a budget that would be enough (``--force``
trains anyway). Decoding the images happens once, before B starts, and is timed apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from smallvit.errors import ConfigError
from smallvit.fit.speed import Speed

MIN_EPOCHS, MIN_STEPS = 10, 200  # fewer than either: too little training to learn from
EPOCHS_CAP = 2  # train.epochs caps a budgeted run at this many times the epochs measured to fit its time
MARGIN = 1.25  # a budget named as enough allows for steps this much slower than measured
EVALUATIONS = 20  # validation passes aimed at over a run: every epoch up to 20 epochs, then every few


@dataclass(frozen=True)
class EpochPlan:
    """The training fit plans: ``train.epochs``, the evaluations, and (with a budget) the training loop's seconds."""

    epochs: int  # train.epochs (with a budget: a cap the clock ends the run before)
    eval_every: int
    steps_per_epoch: int
    reason: str
    rule: str
    train_s: float | None = None  # the training loop's share of the budget; None: --epochs
    epoch_s: float | None = None  # one epoch as measured: steps, checkpoint, its share of validation
    fit_parts: dict[str, float] = field(default_factory=dict)  # fit's own seconds after decoding, by part

    @property
    def expected_epochs(self) -> float:
        """The epochs expected to train: with a budget, those it holds at the measured speed; else ``train.epochs``."""
        return self.train_s / self.epoch_s if self.train_s is not None and self.epoch_s else float(self.epochs)

    @property
    def steps(self) -> int:
        return math.floor(self.expected_epochs * self.steps_per_epoch)

    @property
    def fit_s(self) -> float:
        return sum(self.fit_parts.values())

    @property
    def planned_s(self) -> float | None:
        """Everything after decoding, as planned (None: ``--epochs``, nothing measured)."""
        return None if self.train_s is None else self.fit_s + self.train_s

    @property
    def overrides(self) -> list[str]:
        """What the plan sets in the run's config."""
        out = [f"train.epochs={self.epochs}", f"train.eval_every={self.eval_every}"]
        if self.train_s is not None:
            out.append(f"train.time_budget_s={self.train_s:.2f}")
        return out


def fit_parts(speed: Speed, measuring_s: float, test_passes: int = 0) -> dict[str, float]:
    """fit's own seconds after decoding, by part: everything in the budget outside the training loop.

    test_passes: evaluations of the exported weights on the test split after the export, each with its set-up (the
        model card's accuracy per class, which the report's balanced accuracy reuses). The trainer's own test of the
        final and best weights takes one pass each, balanced accuracy included.
    """
    parts = {
        "measuring": measuring_s,
        "set-ups (training, export)": 2 * speed.setup_s,
        "final validation": speed.eval_s,
        "test passes (final and best weights)": 2 * speed.test_s,
        "pictures": speed.pictures_s,
        "the step and checkpoint that end at the budget": speed.step_s + speed.checkpoint_s,
    }
    if test_passes:
        parts["test accuracy per class (model card, report)"] = test_passes * (speed.setup_s + speed.test_s)
    return parts


def _epoch_seconds(speed: Speed, eval_every: int) -> float:
    return speed.steps_per_epoch * speed.step_s + speed.checkpoint_s + speed.eval_s / eval_every


def _eval_every(epochs: float) -> int:
    return max(1, round(epochs / EVALUATIONS))


def plan_epochs(budget_s: float, speed: Speed, spent_s: float = 0.0, test_passes: int = 0) -> EpochPlan:
    """The training that ``budget_s`` holds at ``speed``, after fit's own :func:`fit_parts` (``spent_s``: the
    measuring already done; ``test_passes``: see there).

    The training loop gets the rest of the budget as ``train.time_budget_s``; its epochs are counted at the measured
    epoch time (steps + checkpoint + a validation pass every ``eval_every`` epochs, about 20 evaluations in all).
    ``train.epochs`` caps the run at twice the epochs expected, so that the clock ends it even on a machine faster
    than measured.
    """
    parts = fit_parts(speed, spent_s, test_passes)
    train_s = max(math.floor((budget_s - sum(parts.values())) * 100) / 100, 0.01)  # rounded down: within the budget
    eval_every = _eval_every(train_s / _epoch_seconds(speed, 1))
    epoch_s = _epoch_seconds(speed, eval_every)
    expected = train_s / epoch_s
    reason = (
        f"{train_s:.0f} s of the {budget_s:.0f} s budget train about {expected:.1f} epochs, "
        f"{math.floor(expected * speed.steps_per_epoch)} optimizer steps ({speed.step_s:.3g} s a step, the mean of "
        f"{speed.timed_steps} after a warm-up one, x {speed.steps_per_epoch} + {speed.checkpoint_s:.2f} s checkpoint "
        f"+ {speed.eval_s:.2f} s validation every {eval_every} epoch(s) = {epoch_s:.1f} s an epoch); "
        f"{sum(parts.values()):.0f} s are fit's own (measuring, set-ups, final evaluations, pictures); the learning "
        "rate follows the clock to its minimum when the time is spent (train.time_budget_s)"
    )
    epochs = max(math.ceil(EPOCHS_CAP * expected), 1)
    return EpochPlan(epochs, eval_every, speed.steps_per_epoch, reason, "fill-budget", train_s, epoch_s, parts)


def given_epochs(epochs: int, steps_per_epoch: int) -> EpochPlan:
    """``--epochs N``: N epochs, evaluated about 20 times."""
    reason = f"--epochs {epochs}: {epochs * steps_per_epoch} optimizer steps ({steps_per_epoch} an epoch)"
    return EpochPlan(epochs, _eval_every(epochs), steps_per_epoch, reason, "given-epochs")


def too_little(plan: EpochPlan, budget_s: float | None = None, speed: Speed | None = None) -> str | None:
    """One line refusing a plan of fewer than :data:`MIN_EPOCHS` epochs or :data:`MIN_STEPS` optimizer steps, naming
    what would be enough: with ``budget_s`` and its ``speed``, the budget that holds enough at that speed (with
    :data:`MARGIN` for a machine that slows down); else the epochs. None when the plan is enough."""
    if plan.expected_epochs >= MIN_EPOCHS and plan.steps >= MIN_STEPS:
        return None
    enough = max(MIN_EPOCHS, math.ceil(MIN_STEPS / max(plan.steps_per_epoch, 1)))
    wanted = f"too little to learn from (at least {MIN_EPOCHS} epochs and {MIN_STEPS} steps)"
    if budget_s is None or speed is None:
        return (
            f"--epochs {plan.epochs} is {plan.steps} optimizer steps ({plan.steps_per_epoch} an epoch): {wanted}; "
            f"give --epochs {enough} or more, or --force to train anyway"
        )
    needed = plan.fit_s + MARGIN * enough * _epoch_seconds(speed, _eval_every(enough))
    return (
        f"--budget {duration_text(budget_s)} trains about {plan.expected_epochs:.1f} epochs, {plan.steps} optimizer "
        f"steps at the measured speed ({plan.epoch_s:.1f} s an epoch after {plan.fit_s:.0f} s of fit's own): "
        f"{wanted}; give --budget {duration_text(needed)} or more, or --force to train anyway"
    )


def duration_text(seconds: float) -> str:
    """``seconds`` rounded up to a duration :func:`parse_duration` reads: ``45s``, ``12m``, ``1h30m``."""
    if seconds <= 120:
        return f"{math.ceil(seconds)}s"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


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
