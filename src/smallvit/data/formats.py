"""Readers for the on-disk formats datasets come in, one small function each, and the decoder they share.

A reader takes the dataset's folder and a split name and returns a :class:`RawSplit`: the images either as one
uint8 array (formats that store pixels) or as a list of encoded image files (JPEG, PNG, ...), plus labels and
class names. :func:`decode_split` turns either into a uint8 tensor [N, C, S, S] (dropping undecodable files if asked
to), :func:`decode_images` is its strict short form; both decode long lists of files in worker processes, with a
progress bar. :func:`decode_file` is the one way a file becomes pixels (also for ``smallvit predict``), in one of two
methods: "full" (every pixel, then :func:`fit`) or "draft" (camera photos: reduced-scale JPEG decoding, EXIF
orientation). Images of file-based formats are ordered by class, then file name; array formats keep their upstream
order.

Files are untrusted input: CIFAR's pickles are read by a restricted unpickler that runs no code (see
:func:`_unpickle`), and whatever goes wrong while decoding an image is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import multiprocessing
import multiprocessing.context
import os
import pickle
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from scipy.io import loadmat
from torch import Tensor

from smallvit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

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
    images, labels = [], []
    for batch in batches:
        path = batch_dir / batch
        content = _unpickle(path)
        data, batch_labels = _array(_entry(content, "data", path), path), _array(_entry(content, label_key, path), path)
        labelled = batch_labels.shape == data.shape[:1] and batch_labels.dtype.kind in "iu"
        if data.dtype != np.uint8 or data.shape[1:] != (3072,) or not labelled:
            raise DataError(f"{path} does not hold uint8 [N, 3072] images and N labels: re-download the dataset")
        images.append(data)
        labels.append(batch_labels)
    names = _entry(_unpickle(batch_dir / meta), names_key, batch_dir / meta)
    if not isinstance(names, list) or not all(isinstance(name, (str, bytes)) for name in names):
        raise DataError(f"{batch_dir / meta} has no list of class names under {names_key!r}: re-download the dataset")
    return RawSplit(np.concatenate(images).reshape(-1, 3, 32, 32), np.concatenate(labels), [_text(n) for n in names])


# The globals a CIFAR pickle may name: numpy's array reconstruction as numpy 1 (and Python 2, which wrote the
# official files: they name only _reconstruct, ndarray and dtype) and numpy 2 spell it, protocol 5's _frombuffer,
# numpy scalars (repacked copies may hold labels as numpy ints), and how Python 3 pickles bytes at protocols 0-2.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
    ("builtins", "bytes"): "bytes",
}
_PLAIN_DTYPES = ("b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8")


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickles without running anything they name: globals outside :data:`_CIFAR_GLOBALS` are refused,
    and numpy's are stand-ins (:class:`_Global`) that only record their arguments, from which :func:`_array` builds
    plain numeric arrays itself. Dicts, lists, tuples, str, bytes, numbers, None and bools need no globals.
    """

    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the official files were written by Python 2: its str is bytes
        self.path = path

    def find_class(self, module: str, name: str) -> _Global:
        if (module, name) not in _CIFAR_GLOBALS:
            raise DataError(
                f"smallvit refuses to load {module}.{name} from {self.path}: the file is not a CIFAR batch "
                "(or was tampered with); re-download it"
            )
        return _Global(_CIFAR_GLOBALS[module, name])


