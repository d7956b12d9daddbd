"""Hostile and broken input to the data layer: crafted CIFAR pickles, archives that are not the official ones, empty
class folders, 16-bit images and undecodable files. Each test names the guarantee it proves."""

import codecs
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.data import DATASETS, formats, load_dataset, prepare_dataset
from smallvit.data.datasets import DataFile
from smallvit.data.formats import RawSplit, decode_images, decode_split
from smallvit.errors import ConfigError, DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # the official cifar-10-python.tar.gz


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLVIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SMALLVIT_CACHE", str(tmp_path / "cache"))


def one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def save_image(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


# --- CIFAR pickles: never unpickled with pickle.load ---------------------------------------------------------------


class RunsCode:
    """Unpickling this calls ``call(*args)``: what a crafted CIFAR batch would do to a plain pickle.load."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's str (SHORT_BINSTRING / BINSTRING), as the official CIFAR files hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_python2_str


def python2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2 with numpy 1 wrote CIFAR: protocol 2, Python 2 str, numpy.core globals."""
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar10(folder: Path, dump=lambda obj: pickle.dumps(obj, protocol=2), n: int = 2) -> dict:
    """A cifar-10-batches-py/ as the official files are laid out (bytes keys); returns each split's arrays."""
    rng = np.random.default_rng(0)
    batch_dir = folder / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    splits = {}
    for split, batches in [("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])]:
        data = rng.integers(0, 256, (len(batches) * n, 3072), np.uint8)
        labels = rng.integers(0, 10, len(batches) * n).tolist()
        for i, batch in enumerate(batches):
            content = {
                b"batch_label": f"{batch} of 5".encode(),
                b"labels": labels[i * n : (i + 1) * n],
                b"data": data[i * n : (i + 1) * n],
                b"filenames": [f"img_{j}.png".encode() for j in range(n)],
            }
            (batch_dir / batch).write_bytes(dump(content))
        splits[split] = (data.reshape(-1, 3, 32, 32), labels)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": n, b"num_vis": 3072}
    (batch_dir / "batches.meta").write_bytes(dump(meta))
    return splits


@pytest.mark.parametrize(
    "payload",
    [
        lambda marker: RunsCode(os.system, f"touch {marker}"),
        lambda marker: RunsCode(subprocess.call, ["touch", str(marker)]),
        lambda marker: RunsCode(exec, f"open({str(marker)!r}, 'w').close()"),
        lambda marker: RunsCode(Path.touch, marker),
    ],
    ids=["os.system", "subprocess.call", "exec", "Path.touch"],
)
def test_a_cifar_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    source = tmp_path / "source"
    write_cifar10(source)
    crafted = pickle.dumps({b"data": payload(marker), b"labels": []}, protocol=2)
    (source / "cifar-10-batches-py/data_batch_3").write_bytes(crafted)
    prepare_dataset("cifar10", source=source)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "train")
    one_line_error(excinfo, "refuses to load", "data_batch_3", "not a CIFAR batch", "re-download it")
    assert not marker.exists()
    pickle.loads(crafted)  # the payload is live: a plain pickle.load runs it
    assert marker.exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({b"data": RunsCode(codecs.encode, "x", "rot13"), b"labels": []}, "unexpected arguments"),  # admitted global
        ({b"data": np.array([[1, "a"]], dtype=object), b"labels": [0]}, "not a plain numeric dtype"),  # object array
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8 [N, 3072]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "N labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]}, "N labels"),
        ({b"labels": [0]}, "no 'data' entry"),
        ([1, 2, 3], "not a dict"),
    ],
    ids=["codecs-rot13", "object-array", "float-pixels", "too-few-labels", "float-labels", "no-data", "a-list"],
)
def test_a_malformed_cifar_batch_is_a_data_error(tmp_path, content, fragment):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DataError) as excinfo:
        formats.read_cifar10(tmp_path, "test")
    one_line_error(excinfo, "test_batch", fragment)


def test_a_truncated_cifar_batch_is_a_data_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py/test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError) as excinfo:
        formats.read_cifar10(tmp_path, "test")
    one_line_error(excinfo, "cannot read", "test_batch", "re-download it")


def test_labels_outside_the_class_list_are_a_data_error(tmp_path):
    write_cifar10(tmp_path / "source")
    content = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}  # 10 classes: ids 0..9
    (tmp_path / "source/cifar-10-batches-py/test_batch").write_bytes(pickle.dumps(content))
    prepare_dataset("cifar10", source=tmp_path / "source")
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test")
    one_line_error(excinfo, "labels run from 10 to 10", "10 classes")


