"""``smallvit predict``: images of any size and mode through the run's own evaluation preprocessing, class names from
training, unreadable files reported without stopping the rest, and the CSV it writes."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.data.formats import read_imagefolder
from smallvit.engine.pictures import predict_split
from smallvit.errors import SmallViTError
from smallvit.models import build_backbone, export_timm
from smallvit.predict import csv_header, find_images, load_predictor, predict_files, write_csv
from smallvit.runs import load_run
from test_fit import CLASSES, make_image_folder

pytestmark = pytest.mark.usefixtures("isolated_data")


def untrained_export(folder, in_chans=3, classes=("cat", "dog", "owl", "yak")):
    """An export folder as ``smallvit export`` writes it, of a random vit_lite: no training needed."""
    backbone = build_backbone("vit_lite", img_size=32, patch_size=4, in_chans=in_chans, depth=1)
    head = {"head.weight": torch.randn(len(classes), 192), "head.bias": torch.zeros(len(classes))}
    export_timm(backbone, folder, head=head, mean=(0.5,) * 3, std=(0.25,) * 3, extra={"classes": list(classes)})
    return folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run folder on the generated image folder: one epoch of a one-block relvit-joint."""
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMALLVIT_CACHE", str(root / "cache"))
        folder = make_image_folder(root / "images", broken=False)
        args = ["train", "relvit-joint", "data.dataset=imagefolder", f"data.root={folder}", "data.image_size=48"]
        args += ["data.test_split=none", "model.patch_size=6", "model.overrides.depth=1", "epochs=1"]
        result = CliRunner().invoke(app, [*args, "--runs-dir", str(root / "runs"), "--name", "run", "--quiet"])
        assert result.exit_code == 0, result.output
        yield root / "runs" / "run", folder, root / "cache"


def test_find_images_takes_files_as_given_and_image_files_under_folders(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=2)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    extra = tmp_path / "image.unknown"
    extra.write_bytes(b"??")
    found = find_images([folder, extra])
    assert len(found) == 8 and found[-1] == extra  # 6 images and broken.jpg (by suffix), then the file as given
    assert not any(path.suffix == ".txt" for path in found)
    with pytest.raises(SmallViTError, match="does not exist"):
        find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SmallViTError, match="no image files"):
        find_images([tmp_path / "empty"])


def test_every_size_and_mode_is_classified_and_an_unreadable_file_does_not_stop_the_rest(tmp_path):
    predictor = load_predictor(untrained_export(tmp_path / "export"))
    assert predictor.classes == ["cat", "dog", "owl", "yak"] and predictor.image_size == 32
    images = tmp_path / "in"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (300, 500, 3), np.uint8)
    Image.fromarray(rgb).save(images / "a_big.jpg")
    Image.fromarray(rgb[:20, :9]).convert("L").save(images / "b_small_gray.png")
    Image.fromarray(rgb[:64, :64]).convert("RGBA").save(images / "c_rgba.png")
    Image.fromarray(rgb[:40, :70]).convert("P").save(images / "d_palette.gif")
    (images / "e_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    seen = []
    result = predict_files(predictor, find_images([images]), top_k=3, on_error=lambda p, why: seen.append(p))
    assert [p.path.rsplit("/", 1)[-1] for p in result.predictions] == [
        "a_big.jpg",
        "b_small_gray.png",
        "c_rgba.png",
        "d_palette.gif",
    ]
    assert list(result.errors) == seen == [str(images / "e_broken.jpg")]
    for prediction in result.predictions:
        assert len(prediction.classes) == 3 and set(prediction.classes) <= set(predictor.classes)
        assert prediction.probabilities == sorted(prediction.probabilities, reverse=True)
        assert 0 < sum(prediction.probabilities) <= 1 + 1e-6


def test_a_grayscale_model_takes_colour_images(tmp_path):
    predictor = load_predictor(untrained_export(tmp_path / "export", in_chans=1))
    assert predictor.in_chans == 1
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "colour.png")
    (prediction,) = predict_files(predictor, [tmp_path / "colour.png"], top_k=1).predictions
    assert prediction.classes[0] in predictor.classes


def test_the_csv_has_the_path_then_classes_and_probabilities_most_probable_first(tmp_path):
    predictor = load_predictor(untrained_export(tmp_path / "export", classes=("a", "b")))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    predictions = predict_files(predictor, [tmp_path / "x.png"], top_k=5).predictions
    assert len(predictions[0].classes) == 2  # top-k is at most the number of classes
    rows = list(csv.reader(write_csv(predictions, tmp_path / "p.csv", top_k=3).open()))
    assert (
        rows[0]
        == csv_header(3)
        == [
            "path",
            "top1_class",
            "top1_probability",
            "top2_class",
            "top2_probability",
            "top3_class",
            "top3_probability",
        ]
    )
    path, first, p1, second, p2, third, p3 = rows[1]
    assert path == str(tmp_path / "x.png") and {first, second} == {"a", "b"} and (third, p3) == ("", "")
    assert float(p1) >= float(p2) and float(p1) + float(p2) == pytest.approx(1, abs=1e-5)


def test_predict_preprocesses_as_the_runs_evaluation(trained_run, monkeypatch):
    """The probabilities predict gives the validation files are those the engine computed for the same images."""
    run, folder, cache = trained_run
    monkeypatch.setenv("SMALLVIT_CACHE", str(cache))
    experiment = load_run(run)
    engine = predict_split(experiment, experiment.model, experiment.val)
    files = read_imagefolder(folder, "val").images
    result = predict_files(load_predictor(run), files, top_k=3)
    ours = torch.tensor([[p.probabilities[p.classes.index(c)] for c in CLASSES] for p in result.predictions])
    torch.testing.assert_close(ours, engine, rtol=1e-4, atol=1e-5)


def test_predict_on_a_run_and_its_export_agree_and_bad_input_is_one_line(trained_run, tmp_path):
    run, folder, _ = trained_run
    result = CliRunner().invoke(app, ["export", str(run), "--output", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    from_run = predict_files(load_predictor(run), find_images([folder]), top_k=2).predictions
    from_export = predict_files(load_predictor(tmp_path / "export"), find_images([folder]), top_k=2).predictions
    assert [p.classes for p in from_run] == [p.classes for p in from_export]
    np.testing.assert_allclose([p.probabilities for p in from_run], [p.probabilities for p in from_export], atol=1e-5)
    with pytest.raises(SmallViTError, match="neither a run folder"):
        load_predictor(tmp_path)
    with pytest.raises(SmallViTError, match="--top-k 0"):
        predict_files(load_predictor(run), [folder / "circle" / "00.png"], top_k=0)
