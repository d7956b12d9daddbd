"""Each on-disk format, written as a tiny synthetic copy, prepared and loaded; plus downloads, the cache, errors and
the bundled sample."""

import gzip
import hashlib
import io
import pickle
import shutil
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from smallvit.data import DATASETS, datasets, formats, get_dataset_info, load_dataset, prepare_dataset, sample
from smallvit.data.datasets import DataFile
from smallvit.data.download import download
from smallvit.data.formats import RawSplit, decode_images, decode_split, fit
from smallvit.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared/data"
SHARED_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
IMAGENETTE_ARCHIVE = SHARED_DATA / "imagenette-2040.tar.gz"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLVIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SMALLVIT_CACHE", str(tmp_path / "cache"))


def pixels(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def as_tensor(file: Path | io.BytesIO) -> torch.Tensor:
    """What PIL decodes from ``file``, as uint8 [C, H, W]."""
    return torch.from_numpy(np.array(Image.open(file).convert("RGB"))).permute(2, 0, 1)


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def write_cifar10(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A cifar-10-batches-py/ with 2 images per train batch and 3 test images; returns the split arrays."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, batches, n in [("train", [f"data_batch_{i}" for i in range(1, 6)], 2), ("test", ["test_batch"], 3)]:
        data, labels = rng.integers(0, 256, (len(batches) * n, 3072), np.uint8), rng.integers(0, 10, len(batches) * n)
        for i, batch in enumerate(batches):
            write_pickle(
                folder / "cifar-10-batches-py" / batch,
                {"data": data[i * n : (i + 1) * n], "labels": list(labels[i * n : (i + 1) * n])},
            )
        splits[split] = (data.reshape(-1, 3, 32, 32), labels)
    write_pickle(folder / "cifar-10-batches-py/batches.meta", {"label_names": CIFAR10_CLASSES})
    return splits


def test_cifar10_pickle_batches(tmp_path):
    splits = write_cifar10(tmp_path / "source")
    prepare_dataset("cifar10", source=tmp_path / "source")
    for split, (images, labels) in splits.items():
        dataset = load_dataset("cifar10", split)
        assert dataset.images.dtype == torch.uint8 and dataset.labels.dtype == torch.int64
        assert torch.equal(dataset.images, torch.from_numpy(images))
        assert dataset.labels.tolist() == labels.tolist()
        assert dataset.classes == CIFAR10_CLASSES and (dataset.name, dataset.split) == ("cifar10", split)


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "source/cifar-100-python"
    images = np.random.default_rng(1).integers(0, 256, (4, 3072), np.uint8)
    write_pickle(folder / "train", {"data": images, "fine_labels": [5, 99, 0, 5], "coarse_labels": [1, 2, 3, 1]})
    write_pickle(folder / "test", {"data": images[:1], "fine_labels": [7], "coarse_labels": [0]})
    write_pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": []})
    prepare_dataset("cifar100", source=folder.parent)
    train = load_dataset("cifar100", "train")
    assert train.labels.tolist() == [5, 99, 0, 5] and len(train.classes) == 100
    assert torch.equal(train.images, torch.from_numpy(images.reshape(-1, 3, 32, 32)))
    assert len(load_dataset("cifar100", "test")) == 1


def test_svhn_mat_files_and_label_10_is_digit_0(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (32, 32, 3, 3), np.uint8)  # H, W, C, N as in the .mat files
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [9]], np.uint8)})
    prepare_dataset("svhn", source=tmp_path, verify=False)  # fake files under the upstream names
    train = load_dataset("svhn", "train")
    assert train.labels.tolist() == [0, 1, 9]
    assert torch.equal(train.images[2, 1], torch.from_numpy(x[:, :, 1, 2]))  # image 2, green channel
    assert train.classes == [str(d) for d in range(10)]


