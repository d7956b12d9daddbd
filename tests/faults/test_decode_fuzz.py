"""Fuzzing the image decoder: whatever bytes or arrays come in (random, truncated or mutated real image files, arrays
of any shape and dtype), :func:`decode_split` / :func:`decode_images` either return well-formed uint8 images or raise
:class:`DataError`, never anything else.

The fast test runs 200 fixed cases (derandomized, so CI is reproducible); the ``fuzz`` one runs 10,000 fresh ones:
``pytest -m fuzz tests/faults``.
"""

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image

from smallvit.data.formats import RawSplit, decode_images, decode_split
from smallvit.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # PIL on broken files


def encode(array: np.ndarray, format: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=format, **options)
    return out.getvalue()


def seed_files() -> list[bytes]:
    """Small real files in the formats and modes the decoder meets, to truncate and mutate."""
    rng = np.random.default_rng(0)
    rgb, gray = rng.integers(0, 256, (12, 10, 3), np.uint8), rng.integers(0, 256, (9, 12), np.uint8)
    deep = rng.integers(0, 65536, (8, 8)).astype(np.uint16)
    return [
        encode(rgb, "PNG"),
        encode(gray, "PNG"),
        encode(deep, "PNG"),  # 16-bit
        encode(rgb, "JPEG", quality=75),
        encode(gray, "JPEG", progressive=True),
        encode(rgb, "GIF"),
        encode(rgb, "BMP"),
        encode(rgb, "TIFF"),
        encode(deep.astype(np.int32) * 3 - 5000, "TIFF"),  # 32-bit integer
        encode(rng.random((6, 7)).astype(np.float32), "TIFF"),  # float
        encode(rgb, "WEBP"),
        encode(rgb, "PPM"),
    ]


SEEDS = seed_files()


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out)


real = st.sampled_from(SEEDS)
truncated = st.builds(lambda data, cut: data[:cut], real, st.integers(0, max(map(len, SEEDS))))
mutated = st.builds(mutate, real, st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8))


def random_image(height: int, width: int, channels: int, format: str) -> bytes:
    shape = (height, width, 3) if channels == 3 else (height, width)
    return encode(np.random.default_rng(height * width).integers(0, 256, shape, np.uint8), format)


random_sized = st.builds(
    random_image,
    st.integers(1, 70),
    st.integers(1, 70),
    st.sampled_from([1, 3]),
    st.sampled_from(["PNG", "JPEG", "BMP", "GIF"]),
)
files = st.one_of(st.binary(max_size=1024), truncated, mutated, random_sized)
file_splits = st.lists(files, min_size=1, max_size=4).map(lambda fs: RawSplit(fs, np.zeros(len(fs), np.int64), ["x"]))
any_array = arrays(
    st.sampled_from([np.uint8, np.int64, np.float32, np.bool_]), array_shapes(min_dims=1, max_dims=5, min_side=0)
)
image_like_array = arrays(
    np.uint8, st.tuples(st.integers(1, 3), st.sampled_from([1, 3]), st.integers(1, 40), st.integers(1, 40))
)
array_splits = st.one_of(any_array, image_like_array).map(lambda a: RawSplit(a, np.zeros(len(a), np.int64), ["x"]))
splits = st.one_of(file_splits, array_splits)


def decodes_or_raises_data_error(raw: RawSplit, size: int, in_chans: int, on_bad_file: str) -> None:
    try:
        if on_bad_file == "error":
            images, skipped = decode_images(raw, size, in_chans), []
        else:
            decoded = decode_split(raw, size, in_chans, on_bad_file)
            images, skipped = decoded.images, decoded.skipped
            assert len(decoded.labels) == len(images)
    except DataError as err:
        assert "\n" not in str(err)
        return
    assert images.dtype == torch.uint8 and images.shape == (len(raw.images) - len(skipped), in_chans, size, size)


CASES = {
    "raw": splits,
    "size": st.sampled_from([4, 8, 16]),
    "in_chans": st.sampled_from([1, 3]),
    "on_bad_file": st.sampled_from(["error", "skip"]),
}
COMMON = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=200, derandomize=True, **COMMON)
@given(**CASES)
def test_the_decoder_raises_only_data_error(raw, size, in_chans, on_bad_file):
    decodes_or_raises_data_error(raw, size, in_chans, on_bad_file)


@pytest.mark.fuzz
@settings(max_examples=10_000, **COMMON)
@given(**CASES)
def test_the_decoder_raises_only_data_error_10000_cases(raw, size, in_chans, on_bad_file):
    decodes_or_raises_data_error(raw, size, in_chans, on_bad_file)


def test_every_seed_file_decodes():
    """The seeds are real images, so truncating and mutating them reaches deep into each format's decoder."""
    for data in SEEDS:
        assert decode_images(RawSplit([data], np.zeros(1), ["x"]), 8, 3).shape == (1, 3, 8, 8)