class _Global:
    """Stands in for an admitted global: ``bytes()`` and ``_codecs.encode(text, "latin1")`` give their bytes, numpy's
    callables give a :class:`_Call` record. A fresh one per reference, so a pickle can alter nothing shared."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: object) -> bytes | _Call:
        if self.name == "bytes" and not args:
            return b""
        if self.name == "encode" and len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            return args[0].encode("latin1")
        if self.name in ("bytes", "encode"):
            raise ValueError(f"unexpected arguments for {self.name}")
        return _Call(self.name, args)


class _Call:
    """A recorded call of one of numpy's admitted globals, plus the state BUILD gives it."""

    __slots__ = ("name", "args", "state")

    def __init__(self, name: str, args: tuple) -> None:
        self.name, self.args, self.state = name, args, None

    def __setstate__(self, state: object) -> None:
        self.state = state


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle read by :class:`_CifarUnpickler`; bytes keys become str, numpy arrays are :class:`_Call`."""
    with open(path, "rb") as f:  # outside the try: a missing file is reported as missing by the dataset
        try:
            content = _CifarUnpickler(f, path).load()
        except DataError:
            raise
        except Exception as err:  # truncated or malformed pickles raise many types; all mean the same
            raise DataError(f"cannot read {path} ({_describe(err)}): the file is damaged; re-download it") from err
    if not isinstance(content, dict):
        raise DataError(f"{path} holds a {type(content).__name__}, not a dict: the file is not a CIFAR batch")
    return {_text(key) if isinstance(key, bytes) else key: value for key, value in content.items()}


def _entry(content: dict, key: str, path: Path) -> object:
    if key not in content:
        raise DataError(f"{path} has no {key!r} entry: the file is not a CIFAR batch; re-download it")
    return content[key]


def _text(value: str | bytes) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _array(value: object, path: Path) -> np.ndarray:
    """``value`` as a numeric numpy array: a list (of numbers, or of numpy scalars as repacked copies hold) as it is,
    a recorded numpy array rebuilt by :func:`_build`."""
    try:
        if isinstance(value, _Call):
            return _build(value)
        if isinstance(value, (list, tuple)):
            value = [_build(item) if isinstance(item, _Call) else item for item in value]
        array = np.array(value)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{array.dtype} values")
        return array
    except (ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path} holds a malformed array ({_describe(err)}): re-download the dataset") from err


def _build(call: _Call) -> np.ndarray:
    """The array a recorded numpy call describes, made with ``np.frombuffer`` from checked parts (a plain numeric
    dtype, a shape that matches the byte count), never by numpy's own unpickling code; a scalar is a 0-d array."""
    if call.name == "reconstruct":  # ndarray.__reduce__: state (version, shape, dtype, fortran order, bytes)
        _, shape, dtype, fortran, data = call.state
        order = "F" if fortran else "C"
    elif call.name == "frombuffer":  # protocol 5: _frombuffer(bytes, dtype, shape, order)
        data, dtype, shape, order = call.args
    elif call.name == "scalar":  # a numpy number: scalar(dtype, bytes)
        (dtype, data), shape, order = call.args, (), "C"
    else:
        raise ValueError(f"a {call.name} where an array belongs")
    if not (isinstance(dtype, _Call) and dtype.name == "dtype" and _text(dtype.args[0]) in _PLAIN_DTYPES):
        raise ValueError("not a plain numeric dtype")
    byte_order = _text(dtype.state[1]) if isinstance(dtype.state, tuple) else "|"
    if byte_order not in ("|", "<", ">", "=") or order not in ("C", "F") or type(data) not in (bytes, bytearray):
        raise ValueError("malformed array")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"shape {shape}")
    dtype = np.dtype(_text(dtype.args[0])).newbyteorder("=" if byte_order == "|" else byte_order)
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{len(data)} bytes for shape {shape} of {dtype}")
    return np.frombuffer(data, dtype).reshape(shape, order=order).astype(dtype.newbyteorder("="))


def _describe(err: BaseException) -> str:
    """An exception's message on one line, or its type's name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__


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


IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def read_imagenette(folder: Path, split: str) -> RawSplit:
    """``imagenette-2040/<split>/<wnid>/<name>.JPEG``; labels follow the sorted wnids, classes are their names."""
    raw = read_imagefolder(folder / "imagenette-2040", split)
    return RawSplit(raw.images, raw.labels, [IMAGENETTE_CLASSES.get(wnid, wnid) for wnid in raw.classes])


def read_packed(name: str, folder: Path, split: str) -> RawSplit:
    """``<name>/<split>/<class>/<image>``, the layout of the project's packed archives; classes in folder order."""
    return read_imagefolder(folder / name, split)