def test_flowers102_splits_and_shorter_side_resize(tmp_path):
    source = tmp_path / "source"
    files = [save_image(source / f"jpg/image_{i:05d}.jpg", pixels(20 + i, 30, seed=i)) for i in range(1, 7)]
    savemat(source / "imagelabels.mat", {"labels": np.array([[3, 1, 2, 102, 1, 3]], np.uint8)})
    savemat(source / "setid.mat", {"trnid": [[4, 1]], "valid": [[2]], "tstid": [[3, 5, 6]]})
    prepare_dataset("flowers102", source=source, verify=False)
    train = load_dataset("flowers102", "train", image_size=16)
    assert train.labels.tolist() == [2, 101]  # images 1 and 4, by id, labels 1..102 -> 0..101
    assert train.images.shape == (2, 3, 16, 16)
    assert torch.equal(train.images[0], fit(as_tensor(files[0])[None], 16)[0])
    assert load_dataset("flowers102", "trainval", image_size=16).labels.tolist() == [2, 0, 101]
    assert load_dataset("flowers102", "test").images.shape == (3, 3, 224, 224)  # the preset size
    assert len(train.classes) == 102


def test_tiny_imagenet_from_zip(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("n02\nn01\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\nn03\tunused\n")
    for wnid, count in [("n01", 2), ("n02", 1)]:
        for i in range(count):
            save_image(base / f"train/{wnid}/images/{wnid}_{i}.JPEG", pixels(64, 64, seed=i))
    for i in range(3):
        save_image(base / f"val/images/val_{i}.JPEG", pixels(64, 64, seed=10 + i))
    (base / "val/val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t9\t9\nval_1.JPEG\tn01\t1\t1\t8\t8\nval_2.JPEG\tn02\t0\t0\t5\t5\n"
    )
    archive = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(base.rglob("*")):
            z.write(path, path.relative_to(tmp_path))
    prepare_dataset("tiny-imagenet", source=archive, verify=False)
    train, val = load_dataset("tiny-imagenet", "train"), load_dataset("tiny-imagenet", "val")
    assert train.classes == ["goldfish", "tabby"] and train.labels.tolist() == [0, 0, 1]
    assert val.labels.tolist() == [0, 1, 1]  # val_1 (n01), then val_0 and val_2 (n02)
    assert torch.equal(val.images[0], as_tensor(base / "val/images/val_1.JPEG"))
    assert train.images.shape == (3, 3, 64, 64)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.tobytes()))


def write_fashion_mnist(folder: Path) -> np.ndarray:
    folder.mkdir(parents=True)
    images = np.random.default_rng(3).integers(1, 256, (3, 28, 28), np.uint8)
    for prefix, n in [("train", 3), ("t10k", 2)]:
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[:n])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) + 7)
    return images


def test_fashion_mnist_idx_padded_to_32_px(tmp_path):
    images = write_fashion_mnist(tmp_path / "source")
    prepare_dataset("fashion-mnist", source=tmp_path / "source", verify=False)
    train = load_dataset("fashion-mnist", "train")
    assert train.images.shape == (3, 3, 32, 32) and train.labels.tolist() == [7, 8, 9]
    assert torch.equal(train.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
    assert train.images[:, :, :2].eq(0).all() and train.images[:, :, :, 30:].eq(0).all()  # the zero border
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grayscale repeated
    assert load_dataset("fashion-mnist", "test", in_chans=1).images.shape == (2, 1, 32, 32)
    assert train.classes[9] == "Ankle boot"


def test_fashion_mnist_prepares_from_system_copy(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "usr/share/datasets/fashion-mnist")
    info = replace(DATASETS["fashion-mnist"], system_source=tmp_path / "usr/share/datasets/fashion-mnist")
    monkeypatch.setitem(DATASETS, "fashion-mnist", info)
    prepare_dataset("fashion-mnist")
    assert len(load_dataset("fashion-mnist", "train")) == 3


def test_imagefolder_with_split_folders(tmp_path):
    images = {}
    for split, classes in [("train", ["dog", "cat"]), ("test", ["emu", "cat"])]:
        for c in classes:
            for i in range(2):
                images[split, c, i] = save_image(tmp_path / f"{split}/{c}/{i}.png", pixels(8, 8, seed=len(images)))
    train = load_dataset("imagefolder", "train", root=tmp_path, image_size=8)
    test = load_dataset("imagefolder", "test", root=tmp_path, image_size=8)
    assert train.classes == test.classes == ["cat", "dog", "emu"]  # every split's class folders
    assert train.labels.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 0, 2, 2]
    assert torch.equal(train.images[2], as_tensor(images["train", "dog", 0]))  # PNG: exact pixels
    assert load_dataset("imagefolder", "test", root=tmp_path).images.shape == (4, 3, 224, 224)