@pytest.mark.parametrize(
    "dump",
    [
        lambda obj: pickle.dumps(obj, protocol=2),
        lambda obj: pickle.dumps(obj, protocol=4),
        lambda obj: pickle.dumps(obj, protocol=5),
        python2_pickle,
    ],
    ids=["protocol-2", "protocol-4", "protocol-5", "python-2"],
)
def test_legit_cifar_batches_read_exactly(tmp_path, dump):
    splits = write_cifar10(tmp_path / "source", dump)
    prepare_dataset("cifar10", source=tmp_path / "source")
    for split, (images, labels) in splits.items():
        dataset = load_dataset("cifar10", split)
        assert torch.equal(dataset.images, torch.from_numpy(images)) and dataset.labels.tolist() == labels
        assert dataset.classes == CLASSES and dataset.skipped == []


def test_the_python_2_pickle_is_faithful_to_the_official_files():
    raw = python2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]})
    assert raw.startswith(b"\x80\x02}") and b"U\x04data" in raw  # protocol 2, a dict, Python 2 str keys
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw


def test_a_big_endian_or_fortran_array_and_numpy_scalar_labels_are_read_right(tmp_path):
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    content = {"data": np.asfortranarray(images), "labels": [np.int64(3), np.int64(7)]}
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps(content, protocol=4))
    raw = formats.read_cifar10(tmp_path, "test")
    assert np.array_equal(raw.images, images.reshape(-1, 3, 32, 32)) and raw.labels.tolist() == [3, 7]
    content = {"data": images, "labels": np.array([3, 7], dtype=">i8")}  # labels as a big-endian array
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps(content, protocol=2))
    assert formats.read_cifar10(tmp_path, "test").labels.tolist() == [3, 7]


# --- Local archives are checked against the published checksum -----------------------------------------------------


def fake_cifar10_archive(tmp_path: Path) -> Path:
    """A valid cifar-10-python.tar.gz layout that is not the official file."""
    write_cifar10(tmp_path / "tree")
    archive = tmp_path / "upload/cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree/cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_a_local_archive_with_the_official_name_but_other_bytes_is_refused(tmp_path):
    archive = fake_cifar10_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    for source in (archive, archive.parent):  # the archive itself, or a folder holding it
        with pytest.raises(DataError) as excinfo:
            prepare_dataset("cifar10", source=source)
        one_line_error(excinfo, f"has md5 {md5}, expected {CIFAR10_MD5}", "not the official file", "--no-verify")
    assert not (tmp_path / "data/cifar10").exists()
    prepare_dataset("cifar10", source=archive, verify=False)
    assert len(load_dataset("cifar10", "test")) == 2


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_a_local_archive_with_the_right_checksum_prepares(tmp_path, monkeypatch, algorithm):
    archive = fake_cifar10_archive(tmp_path)
    digest = hashlib.new(algorithm, archive.read_bytes()).hexdigest()
    info = DATASETS["cifar10"]
    monkeypatch.setitem(DATASETS, "cifar10", replace(info, files=(DataFile(archive.name, f"{algorithm}:{digest}"),)))
    prepare_dataset("cifar10", source=archive)
    assert len(load_dataset("cifar10", "train")) == 10


def test_extracted_folders_and_system_copies_are_not_checked(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "source")  # cifar-10-batches-py/ itself: nothing to compare with
    prepare_dataset("cifar10", source=tmp_path / "source")
    system = tmp_path / "usr/share/datasets/fashion-mnist"  # a distribution's (recompressed) copy
    system.mkdir(parents=True)
    for prefix, n in [("train", 2), ("t10k", 1)]:
        (system / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28) + bytes(n * 784))
        )
        (system / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(n))
        )
    monkeypatch.setitem(DATASETS, "fashion-mnist", replace(DATASETS["fashion-mnist"], system_source=system))
    prepare_dataset("fashion-mnist")
    assert len(load_dataset("fashion-mnist", "train")) == 2


def test_the_cli_refuses_a_repacked_archive_in_one_line_and_no_verify_lets_it_through(tmp_path):
    archive = fake_cifar10_archive(tmp_path)
    env = {"SMALLVIT_DATA": str(tmp_path / "data"), "SMALLVIT_CACHE": str(tmp_path / "cache"), "PATH": ""}
    args = [sys.executable, "-m", "smallvit.cli", "prepare", "cifar10", "--source", str(archive)]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"expected {CIFAR10_MD5}" in result.stderr and "--no-verify" in result.stderr
    result = CliRunner().invoke(app, ["prepare", "cifar10", "--source", str(archive), "--no-verify"])
    assert result.exit_code == 0, result.output