def read_imagefolder(folder: Path, split: str, val_fraction: float = 0.1, seed: int = 0) -> RawSplit:
    """``folder/<split>/<class>/<image>``, or ``folder/<class>/<image>`` split into ``train`` and ``val`` by holding
    out ``val_fraction`` of each class, chosen with ``seed``. Classes are the sorted class-folder names; in the first
    layout those of all split folders together, so every split numbers the classes alike, also when one split lacks
    a class. A class folder without images is an error (in any split): silently dropping it would shift the labels.
    So is a single class: a classifier needs at least two.
    """
    subdirs = _subdirs(folder)
    images_per_subdir = [_images_in(d) for d in subdirs]
    if any(images_per_subdir):  # folder/<class>/<image>
        if split not in ("train", "val"):
            raise DataError(f"{folder} has no split folders, so its splits are train and val, not {split!r}")
        _refuse_empty_classes(folder, dict(zip(subdirs, images_per_subdir)))
        classes = [d.name for d in subdirs]
        files = [(c, path) for c, paths in enumerate(images_per_subdir) for path in paths]
        held_out = _held_out(np.array([c for c, _ in files]), val_fraction, seed)
        files = [file for file, held in zip(files, held_out, strict=True) if held == (split == "val")]
    elif subdirs and not any(_subdirs(d) for d in subdirs):  # folder/<class>/, not one image in any of them
        _refuse_empty_classes(folder, dict(zip(subdirs, images_per_subdir)))
    elif split in [d.name for d in subdirs]:  # folder/<split>/<class>/<image>
        per_split = {d.name: {c: _images_in(c) for c in _subdirs(d)} for d in subdirs}
        for split_name, per_class in per_split.items():
            _refuse_empty_classes(folder / split_name, per_class)
        classes = sorted({c.name for per_class in per_split.values() for c in per_class})
        index = {name: i for i, name in enumerate(classes)}
        files = [(index[c.name], path) for c, paths in per_split[split].items() for path in paths]
    else:
        found = ", ".join(d.name for d in subdirs) or "none"
        raise DataError(f"{folder} has no {split!r} folder (found: {found}): expected {folder}/<split>/<class>/<image>")
    if len(classes) == 1:
        raise DataError(
            f"{folder} has one class, {classes[0]!r}: a classifier needs at least two; add a folder of images for "
            "each class"
        )
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


