"""What a run folder records about its data: the class list and per-split counts, and the files it skipped."""

import json

import numpy as np
import pytest
from PIL import Image

from smallvit.config import load_recipe
from smallvit.engine.trainer import train
from smallvit.errors import DataError

pytestmark = pytest.mark.usefixtures("isolated_data")


def _folder(root, counts: dict[str, int], corrupt: str | None = None):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"not an image")
    return root


def _stage(root, *extra):
    overrides = ["data.dataset=imagefolder", f"data.root={root}", "data.image_size=16", "model.patch_size=4"]
    overrides += ["epochs=1", "model.overrides.depth=1", "train.batch_size=8", "precision=fp32", *extra]
    return load_recipe("quickstart", overrides).stages[0]


def test_skipped_files_are_listed_and_the_class_counts_recorded(tmp_path):
    root = _folder(tmp_path / "imgs", {"ant": 10, "bee": 20}, corrupt="bee/broken.png")
    with pytest.raises(DataError, match="broken.png"):
        train(_stage(root), tmp_path / "strict", quiet=True)
    run = tmp_path / "run"
    train(_stage(root, "data.on_bad_file=skip"), run, quiet=True)
    assert (run / "skipped_files.txt").read_text().splitlines() == [str(root / "bee" / "broken.png")]
    data = json.loads((run / "data.json").read_text())
    assert data["classes"] == ["ant", "bee"]
    # a flat folder holds out 10 % of each class as val (1 ant, 2 bees), in the reader
    assert data["splits"]["train"]["per_class"] == [9, 18] and data["splits"]["val"]["per_class"] == [1, 2]
    assert "test" not in data["splits"]
