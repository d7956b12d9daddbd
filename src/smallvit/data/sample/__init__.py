"""The bundled ``cifar10-sample``: a small real CIFAR-10 subset that ships inside the package.

Per class of the shared CIFAR-10 JPEG archive (``cifar10-jpeg/<split>/<class>/NNNN.jpg``, numbered in CIFAR-10's own
random order) it holds: ``train``, training files ``0000``-``0203`` (204); ``val``, training files ``0204``-``0253``
(50, so none is a ``train`` image); ``test``, test files ``0000``-``0199`` (200). They are the archive's original JPEG
bytes, so decoding them gives exactly the archive's pixels. ``scripts/build_sample.py`` builds it and records its
sha256 next to it; reading checks that sha256.

File layout (one ``.npz``): ``classes`` (class names, alphabetical = CIFAR-10 ids) and, per split, ``<split>_jpeg``
(all JPEG files concatenated, uint8), ``<split>_offsets`` (int64 [N + 1]; file ``i`` is
``jpeg[offsets[i]:offsets[i + 1]]``) and ``<split>_labels`` (int64 [N]). Images are ordered by class, then file name.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from smallvit.data.formats import RawSplit
from smallvit.errors import DataError

SAMPLE_FILE = Path(__file__).parent / "cifar10_sample.npz"
PER_CLASS = {"train": 204, "val": 50, "test": 200}
# split of the sample -> (split folder of the archive, number of the first file taken from each class)
ARCHIVE_START = {"train": ("train", 0), "val": ("train", PER_CLASS["train"]), "test": ("test", 0)}


def checksum_file(sample: Path) -> Path:
    """Where the sample's sha256 is recorded."""
    return sample.with_suffix(".sha256")


def verified_sha256(sample: Path) -> str:
    """The sample's sha256, after checking it against the one recorded when it was built."""
    try:
        actual = hashlib.sha256(sample.read_bytes()).hexdigest()
        recorded = checksum_file(sample).read_text().split()[0]
    except OSError as err:
        raise DataError(f"the bundled cifar10-sample is missing ({err.filename}): reinstall smallvit") from err
    if actual != recorded:
        raise DataError(f"the bundled cifar10-sample {sample} is corrupt (sha256 {actual}): reinstall smallvit")
    return actual


def read_sample(folder: Path, split: str) -> RawSplit:
    """One split of the sample file in ``folder``, as JPEG files."""
    with np.load(folder / SAMPLE_FILE.name) as arrays:
        jpeg, offsets = arrays[f"{split}_jpeg"].tobytes(), arrays[f"{split}_offsets"]
        files = [jpeg[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
        return RawSplit(files, arrays[f"{split}_labels"], arrays["classes"].tolist())


def write_sample(path: Path, splits: dict[str, tuple[list[bytes], list[int]]], classes: list[str]) -> str:
    """Write the sample file atomically and record its sha256; returns the sha256.

    ``splits`` maps a split name to its JPEG files and labels. The zip entries carry a fixed timestamp, so the same
    input gives the same bytes.
    """
    arrays = {"classes": np.array(classes)}
    for split, (files, labels) in splits.items():
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(files), np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(f) for f in files], dtype=np.int64)
        arrays[f"{split}_labels"] = np.array(labels, np.int64)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            entry = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    os.replace(tmp, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    checksum_file(path).write_text(f"{sha256}  {path.name}\n")
    return sha256