def _refuse_empty_classes(folder: Path, images_per_class: dict[Path, list[Path]]) -> None:
    """An error naming the class folders without images, if any."""
    empty = [class_dir.name for class_dir, images in images_per_class.items() if not images]
    if not empty:
        return
    names = ", ".join(map(repr, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    which = f"class folder {names} in {folder} holds" if len(empty) == 1 else f"class folders {names} in {folder} hold"
    if len(empty) == len(images_per_class):
        raise DataError(f"{which} no images (files ending {', '.join(IMAGE_SUFFIXES)}): add images to them")
    them = "it" if len(empty) == 1 else "them"
    raise DataError(f"{which} no images: remove {them} or add images; an empty class would shift every label after it")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


OnBadFile = Literal["error", "skip"]
DecodeMethod = Literal["full", "draft"]
"""How image files become pixels (see :func:`decode_split`); pixel arrays are unaffected."""

_PROBE_FILES = 16  # decoded in this process first, timed, to decide whether a pool of workers pays
_POOL_AFTER_S = 6.0  # start worker processes only when the rest would take longer than this serially
_PROGRESS_AFTER_S = 2.0  # show a progress bar only when the rest would take longer than this


@dataclass
class DecodedSplit:
    """The images of a split that decode, uint8 [M, C, S, S], their labels (int64 [M]), and the files skipped."""

    images: Tensor
    labels: Tensor
    skipped: list[str]  # the undecodable files (paths, or "image <i>" for in-memory files), in split order


@dataclass
class DecodedFiles:
    """What :func:`decode_files` made of a list of files: the images that decode, uint8 [M, C, S, S], their positions
    in the list, and for each position that does not decode why, on one line (e.g. "cannot identify image file")."""

    images: Tensor
    indices: list[int]
    errors: dict[int, str]


def decode_split(
    raw: RawSplit,
    size: int,
    in_chans: int,
    on_bad_file: OnBadFile = "error",
    decode: DecodeMethod = "full",
    *,
    workers: int | None = None,
    progress: bool | None = None,
) -> DecodedSplit:
    """The split's images as uint8 [N, in_chans, size, size], each fitted to ``size`` by :func:`fit`, and its labels.

    Grayscale becomes 3 equal channels for ``in_chans=3``; colour becomes luma (PIL's "L") for ``in_chans=1``;
    16-bit and 32-bit images are brought to 8 bits first (see :func:`_to_8bit`).

    on_bad_file: an image file that cannot be decoded is a :class:`DataError` naming it ("error"), or is dropped with
        its label and named in ``skipped`` ("skip"); a split none of whose files decode is an error either way.
    decode: how files are decoded (arrays are unaffected), see :func:`decode_file`: "full" (default; the pixels every
        registered dataset's results were measured on) or "draft" (camera photos: JPEGs decoded at reduced scale,
        EXIF orientation applied; several times faster on large JPEGs, slightly different pixels). A cache of decoded
        splits must key on it.
    workers: worker processes for long decodes (default: the CPUs this process may use). The first files are decoded
        in this process and timed; workers start only when the rest would take more than a few seconds. The pixels
        do not depend on it.
    progress: a progress bar (count, ETA) on stderr; None: when stderr is a terminal and the decode is long.
    """
    if on_bad_file not in ("error", "skip"):
        raise ConfigError(f"on_bad_file must be 'error' or 'skip', not {on_bad_file!r}")
    labels = torch.from_numpy(np.array(raw.labels, dtype=np.int64))
    if len(labels) != len(raw.images) or len(labels) == 0:
        raise DataError(f"the split has {len(raw.images)} images and {len(labels)} labels: re-prepare the dataset")
    if labels.min() < 0 or labels.max() >= len(raw.classes):
        raise DataError(
            f"the split's labels run from {int(labels.min())} to {int(labels.max())} but it has {len(raw.classes)} "
            "classes: re-prepare the dataset"
        )
    images, kept, skipped = _decode_all(raw.images, size, in_chans, on_bad_file, decode, workers, progress)
    if skipped:
        log.warning("skipped %d undecodable image files of %d, the first %s", len(skipped), len(labels), skipped[0])
    return DecodedSplit(images, labels if not skipped else labels[kept], skipped)


def decode_images(raw: RawSplit, size: int, in_chans: int, decode: DecodeMethod = "full") -> Tensor:
    """The split's images as uint8 [N, in_chans, size, size] (its labels unused): like :func:`decode_split`, where
    any bad file is an error."""
    return _decode_all(raw.images, size, in_chans, "error", decode, None, None)[0]


def decode_file(file: Path | bytes, size: int, in_chans: int, decode: DecodeMethod = "full", index: int = 0) -> Tensor:
    """One image file (a path or its bytes) as uint8 [in_chans, size, size], exactly as :func:`decode_split` decodes
    it; anything that goes wrong is a :class:`DataError` naming the file (bytes: "image <index>").

    decode: "full" decodes every pixel, then :func:`fit` resizes the shorter side to ``size`` and center-crops.
        "draft" is meant for camera photos: a JPEG whose shorter side is at least twice ``size`` is decoded at 1/2,
        1/4 or 1/8 scale in the DCT domain (Pillow's ``Image.draft``; the scale keeps both sides >= ``size``), the
        EXIF orientation is applied (a portrait photo stands upright), then :func:`fit` as above. Other formats and
        smaller JPEGs decode as "full" apart from the orientation.
    """
    _check_method(decode)
    try:
        return _decode_fitted(file, size, in_chans, decode)
    except Exception as err:  # PIL raises many types for damaged or hostile files (OSError, SyntaxError,
        # struct.error, DecompressionBombError, ...): all mean the file is not a usable image
        raise DataError(_cannot_decode(file, index, _describe(err))) from err


def decode_files(
    files: list[Path] | list[bytes],
    size: int,
    in_chans: int,
    decode: DecodeMethod = "full",
    *,
    workers: int | None = None,
    progress: bool | None = None,
    stop_at_error: bool = False,
) -> DecodedFiles:
    """Decode ``files`` with :func:`decode_file`, in worker processes when that pays (see :func:`decode_split`);
    a file that does not decode gets its reason in ``errors``. ``stop_at_error``: stop at the first such file (in
    list order), leaving the files after it undecoded."""
    _check_method(decode)
    out = torch.empty((len(files), in_chans, size, size), dtype=torch.uint8)
    done: list[int] = []
    errors: dict[int, str] = {}

    def take(index: int, result: np.ndarray | str) -> None:
        if isinstance(result, str):
            errors[index] = result
        else:
            out[index] = torch.from_numpy(result)
            done.append(index)

    started = time.perf_counter()
    jobs = list(enumerate(files))
    probe, rest = jobs[:_PROBE_FILES], jobs[_PROBE_FILES:]
    with _torch_threads(1):  # one image at a time: several threads only wait for each other (10x on a busy CPU)
        for index, result in _decode_chunk(probe, size, in_chans, decode, stop_at_error):
            take(index, result)
        per_file = (time.perf_counter() - started) / max(len(probe), 1)
        workers = _usable_cpus() if workers is None else max(int(workers), 1)
        use_pool = workers > 1 and per_file * len(rest) > _POOL_AFTER_S
        show = _PROGRESS_AFTER_S < per_file * len(rest) / (workers if use_pool else 1)
        show = progress if progress is not None else show and _stderr_is_terminal()
        with _DecodeProgress(len(files), len(probe), show) as bar:
            if rest and not (stop_at_error and errors):
                work = partial(_decode_chunk, size=size, in_chans=in_chans, decode=decode, stop_at_error=stop_at_error)
                _decode_rest(rest, work, workers if use_pool else 1, per_file, take, bar.advance, stop_at_error)
    log.info("decoded %d image files in %.1f s (%s)", len(files), time.perf_counter() - started, decode)
    done.sort()
    images = out if len(done) == len(files) else out[done]
    return DecodedFiles(images, done, errors)


def _decode_all(
    files: np.ndarray | list[Path] | list[bytes],
    size: int,
    in_chans: int,
    on_bad_file: OnBadFile,
    decode: DecodeMethod,
    workers: int | None,
    progress: bool | None,
) -> tuple[Tensor, list[int], list[str]]:
    """The images that decode, the indices they have in ``files``, and the names of the files skipped."""
    if len(files) == 0:
        raise DataError("the split holds no images: re-prepare the dataset")
    if isinstance(files, np.ndarray):
        return _fit_array(files, size, in_chans), list(range(len(files))), []
    decoded = decode_files(
        files, size, in_chans, decode, workers=workers, progress=progress, stop_at_error=on_bad_file == "error"
    )
    if decoded.errors and on_bad_file == "error":
        first = min(decoded.errors)
        raise DataError(_cannot_decode(files[first], first, decoded.errors[first]))
    skipped = [str(_name(files[i], i)) for i in sorted(decoded.errors)]
    if not decoded.indices:
        raise DataError(f"none of the split's {len(files)} image files decode (one: {skipped[0]}): re-prepare it")
    return decoded.images, decoded.indices, skipped


def _decode_chunk(
    chunk: list[tuple[int, Path | bytes]], size: int, in_chans: int, decode: DecodeMethod, stop_at_error: bool
) -> list[tuple[int, np.ndarray | str]]:
    """Decode ``(index, file)`` pairs: each gives its pixels (uint8 [C, S, S]) or why it does not decode. Runs in
    worker processes too, so it returns numpy arrays and strings, which travel back cheaply."""
    results: list[tuple[int, np.ndarray | str]] = []
    for index, file in chunk:
        try:
            results.append((index, _decode_fitted(file, size, in_chans, decode).numpy()))
        except Exception as err:  # any failure means the file is not a usable image (see decode_file)
            results.append((index, _describe(err)))
            if stop_at_error:
                break
    return results


def _decode_rest(
    jobs: list[tuple[int, Path | bytes]],
    work: Callable[[list[tuple[int, Path | bytes]]], list[tuple[int, np.ndarray | str]]],
    workers: int,
    per_file: float,
    take: Callable[[int, np.ndarray | str], None],
    advance: Callable[[int], None],
    stop_at_error: bool,
) -> None:
    """Run ``work`` (:func:`_decode_chunk`) on chunks of ``jobs`` of about half a second each, here (``workers`` 1)
    or in a pool of worker processes. Results are taken in list order, so with ``stop_at_error`` the first bad file
    in the list stops the decode."""
    per_chunk = max(1, min(round(0.5 / max(per_file, 1e-6)), math.ceil(len(jobs) / (4 * workers))))
    chunks = [jobs[start : start + per_chunk] for start in range(0, len(jobs), per_chunk)]

    def consume(results: Iterable[list[tuple[int, np.ndarray | str]]]) -> bool:
        for chunk in results:
            for index, result in chunk:
                take(index, result)
            advance(len(chunk))
            if stop_at_error and any(isinstance(result, str) for _, result in chunk):
                return False
        return True

    if workers == 1:
        consume(map(work, chunks))
        return
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork() beside threads; see _pool_context
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker) as pool:
            try:
                if not consume(pool.map(work, chunks)):
                    pool.shutdown(wait=True, cancel_futures=True)
            except BrokenProcessPool:
                raise DataError(
                    "a worker process decoding the images stopped unexpectedly (out of memory?): free memory and "
                    "try again"
                ) from None
            except BaseException:  # Ctrl-C or SIGTERM: stop after the chunks in progress, not after all the others
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _pool_context() -> multiprocessing.context.BaseContext:
    """Fork on Linux (workers start in milliseconds, as PyTorch's DataLoader workers do; they only run Pillow and
    single-threaded torch, see :func:`_init_worker`), the platform's default (spawn) elsewhere."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _init_worker() -> None:
    """One torch thread per worker: the workers are the parallelism, and OpenMP must not be entered after a fork."""
    torch.set_num_threads(1)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block (the pixels do not depend on it), then restored."""
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


class _DecodeProgress:
    """A rich progress bar on stderr (count, elapsed, ETA) for the decode in progress, or nothing.

    It refreshes only when a chunk of images is done (no refresh thread), so that no lock is held by another thread
    when worker processes are forked.
    """

    def __init__(self, total: int, completed: int, show: bool):
        self.bar = None
        if show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("decoding images"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                auto_refresh=False,
                transient=True,
            )
            self.task = self.bar.add_task("decode", total=total, completed=completed)

    def __enter__(self) -> _DecodeProgress:
        if self.bar is not None:
            self.bar.start()
            self.bar.refresh()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, count)
            self.bar.refresh()