def test_imagefolder_without_split_folders_holds_out_val(tmp_path):
    for c in ("a", "b"):
        for i in range(10):
            save_image(tmp_path / f"images/{c}/{i:02d}.png", pixels(8, 8, seed=i)[..., 0])
    train = load_dataset("imagefolder", "train", root=tmp_path / "images", image_size=8)
    val = load_dataset("imagefolder", "val", root=tmp_path / "images", image_size=8)
    assert len(train) == 18 and val.labels.tolist() == [0, 1]  # 10% of each class
    assert train.images.shape == (18, 3, 8, 8)  # grayscale files become 3 channels
    all_images = {bytes(image.numpy()) for image in torch.cat([train.images, val.images])}
    assert len(all_images) == 10  # 10 distinct pictures per class, none lost or duplicated across the splits
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagefolder", "test", root=tmp_path / "images")
    one_line_error(excinfo, "train and val")


def test_loading_is_deterministic_whatever_the_file_creation_order(tmp_path):
    for folder, order in [("one", range(20)), ("two", reversed(range(20)))]:
        for i in order:
            save_image(tmp_path / f"{folder}/c{i % 2}/{i}.png", pixels(8, 8, seed=i))
    for split in ("train", "val"):
        one = load_dataset("imagefolder", split, root=tmp_path / "one", image_size=8)
        two = load_dataset("imagefolder", split, root=tmp_path / "two", image_size=8)
        assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)


