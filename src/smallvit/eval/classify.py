"""Re-open a finished run: evaluate its classifier on a split, or export it for timm."""

from __future__ import annotations

from pathlib import Path

from smallvit.data import get_dataset_info
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import Experiment, build_experiment, read_run_config
from smallvit.engine.trainer import evaluate
from smallvit.errors import SmallViTError
from smallvit.models import export_timm


def split_role(split: str | None) -> str:
    """Which of a run's evaluated sets ``split`` names: ``val``, or ``test`` (default; any other dataset split is
    evaluated in the test set's place)."""
    return "val" if split == "val" else "test"


def load_run(run_dir: Path, checkpoint: str = "best", split: str | None = None) -> Experiment:
    """Rebuild a run's experiment from its ``config.yaml`` and load a checkpoint's weights into it.

    ``split``: ``val``, ``test`` (the run's own splits) or another split of its dataset, loaded as its test set.
    """
    if checkpoint not in ("best", "last"):
        raise SmallViTError(f"--checkpoint {checkpoint!r} is not valid: use best or last")
    config = read_run_config(run_dir)
    if split not in (None, "val", "test"):
        config = config.model_copy(update={"data": config.data.model_copy(update={"test_split": split})})
    path = run_dir / "checkpoints" / f"{checkpoint}.safetensors"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "checkpoints" / "last.safetensors"
    experiment = build_experiment(config, load_init=False)
    tensors, _ = load_checkpoint(path, prefix="model.")
    experiment.model.load_state_dict(tensors)
    return experiment


def evaluate_run(run_dir: Path, split: str | None = None, checkpoint: str = "best") -> dict[str, float]:
    """Every objective's evaluation metrics (top-1/top-5 for a classifier) of a run on a split (default: test)."""
    experiment = load_run(run_dir, checkpoint, split)
    return evaluate(experiment, experiment.model, split_role(split), prefix=split or "test")


def export_run(run_dir: Path, output: Path, checkpoint: str = "best") -> Path:
    """Write ``model.safetensors`` + ``config.json`` loadable by ``timm.create_model``; objective heads dropped."""
    if output.exists() and not output.is_dir():
        raise SmallViTError(f"--output {output} is a file: give a folder for model.safetensors and config.json")
    experiment = load_run(run_dir, checkpoint)
    model = experiment.model
    info = get_dataset_info(experiment.config.data.dataset)
    extra = {"classes": experiment.classes, "source_run": str(run_dir)}
    return export_timm(model.backbone, output, head=model.classifier_state(), mean=info.mean, std=info.std, extra=extra)
