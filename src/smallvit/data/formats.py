"""Readers for the on-disk formats datasets come in, one small function each, and the decoder they share.

A reader takes the dataset's folder and a split name and returns a :class:`RawSplit`: the images either as one
uint8 array (formats that store pixels) or as a list of encoded image files (JPEG, PNG, ...), plus labels and
class names. :func:`decode_images` turns either into a uint8 tensor [N, C, S, S]. Images of file-based formats are
ordered by class, then file name; array formats keep their upstream order.
"""

from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.io import loadmat
from torch import Tensor

from smallvit.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class RawSplit:
    """One split as stored: ``images`` is a uint8 array [N, C, H, W] or a list of encoded image files."""

    images: np.ndarray | list[Path] | list[bytes]
    labels: np.ndarray  # int [N]
    classes: list[str]


def read_cifar10(folder: Path, split: str) -> RawSplit:
    """``cifar-10-batches-py/``: pickled ``data_batch_1..5`` (train), ``test_batch`` and ``batches.meta``."""
    batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _read_cifar(folder / "cifar-10-batches-py", batches, "batches.meta", "labels", "label_names")


def read_cifar100(folder: Path, split: str) -> RawSplit:
    """``cifar-100-python/``: pickled ``train``, ``test`` and ``meta``; the 100 fine labels."""
    return _read_cifar(folder / "cifar-100-python", [split], "meta", "fine_labels", "fine_label_names")


def _read_cifar(batch_dir: Path, batches: list[str], meta: str, label_key: str, names_key: str) -> RawSplit:
    data = [_unpickle(batch_dir / batch) for batch in batches]
    images = np.concatenate([d["data"] for d in data]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([d[label_key] for d in data])
    return RawSplit(images, labels, _unpickle(batch_dir / meta)[names_key])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the files were pickled by Python 2


def read_svhn(folder: Path, split: str) -> RawSplit:
    """``<split>_32x32.mat`` with ``X`` [32, 32, 3, N] and ``y`` [N, 1] in 1..10, where 10 is the digit 0."""
    mat = loadmat(folder / f"{split}_32x32.mat")
    return RawSplit(mat["X"].transpose(3, 2, 0, 1), mat["y"].ravel() % 10, [str(d) for d in range(10)])


def read_flowers102(folder: Path, split: str) -> RawSplit:
    """``jpg/image_NNNNN.jpg``, ``setid.mat`` (1-based image ids per split) and ``imagelabels.mat`` (labels 1..102).

    ``trainval`` is train + val (2,040 images). Images are ordered by id; classes are named "1".."102".
    """
    split_keys = {"train": ["trnid"], "val": ["valid"], "test": ["tstid"], "trainval": ["trnid", "valid"]}[split]
    setid = loadmat(folder / "setid.mat")
    ids = np.sort(np.concatenate([setid[key].ravel() for key in split_keys])).astype(np.int64)
    labels = loadmat(folder / "imagelabels.mat")["labels"].ravel()[ids - 1] - 1
    files = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    return RawSplit(files, labels, [str(c) for c in range(1, 103)])


def read_tiny_imagenet(folder: Path, split: str) -> RawSplit:
    """The original ``tiny-imagenet-200/`` layout: ``train/<wnid>/images/*.JPEG`` and ``val/images`` labelled by
    ``val/val_annotations.txt``. Class ids follow the sorted wnids; names are the first synonym in ``words.txt``.
    """
    base = folder / "tiny-imagenet-200"
    wnids = sorted((base / "wnids.txt").read_text().split())
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if split == "train":
        files = [(wnid, path) for wnid in wnids for path in _images_in(base / "train" / wnid / "images")]
    else:
        rows = [line.split("\t")[:2] for line in (base / "val" / "val_annotations.txt").read_text().splitlines()]
        files = sorted((wnid, base / "val" / "images" / name) for name, wnid in rows)
    words = dict(line.split("\t", 1) for line in (base / "words.txt").read_text().splitlines())
    classes = [words[wnid].split(",")[0].strip() for wnid in wnids]
    return RawSplit([path for _, path in files], np.array([index[wnid] for wnid, _ in files]), classes)


def read_fashion_mnist(folder: Path, split: str) -> RawSplit:
    """The four IDX ``*-ubyte.gz`` files. Images are zero-padded from 28 to 32 px (the background is 0), not resized."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    return RawSplit(np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None], labels, FASHION_MNIST_CLASSES)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX array: zero bytes, a type code (8 = uint8), the number of dimensions, the big-endian dimensions, data."""
    data = gzip.decompress(path.read_bytes())
    if data[:3] != b"\0\0\x08":
        raise DataError(f"{path} is not a uint8 IDX file: re-prepare fashion-mnist")
    shape = np.frombuffer(data, ">u4", count=data[3], offset=4).tolist()
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(shape)).reshape(shape)