def _fit_array(images: np.ndarray, size: int, in_chans: int) -> Tensor:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) or 0 in images.shape:
        raise DataError(
            f"the split's pixels are {images.dtype} {list(images.shape)}, expected uint8 [N, 1 or 3, H, W]: "
            "re-prepare the dataset"
        )
    images = _match_channels(torch.from_numpy(np.ascontiguousarray(images)), in_chans)
    return torch.cat([fit(chunk, size) for chunk in images.split(1024)])


def _name(file: Path | bytes, index: int) -> Path | str:
    return file if isinstance(file, Path) else f"image {index}"


def _check_method(decode: str) -> None:
    if decode not in ("full", "draft"):
        raise ConfigError(f"decode must be 'full' or 'draft', not {decode!r}")


def _cannot_decode(file: Path | bytes, index: int, reason: str) -> str:
    return f"cannot decode {_name(file, index)} ({reason}): remove the file or re-prepare the dataset"


def _decode_fitted(file: Path | bytes, size: int, in_chans: int, decode: DecodeMethod) -> Tensor:
    """:func:`decode_file` without the error translation: PIL's and numpy's own exceptions propagate."""
    pixels = _decode_pixels(file, "RGB" if in_chans == 3 else "L", size if decode == "draft" else None)
    return fit(pixels[None], size)[0]