# --- Image folders: no silent label shift ---------------------------------------------------------------------------


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    for c in ("a", "c"):
        save_image(tmp_path / f"split/train/{c}/0.png", pixels(8, 8))
        save_image(tmp_path / f"flat/{c}/0.png", pixels(8, 8))
    (tmp_path / "split/train/b").mkdir()
    (tmp_path / "flat/b").mkdir()
    (tmp_path / "flat/b/notes.txt").write_text("not an image")
    for root, where in [(tmp_path / "split", tmp_path / "split/train"), (tmp_path / "flat", tmp_path / "flat")]:
        with pytest.raises(DataError) as excinfo:
            load_dataset("imagefolder", "train", root=root, image_size=8)
        one_line_error(excinfo, f"class folder 'b' in {where} holds no images", "remove it or add images")


def test_an_empty_class_folder_in_another_split_is_an_error_too(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "val"):
        save_image(root / f"{split}/a/0.png", pixels(8, 8))
    (root / "val/b").mkdir()  # would add class "b" to train's class list too
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagefolder", "train", root=root, image_size=8)
    one_line_error(excinfo, f"class folder 'b' in {root / 'val'}")


def test_a_class_missing_from_one_split_keeps_every_label(tmp_path):
    root = tmp_path / "images"
    for split, classes in [("train", "abc"), ("val", "ac")]:
        for c in classes:
            save_image(root / f"{split}/{c}/0.png", pixels(8, 8))
    train = load_dataset("imagefolder", "train", root=root, image_size=8)
    val = load_dataset("imagefolder", "val", root=root, image_size=8)
    assert train.classes == val.classes == ["a", "b", "c"]
    assert train.labels.tolist() == [0, 1, 2] and val.labels.tolist() == [0, 2]  # c is 2 in both


def test_class_folders_without_any_image_are_named(tmp_path):
    """Not "no train folder": the folder has the flat layout, only its class folders are empty."""
    for c in ("cats", "dogs"):
        (tmp_path / "flat" / c).mkdir(parents=True)
    (tmp_path / "flat/dogs/photo.heic").write_bytes(b"not a format smallvit reads")
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagefolder", "train", root=tmp_path / "flat", image_size=8)
    one_line_error(excinfo, f"class folders 'cats', 'dogs' in {tmp_path / 'flat'} hold no images", ".jpg, .jpeg")


def test_a_folder_with_one_class_is_an_error_not_a_perfect_classifier(tmp_path):
    for i in range(4):
        save_image(tmp_path / f"flat/only/{i}.png", pixels(8, 8, i))
        save_image(tmp_path / f"split/{'train' if i else 'val'}/only/{i}.png", pixels(8, 8, i))
    for root in (tmp_path / "flat", tmp_path / "split"):
        with pytest.raises(DataError) as excinfo:
            load_dataset("imagefolder", "train", root=root, image_size=8)
        one_line_error(excinfo, f"{root} has one class, 'only'", "a classifier needs at least two")


# --- 16-bit and 32-bit images ---------------------------------------------------------------------------------------


def decode_file(path: Path, in_chans: int = 1) -> torch.Tensor:
    size = Image.open(path).size[0]
    return decode_images(RawSplit([path], np.zeros(1), ["x"]), size, in_chans)[0]