def write_cifar10_jpeg(folder: Path, per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c, name in enumerate(CIFAR10_CLASSES[:3]):
            for i in range(per_class):
                save_image(folder / f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg", pixels(32, 32, seed=10 * c + i))
    return folder / "cifar10-jpeg"


def test_cifar10_jpeg_prepared_from_archive(tmp_path):
    archive = make_tar(write_cifar10_jpeg(tmp_path / "tree"), tmp_path / "cifar10-jpeg.tar.gz")
    prepared = prepare_dataset("cifar10-jpeg", source=archive, verify=False)
    assert get_dataset_info("cifar10-jpeg").is_prepared() and prepared == tmp_path / "data/cifar10-jpeg"
    train = load_dataset("cifar10-jpeg", "train")
    assert train.classes == CIFAR10_CLASSES[:3] and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(train.images[3], as_tensor(tmp_path / "tree/cifar10-jpeg/train/automobile/0001.jpg"))


IMAGENETTE_WNIDS = ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player


def write_imagenette(folder: Path) -> Path:
    """A 3-class imagenette-2040/ with 2 train, 1 val and 1 test 224x224 JPEGs per class, one of them grayscale."""
    names = {"train": ["ILSVRC2012_val_00000293.JPEG", "n_10026.JPEG"], "val": ["n_11.JPEG"], "test": ["n_12.JPEG"]}
    for split, files in names.items():
        for c, wnid in enumerate(IMAGENETTE_WNIDS):
            for i, name in enumerate(files):
                image = pixels(224, 224, seed=100 * c + 10 * i + len(split))
                save_image(folder / f"imagenette-2040/{split}/{wnid}/{name}", image[..., 0] if c == i == 1 else image)
    return folder / "imagenette-2040"


def test_imagenette_prepared_from_archive(tmp_path, monkeypatch):
    tree = write_imagenette(tmp_path / "tree")
    archive = make_tar(tree, tmp_path / "imagenette-2040.tar.gz")
    info = DATASETS["imagenette-2040"]  # a fake archive: give the registry its checksum, in case local ones are checked
    fake = DataFile(archive.name, "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest())
    monkeypatch.setitem(DATASETS, info.name, replace(info, files=(fake,)))
    prepare_dataset("imagenette-2040", source=archive)
    train, val, test = (load_dataset("imagenette-2040", split) for split in ("train", "val", "test"))
    assert train.classes == val.classes == ["tench", "English springer", "cassette player"]
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and val.labels.tolist() == test.labels.tolist() == [0, 1, 2]
    assert train.images.shape == (6, 3, 112, 112) and test.images.dtype == torch.uint8
    source = tree / "train/n02102040/ILSVRC2012_val_00000293.JPEG"  # names sort by bytes: "I" < "n"
    assert torch.equal(train.images[2], fit(as_tensor(source)[None], 112)[0])
    assert torch.equal(train.images[3, 0], train.images[3, 2])  # the grayscale image, as 3 equal channels
    assert (info.splits, info.val_split, info.test_split) == (("train", "val", "test"), "val", "test")
    assert (info.image_size // info.patch_size, info.num_classes) == (7, 10)


def test_imagenette_classes_keep_an_unknown_wnid(tmp_path):
    save_image(tmp_path / "imagenette-2040/train/n99999999/a.JPEG", pixels(8, 8))
    save_image(tmp_path / "imagenette-2040/train/n01440764/a.JPEG", pixels(8, 8))
    assert formats.read_imagenette(tmp_path, "train").classes == ["tench", "n99999999"]


@pytest.mark.skipif(not IMAGENETTE_ARCHIVE.exists(), reason="the shared imagenette-2040 archive is not here")
def test_real_imagenette_archive_prepares_with_its_layout():
    folder = prepare_dataset("imagenette-2040", source=IMAGENETTE_ARCHIVE)
    counts = {"train": 204, "val": 50, "test": 100}
    for split, per_class in counts.items():
        raw = formats.read_imagenette(folder, split)
        assert np.bincount(raw.labels).tolist() == [per_class] * 10
        assert raw.classes == list(formats.IMAGENETTE_CLASSES.values())
        few = replace(raw, images=raw.images[:: per_class * 5], labels=raw.labels[:: per_class * 5])
        assert decode_images(few, 112, 3).shape == (2, 3, 112, 112)
    names = [path.name for split in counts for path in formats.read_imagenette(folder, split).images]
    assert len(set(names)) == len(names) == 3540  # no file in two splits


@pytest.mark.slow  # decodes 3,540 JPEGs: about 45 s on 2 CPU cores
@pytest.mark.skipif(not IMAGENETTE_ARCHIVE.exists(), reason="the shared imagenette-2040 archive is not here")
def test_real_imagenette_archive_loads_every_split():
    prepare_dataset("imagenette-2040", source=IMAGENETTE_ARCHIVE)
    for split, per_class in [("train", 204), ("val", 50), ("test", 100)]:
        dataset = load_dataset("imagenette-2040", split)
        assert dataset.images.shape == (10 * per_class, 3, 112, 112) and dataset.images.dtype == torch.uint8
        assert torch.bincount(dataset.labels).tolist() == [per_class] * 10 and dataset.classes[0] == "tench"


def cifar10_archive(tmp_path) -> Path:
    write_cifar10(tmp_path / "tree")
    return make_tar(tmp_path / "tree/cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")


def test_download_from_file_url_checks_the_checksum(tmp_path, monkeypatch):
    archive = cifar10_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    info = DATASETS["cifar10"]
    monkeypatch.setitem(
        DATASETS, "cifar10", replace(info, files=(DataFile(archive.name, f"md5:{md5}", archive.as_uri()),))
    )
    prepare_dataset("cifar10", download=True)
    assert len(load_dataset("cifar10", "test")) == 3
    assert sorted(p.name for p in (tmp_path / "data/cifar10").iterdir()) == [
        ".smallvit-prepared",
        "cifar-10-batches-py",
    ]

    wrong = DataFile(archive.name, "md5:" + "0" * 32, archive.as_uri())
    monkeypatch.setitem(DATASETS, "cifar10", replace(info, files=(wrong,)))
    with pytest.raises(DataError) as excinfo:
        prepare_dataset("cifar10", download=True)
    one_line_error(excinfo, md5, "expected 000", "download again")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cifar10"]  # the old copy stays, no leftovers


def test_download_writes_only_verified_files(tmp_path):
    source = tmp_path / "file.bin"
    source.write_bytes(b"smallvit")
    sha256 = hashlib.sha256(b"smallvit").hexdigest()
    assert download(source.as_uri(), tmp_path / "out/file.bin", f"sha256:{sha256}").read_bytes() == b"smallvit"
    with pytest.raises(DataError):
        download(source.as_uri(), tmp_path / "bad/file.bin", "sha256:" + "0" * 64)
    with pytest.raises(DataError) as excinfo:
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "missing/file.bin", f"sha256:{sha256}")
    one_line_error(excinfo, "missing.bin", "--source")
    assert list((tmp_path / "bad").iterdir()) == [] and list((tmp_path / "missing").iterdir()) == []


@pytest.fixture
def decode_calls(monkeypatch) -> list:
    """Records every call of the decoder."""
    calls = []

    def counting(*args):
        calls.append(args)
        return decode_split(*args)

    monkeypatch.setattr(datasets, "decode_split", counting)
    return calls


def test_second_load_comes_from_the_cache(tmp_path, decode_calls):
    write_cifar10(tmp_path / "source")
    prepare_dataset("cifar10", source=tmp_path / "source")
    first = load_dataset("cifar10", "train")
    second = load_dataset("cifar10", "train")
    assert len(decode_calls) == 1
    assert torch.equal(first.images, second.images) and second.classes == CIFAR10_CLASSES
    load_dataset("cifar10", "train", image_size=16)
    prepare_dataset("cifar10", source=tmp_path / "source")  # a new copy: its old decoded splits no longer apply
    load_dataset("cifar10", "train")
    assert len(decode_calls) == 3


def test_corrupt_cache_file_is_rebuilt(tmp_path, decode_calls):
    first = load_dataset("cifar10-sample", "test")
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    second = load_dataset("cifar10-sample", "test")
    assert len(decode_calls) == 2 and torch.equal(first.images, second.images)


def test_corrupt_image_names_the_file(tmp_path):
    save_image(tmp_path / "good/a/0.png", pixels(8, 8))
    save_image(tmp_path / "good/b/0.png", pixels(8, 8))
    (tmp_path / "good/a/1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagefolder", "train", root=tmp_path / "good")
    one_line_error(excinfo, "1.jpg", "remove the file or re-prepare")


def test_errors_are_one_line_and_name_the_fix(tmp_path, monkeypatch):
    cases = [
        (lambda: load_dataset("cifar", "train"), ["unknown dataset 'cifar'", "cifar10, cifar100"]),
        (lambda: load_dataset("cifar10", "val"), ["no split 'val'", "train, test"]),
        (lambda: load_dataset("svhn", "train"), ["not prepared", "smallvit prepare svhn --source PATH", "--download"]),
        (lambda: load_dataset("imagefolder", "train"), ["root=FOLDER"]),
        (lambda: prepare_dataset("cifar10"), ["no source given", "cifar-10-python.tar.gz"]),
        (lambda: prepare_dataset("cifar10", source=tmp_path / "nowhere"), ["does not exist"]),
        (lambda: prepare_dataset("cifar10-jpeg", download=True), ["no public download", "cifar10-jpeg.tar.gz"]),
        (lambda: prepare_dataset("cifar10-sample"), ["needs no preparing"]),
    ]
    for call, fragments in cases:
        with pytest.raises(DataError) as excinfo:
            call()
        one_line_error(excinfo, *fragments)
    with pytest.raises(ConfigError):
        load_dataset("cifar10-sample", "train", in_chans=2)

    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": [[1]]})
    with pytest.raises(DataError) as excinfo:
        prepare_dataset("svhn", source=tmp_path, verify=False)
    one_line_error(excinfo, "lacks test_32x32.mat", "train_32x32.mat/test_32x32.mat")

    write_cifar10(tmp_path / "source")
    prepare_dataset("cifar10", source=tmp_path / "source")
    (tmp_path / "data/cifar10/cifar-10-batches-py/test_batch").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test")
    one_line_error(excinfo, "test_batch is missing", "smallvit prepare cifar10")


def test_grayscale_conversion_agrees_between_arrays_and_files():
    array = pixels(32, 32, seed=5)
    png = io.BytesIO()
    Image.fromarray(array).save(png, format="PNG")
    from_array = decode_images(RawSplit(array.transpose(2, 0, 1)[None], np.zeros(1), ["x"]), 32, 1)
    from_file = decode_images(RawSplit([png.getvalue()], np.zeros(1), ["x"]), 32, 1)
    assert from_array.shape == (1, 1, 32, 32) and torch.equal(from_array, from_file)


def test_fit_crops_the_center_of_the_longer_side():
    image = torch.tensor([0, 0, 100, 100, 100, 100, 200, 200], dtype=torch.uint8).expand(1, 1, 4, 8)
    assert fit(image, 4).flatten().tolist() == [100] * 16  # shorter side already 4: only the crop
    flat = torch.full((2, 3, 6, 9), 7, dtype=torch.uint8)
    assert torch.equal(fit(flat, 4), torch.full((2, 3, 4, 4), 7, dtype=torch.uint8))
    assert fit(image, 8).shape == (1, 1, 8, 8)
    square = torch.zeros(1, 3, 5, 5, dtype=torch.uint8)
    assert fit(square, 5) is square


def test_bundled_sample():
    for split, per_class in [("train", 204), ("val", 50), ("test", 200)]:
        dataset = load_dataset("cifar10-sample", split)
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (10 * per_class, 3, 32, 32)
        assert torch.bincount(dataset.labels).tolist() == [per_class] * 10
        assert dataset.classes == CIFAR10_CLASSES


# sha256 over each JPEG file's sha256, then the int64 labels: train and test as built before val was added
SAMPLE_SPLIT_DIGESTS = {
    "train": "5c8081535d6a35ec93b3305aadbd3da6ed94acd21a0bccac624eb1278769f9de",
    "val": "51d9e191d688c9261d4d133428534bf78599c160869f3d94436223ea96944a12",
    "test": "1a7847bf7a39a0badd3fa5720a237ef7cb8e4430ee66cd11e6f6415d5e5f5375",
}


def test_bundled_sample_splits_are_the_recorded_files():
    for split, expected in SAMPLE_SPLIT_DIGESTS.items():
        raw = sample.read_sample(sample.SAMPLE_FILE.parent, split)
        digest = hashlib.sha256(b"".join(hashlib.sha256(file).digest() for file in raw.images))
        digest.update(np.asarray(raw.labels, np.int64).tobytes())
        assert digest.hexdigest() == expected, split


def test_bundled_sample_val_shares_no_image_with_train_or_test():
    def images(split):
        return {bytes(image.numpy()) for image in load_dataset("cifar10-sample", split).images}

    val = images("val")
    assert len(val) == 500 and not val & images("train") and not val & images("test")


@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason="the shared CIFAR-10 JPEG archive is not here")
def test_bundled_sample_has_the_archive_pixels():
    wanted = {("test", 0, 0), ("test", 9, 199), ("train", 0, 0), ("train", 0, 203), ("train", 1, 17)}
    wanted |= {("val", 0, 0), ("val", 9, 49)}  # train files 0204 and 0253
    members = {}
    for split, c, i in wanted:
        folder, start = sample.ARCHIVE_START[split]
        members[f"cifar10-jpeg/{folder}/{CIFAR10_CLASSES[c]}/{start + i:04d}.jpg"] = (split, c, i)
    found = {}
    with tarfile.open(SHARED_ARCHIVE) as archive:
        for member in archive:
            if member.name in members:
                found[members[member.name]] = as_tensor(io.BytesIO(archive.extractfile(member).read()))
                if len(found) == len(members):
                    break
    for (split, c, i), expected in found.items():
        per_class = sample.PER_CLASS[split]
        assert torch.equal(load_dataset("cifar10-sample", split).images[c * per_class + i], expected)
    assert len(found) == len(wanted)


def test_corrupt_sample_says_reinstall(tmp_path, monkeypatch):
    for path in (sample.SAMPLE_FILE, sample.checksum_file(sample.SAMPLE_FILE)):
        shutil.copy(path, tmp_path)
    copy = tmp_path / sample.SAMPLE_FILE.name
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(data)
    monkeypatch.setattr(sample, "SAMPLE_FILE", copy)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10-sample", "train")
    one_line_error(excinfo, "corrupt", "reinstall smallvit")


def test_registry_presets_are_consistent():
    for name, info in DATASETS.items():
        assert info.name == name and info.image_size % info.patch_size == 0
        assert len(info.mean) == len(info.std) == 3
        assert all(f.checksum.split(":")[0] in ("md5", "sha256") for f in info.files)
        assert {info.val_split, info.test_split} - {None} <= set(info.splits) and info.val_split != info.test_split


def test_registry_names_validation_and_test_splits():
    splits = {name: (info.val_split, info.test_split) for name, info in DATASETS.items()}
    assert splits == {
        **dict.fromkeys(["cifar10", "cifar100", "svhn", "fashion-mnist", "cifar10-jpeg"], (None, "test")),
        "tiny-imagenet": (None, "val"),
        **dict.fromkeys(
            ["flowers102", "cifar10-sample", "imagenette-2040", "caltech101-2020", "eurosat-2040"], ("val", "test")
        ),
        "imagefolder": ("val", None),
    }


CALTECH_ARCHIVE = SHARED_DATA / "caltech101-2020.tar.gz"
EUROSAT_ARCHIVE = SHARED_DATA / "eurosat-2040.tar.gz"


@pytest.mark.skipif(not CALTECH_ARCHIVE.exists(), reason="the shared caltech101-2020 archive is not here")
def test_real_caltech101_archive_prepares_with_its_layout():
    # The data README's counts: 20 train images in each of 101 classes, 6-10 validation and 5-30 test images.
    folder = prepare_dataset("caltech101-2020", source=CALTECH_ARCHIVE)
    info = get_dataset_info("caltech101-2020")
    splits = {split: info.read(folder, split) for split in ("train", "val", "test")}
    assert np.bincount(splits["train"].labels).tolist() == [20] * 101
    assert len(splits["val"].labels) == 997 and len(splits["test"].labels) == 2276
    assert np.bincount(splits["test"].labels).min() == 5 and np.bincount(splits["test"].labels).max() == 30
    assert splits["train"].classes[:5] == ["Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion"]
    assert all(raw.classes == splits["train"].classes for raw in splits.values())
    few = replace(splits["val"], images=splits["val"].images[:2], labels=splits["val"].labels[:2])
    assert decode_images(few, info.image_size, 3).shape == (2, 3, 112, 112)


@pytest.mark.skipif(not EUROSAT_ARCHIVE.exists(), reason="the shared eurosat-2040 archive is not here")
def test_real_eurosat_archive_prepares_with_its_layout():
    folder = prepare_dataset("eurosat-2040", source=EUROSAT_ARCHIVE)
    info = get_dataset_info("eurosat-2040")
    for split, per_class in [("train", 204), ("val", 50), ("test", 100)]:
        raw = info.read(folder, split)
        assert np.bincount(raw.labels).tolist() == [per_class] * 10
        assert raw.classes[0] == "AnnualCrop" and raw.classes[-1] == "SeaLake"
    few = replace(raw, images=raw.images[:2], labels=raw.labels[:2])
    assert decode_images(few, info.image_size, 3).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", ["caltech101-2020", "eurosat-2040"])
def test_a_packed_archive_under_another_checksum_is_refused(tmp_path, name):
    fake = tmp_path / f"{name}.tar.gz"
    fake.write_bytes(b"not the archive")
    with pytest.raises(DataError, match="it is not the official file; pass --no-verify"):
        prepare_dataset(name, source=fake)