def read_cifar10_jpeg(folder: Path, split: str) -> RawSplit:
    """``cifar10-jpeg/<split>/<class>/NNNN.jpg``; alphabetical class order equals the CIFAR-10 ids."""
    return read_imagefolder(folder / "cifar10-jpeg", split)


def read_imagefolder(folder: Path, split: str, val_fraction: float = 0.1, seed: int = 0) -> RawSplit:
    """``folder/<split>/<class>/<image>``, or ``folder/<class>/<image>`` split into ``train`` and ``val`` by holding
    out ``val_fraction`` of each class, chosen with ``seed``. Classes are the sorted class-folder names (across
    all splits in the first layout).
    """
    subdirs = _subdirs(folder)
    images_per_subdir = [_images_in(d) for d in subdirs]
    if any(images_per_subdir):  # folder/<class>/<image>
        if split not in ("train", "val"):
            raise DataError(f"{folder} has no split folders, so its splits are train and val, not {split!r}")
        classes = [d.name for d in subdirs]
        files = [(c, path) for c, paths in enumerate(images_per_subdir) for path in paths]
        held_out = _held_out(np.array([c for c, _ in files]), val_fraction, seed)
        files = [file for file, held in zip(files, held_out, strict=True) if held == (split == "val")]
    elif split in [d.name for d in subdirs]:  # folder/<split>/<class>/<image>
        classes = sorted({c.name for d in subdirs for c in _subdirs(d)})
        index = {name: i for i, name in enumerate(classes)}
        files = [(index[d.name], path) for d in _subdirs(folder / split) for path in _images_in(d)]
    else:
        found = ", ".join(d.name for d in subdirs) or "none"
        raise DataError(f"{folder} has no {split!r} folder (found: {found}): expected {folder}/<split>/<class>/<image>")
    if not files:
        raise DataError(
            f"split {split!r} of {folder} has no images: add images, or use {folder}/<split>/<class>/<image>"
        )
    return RawSplit([path for _, path in files], np.array([c for c, _ in files]), classes)


def _held_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask picking round(fraction * n) of the n images of each class, at random with ``seed``."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        held[rng.choice(members, round(fraction * len(members)), replace=False)] = True
    return held


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def decode_images(raw: RawSplit, size: int, in_chans: int) -> Tensor:
    """The split's images as uint8 [N, in_chans, size, size], each fitted to ``size`` by :func:`fit`.

    Grayscale becomes 3 equal channels for ``in_chans=3``; colour becomes luma (PIL's "L") for ``in_chans=1``.
    """
    if isinstance(raw.images, np.ndarray):
        images = _match_channels(torch.from_numpy(np.ascontiguousarray(raw.images)), in_chans)
        return torch.cat([fit(chunk, size) for chunk in images.split(1024)])
    mode = "RGB" if in_chans == 3 else "L"
    return torch.stack([fit(_decode(file, i, mode)[None], size)[0] for i, file in enumerate(raw.images)])


def _decode(file: Path | bytes, index: int, mode: str) -> Tensor:
    name = file if isinstance(file, Path) else f"image {index}"
    try:
        with Image.open(file if isinstance(file, Path) else io.BytesIO(file)) as image:
            pixels = np.array(image.convert(mode))
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for unreadable or truncated files
        raise DataError(f"cannot decode {name} ({err}): remove the file or re-prepare the dataset") from err
    return torch.from_numpy(np.atleast_3d(pixels)).permute(2, 0, 1)


def _match_channels(images: Tensor, in_chans: int) -> Tensor:
    if images.shape[1] == in_chans:
        return images
    if in_chans == 3:
        return images.expand(-1, 3, -1, -1)
    r, g, b = images.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]  # PIL's fixed-point luma


def fit(images: Tensor, size: int) -> Tensor:
    """Resize uint8 [N, C, H, W] so the shorter side is ``size`` (bilinear, antialiased), then center-crop to
    ``size`` x ``size``. Square images are thus plainly resized; images of that size already are returned as they are.
    """
    height, width = images.shape[-2:]
    if height == width == size:
        return images
    scale = size / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    resized = F.interpolate(images.float(), (new_height, new_width), mode="bilinear", antialias=True)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return resized[..., top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)