def test_a_16_bit_png_is_scaled_to_8_bits_by_rounding_v_over_257(tmp_path):
    values = np.round(np.linspace(0, 65535, 256)).astype(np.uint16).reshape(16, 16)  # a gradient 0..65535
    picks = {(0, 0): 0, (0, 1): 128, (0, 2): 129, (0, 3): 386, (0, 4): 32767, (0, 5): 32896, (15, 15): 65535}
    for position, value in picks.items():
        values[position] = value
    path = save_image(tmp_path / "deep.png", values)
    assert Image.open(path).mode in ("I;16", "I")  # really a 16-bit file
    decoded = decode_file(path)
    expected = {(0, 0): 0, (0, 1): 0, (0, 2): 1, (0, 3): 2, (0, 4): 127, (0, 5): 128, (15, 15): 255}  # by hand
    assert {position: int(decoded[0][position]) for position in picks} == expected
    assert torch.equal(decoded[0], torch.from_numpy((values.astype(np.int64) + 128) // 257).to(torch.uint8))
    rgb = decode_file(path, in_chans=3)
    assert torch.equal(rgb[0], decoded[0]) and torch.equal(rgb[1], rgb[2])


def test_an_8_bit_image_stored_as_16_bits_comes_back_exactly(tmp_path):
    eight = np.arange(256, dtype=np.uint16).reshape(16, 16)
    decoded = decode_file(save_image(tmp_path / "wide.png", eight * 257))
    assert decoded[0].tolist() == eight.tolist()


def test_32_bit_integer_and_float_images_follow_the_documented_rules(tmp_path):
    in_range = np.array([[0, 257], [65535, 128 * 257]], np.int32)  # within 0..65535: as 16-bit
    assert decode_file(save_image(tmp_path / "i16.tif", in_range))[0].tolist() == [[0, 1], [255, 128]]
    wide = np.array([[-1000, 0], [1100, 3000]], np.int32)  # beyond: min..max stretched, round((v + 1000) * 255 / 4000)
    assert decode_file(save_image(tmp_path / "i32.tif", wide))[0].tolist() == [[0, 64], [134, 255]]
    unit = np.array([[0.0, 0.2], [0.6, 1.0]], np.float32)  # in [0, 1]: round(v * 255)
    assert decode_file(save_image(tmp_path / "unit.tif", unit))[0].tolist() == [[0, 51], [153, 255]]
    other = np.array([[-2.0, 0.0], [3.0, 6.0]], np.float32)  # otherwise min..max stretched: round((v + 2) * 255 / 8)
    assert decode_file(save_image(tmp_path / "f.tif", other))[0].tolist() == [[0, 64], [159, 255]]
    with pytest.raises(DataError) as excinfo:
        decode_file(save_image(tmp_path / "nan.tif", np.array([[np.nan, 1.0]], np.float32)))
    one_line_error(excinfo, "nan.tif", "NaN")


# --- Undecodable files: an error by default, or skipped and listed --------------------------------------------------


def folder_with_bad_files(root: Path) -> dict[str, Path]:
    files = {
        "a0": save_image(root / "a/0.png", pixels(8, 8, 1)),
        "a1": root / "a/1.jpg",
        "b0": save_image(root / "b/0.png", pixels(8, 8, 2)),
        "b1": root / "b/1.png",
        "c0": save_image(root / "c/0.png", pixels(8, 8, 3)),
    }
    files["a1"].write_bytes(b"not a jpeg")
    files["b1"].write_bytes(files["b0"].read_bytes()[:60])  # a truncated PNG
    return files


def test_bad_files_are_an_error_by_default_and_skipped_on_request(tmp_path):
    root = tmp_path / "images"
    files = folder_with_bad_files(root)  # too few images per class to hold any out for val: all are train
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagefolder", "train", root=root, image_size=8)
    one_line_error(excinfo, f"cannot decode {files['a1']}", "remove the file or re-prepare")
    train = load_dataset("imagefolder", "train", root=root, image_size=8, on_bad_file="skip")
    assert train.skipped == [str(files["a1"]), str(files["b1"])]
    assert train.labels.tolist() == [0, 1, 2] and len(train.images) == 3
    assert train.classes == ["a", "b", "c"] and train.subset([0]).skipped == train.skipped
    with pytest.raises(DataError):  # the skipping load's cache does not answer a strict load
        load_dataset("imagefolder", "train", root=root, image_size=8)


def test_skipping_keeps_images_and_labels_aligned():
    good = [io.BytesIO() for _ in range(3)]
    for i, buffer in enumerate(good):
        Image.fromarray(np.full((4, 4, 3), 50 * (i + 1), np.uint8)).save(buffer, format="PNG")
    files = [good[0].getvalue(), b"junk", good[1].getvalue(), b"", good[2].getvalue()]
    raw = RawSplit(files, np.array([0, 1, 2, 3, 4]), list("abcde"))
    decoded = decode_split(raw, 4, 3, on_bad_file="skip")
    assert decoded.labels.tolist() == [0, 2, 4] and decoded.skipped == ["image 1", "image 3"]
    assert decoded.images[:, 0, 0, 0].tolist() == [50, 100, 150]
    with pytest.raises(DataError) as excinfo:
        decode_split(RawSplit([b"junk", b""], np.zeros(2), ["a"]), 4, 3, on_bad_file="skip")
    one_line_error(excinfo, "none of the split's 2 image files decode")
    with pytest.raises(ConfigError):
        decode_split(raw, 4, 3, on_bad_file="ignore")


def test_a_named_pipe_among_the_images_is_a_bad_file_not_a_hang(tmp_path):
    """Opening a FIFO waits for a writer forever: it is refused as not a regular file, named, or skipped on request.
    Should the decoder open it anyway, the thread below writes an empty stream into it, so the test fails, not hangs.
    """
    root = tmp_path / "images"
    for c in ("a", "b"):
        save_image(root / f"{c}/0.png", pixels(8, 8))
    pipe = root / "a" / "1.jpg"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: open(pipe, "wb").close(), daemon=True)
    writer.start()
    try:
        with pytest.raises(DataError) as excinfo:
            load_dataset("imagefolder", "train", root=root, image_size=8)
        one_line_error(excinfo, f"cannot decode {pipe} (a named pipe, not a regular file)", "remove the file")
        train = load_dataset("imagefolder", "train", root=root, image_size=8, on_bad_file="skip")
        assert train.skipped == [str(pipe)] and train.labels.tolist() == [0, 1]
    finally:
        os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer's open return
        writer.join(timeout=10)