def _decode_pixels(file: Path | bytes, mode: str, draft_size: int | None = None) -> Tensor:
    """One image file as uint8 [C, H, W] in PIL ``mode`` ("RGB" or "L").

    ``draft_size``: decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= it, and apply
    the EXIF orientation (the "draft" method of :func:`decode_file`).
    """
    source = _open_regular(file) if isinstance(file, Path) else io.BytesIO(file)
    with source, Image.open(source) as image:
        if draft_size is not None:
            image.draft(None, (draft_size, draft_size))  # no-op for formats other than JPEG
            image = ImageOps.exif_transpose(image)
        pixels = np.array(_to_8bit(image).convert(mode))
    if pixels.size == 0:
        raise ValueError("the image has no pixels")
    return torch.from_numpy(np.atleast_3d(pixels)).permute(2, 0, 1)


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading; anything but a regular file is refused as not an image. Opening a named pipe
    would wait for a writer forever, and a device can be read without end: the open does not wait (the flag has no
    effect on regular files) and the check runs on what was opened."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kinds = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}
            raise ValueError(f"{kinds.get(stat.S_IFMT(mode), 'a device')}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with its single high-bit-depth channel brought to 8 bits ("L"); other modes are returned as they are.

    PIL's own ``convert`` clips such images at 255, so most of a 16-bit image would come out white. The rules:

    - 16-bit ("I;16", "I;16B", ...): ``round(v / 257)``, i.e. ``(v + 128) // 257``: the nearest 8-bit value, 0 -> 0,
      65535 -> 255, and an 8-bit image stored as 16 bits (``v * 257``) comes back exactly.
    - 32-bit integer ("I"): the same when all values lie in 0..65535 (PIL opens some 16-bit files as "I");
      otherwise the image's own range min..max is stretched linearly to 0..255.
    - float ("F"): ``round(v * 255)`` when all values lie in [0, 1]; otherwise min..max stretched to 0..255. An image
      with NaN or infinite values cannot be decoded.

    A constant image outside those ranges becomes 0.
    """
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image)
    if not np.isfinite(values).all():
        raise ValueError("pixel values that are NaN or infinite")
    low, high = values.min(), values.max()
    if image.mode != "F" and low >= 0 and high <= 65535:
        pixels = (values.astype(np.int64) + 128) // 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        pixels = np.rint(values.astype(np.float64) * 255)
    elif high > low:
        pixels = np.rint((values.astype(np.float64) - low) * (255 / (float(high) - float(low))))
    else:
        pixels = np.zeros(values.shape)
    return Image.fromarray(pixels.astype(np.uint8))  # 2-D uint8: mode "L"


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
