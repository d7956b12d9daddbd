"""The fast decode path gives the right pixels: worker processes decode exactly what one process does, the bundled
sample decodes exactly as before, and the "draft" method (reduced-scale JPEG decoding, EXIF orientation) stays close
to a full decode while being its own method."""

import hashlib
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

import smallvit.data.formats as formats
from smallvit.data import sample
from smallvit.data.formats import RawSplit, decode_file, decode_files, decode_images, decode_split, fit
from smallvit.errors import ConfigError, DataError

# sha256 of the decoded pixels, computed with the decoder of commit 2fe23f3 (before the parallel path existed), so the
# bundled sample and every result measured on it reproduce exactly.
SAMPLE_DIGESTS = {
    ("train", 32, 3): "cc3c0122768cdc9d",
    ("val", 32, 3): "2c00a7153f535005",
    ("test", 32, 3): "227a7cdd023f47a5",
    ("train", 16, 3): "21358f5b0eb07b87",
    ("train", 32, 1): "5c10f468545c3d0f",
}


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a little noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255], axis=-1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.fixture
def force_pool(monkeypatch):
    """Make decode_files start worker processes after 2 files, whatever the files cost."""
    monkeypatch.setattr(formats, "_PROBE_FILES", 2)
    monkeypatch.setattr(formats, "_POOL_AFTER_S", 0.0)


@pytest.mark.parametrize(("split", "size", "in_chans"), list(SAMPLE_DIGESTS))
def test_the_bundled_sample_decodes_exactly_as_before(split, size, in_chans):
    raw = sample.read_sample(sample.SAMPLE_FILE.parent, split)
    images = decode_split(raw, size, in_chans).images
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16] == SAMPLE_DIGESTS[split, size, in_chans]


def test_worker_processes_decode_exactly_what_one_process_does(force_pool):
    files = [encode(photo(40 + 7 * i, 30 + 5 * i, seed=i), "JPEG" if i % 2 else "PNG") for i in range(12)]
    raw = RawSplit(files, np.arange(12) % 3, ["a", "b", "c"])
    serial = decode_split(raw, 24, 3, workers=1)
    parallel = decode_split(raw, 24, 3, workers=2)
    assert torch.equal(serial.images, parallel.images) and torch.equal(serial.labels, parallel.labels)
    assert parallel.images.shape == (12, 3, 24, 24) and parallel.images.is_contiguous()


def test_full_decoding_is_pil_then_fit(tmp_path):
    """The "full" method: PIL's pixels in the run's mode, then the shorter side resized and center-cropped."""
    array = photo(90, 60)
    for mode, in_chans in (("RGB", 3), ("L", 1)):
        reference = torch.from_numpy(np.atleast_3d(np.array(Image.fromarray(array).convert(mode)))).permute(2, 0, 1)
        expected = fit(reference[None], 32)[0]
        assert torch.equal(decode_file(encode(array, "PNG"), 32, in_chans), expected)


def test_bad_files_in_worker_processes_are_skipped_or_named_as_in_one_process(force_pool):
    good = [encode(photo(20, 20, seed=i), "PNG") for i in range(8)]
    files = [good[0], b"junk", *good[1:5], b"", *good[5:]]
    raw = RawSplit(files, np.arange(len(files)) % 2, ["a", "b"])
    serial = decode_split(raw, 8, 3, "skip", workers=1)
    parallel = decode_split(raw, 8, 3, "skip", workers=2)
    assert parallel.skipped == serial.skipped == ["image 1", "image 6"]
    assert torch.equal(parallel.images, serial.images) and torch.equal(parallel.labels, serial.labels)
    with pytest.raises(DataError, match=r"cannot decode image 1 \(.*\): remove the file or re-prepare"):
        decode_split(raw, 8, 3, "error", workers=2)
    decoded = decode_files(files, 8, 3, workers=2)
    assert decoded.indices == [0, 2, 3, 4, 5, 7, 8, 9] and sorted(decoded.errors) == [1, 6]
    assert "cannot identify image file" in decoded.errors[1] and "\n" not in decoded.errors[6]


def test_the_first_bad_file_in_list_order_is_the_one_named(force_pool):
    files = [encode(photo(20, 20), "PNG")] * 6 + [b"first bad"] + [encode(photo(20, 20), "PNG")] * 6 + [b"later bad"]
    with pytest.raises(DataError, match="image 6"):
        decode_images(RawSplit(files, np.zeros(len(files)), ["a"]), 8, 3)


def test_draft_decodes_large_jpegs_at_reduced_scale_close_to_a_full_decode(monkeypatch):
    data = encode(photo(1600, 1200), quality=90)
    decoded_sizes = []
    original = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        result = original(self, mode, size)
        decoded_sizes.append(self.size)  # the size the file will be decoded at
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    full = decode_file(data, 64, 3, "full")
    assert decoded_sizes == []  # the full method decodes every pixel
    draft = decode_file(data, 64, 3, "draft")
    assert decoded_sizes == [(200, 150)]  # 1/8 scale: the smallest that keeps both sides >= 64
    difference = (draft.float() - full.float()).abs()
    assert draft.shape == full.shape == (3, 64, 64)
    assert 0 < difference.mean() < 3 and difference.max() < 40  # the same picture, not the same pixels


def test_draft_leaves_other_formats_and_small_jpegs_as_a_full_decode():
    png = encode(photo(300, 200), "PNG")
    assert torch.equal(decode_file(png, 32, 3, "draft"), decode_file(png, 32, 3, "full"))
    small = encode(photo(50, 40))  # shorter side below twice the target: no reduced scale exists
    assert torch.equal(decode_file(small, 32, 3, "draft"), decode_file(small, 32, 3, "full"))


def test_draft_applies_the_exif_orientation_and_full_keeps_ignoring_it():
    array = photo(64, 32)  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    data = encode(array, "PNG", exif=exif.tobytes())
    upright = Image.fromarray(array).transpose(Image.Transpose.ROTATE_270)  # what a viewer shows: portrait
    expected = fit(torch.from_numpy(np.array(upright)).permute(2, 0, 1)[None], 16)[0]
    assert torch.equal(decode_file(data, 16, 3, "draft"), expected)
    as_stored = fit(torch.from_numpy(array).permute(2, 0, 1)[None], 16)[0]
    assert torch.equal(decode_file(data, 16, 3, "full"), as_stored)


def test_a_progress_bar_can_be_forced_and_an_unknown_method_is_refused(force_pool):
    files = [encode(photo(20, 20, seed=i), "PNG") for i in range(5)]
    decoded = decode_files(files, 8, 3, workers=2, progress=True)
    assert decoded.indices == list(range(5)) and decoded.errors == {}
    with pytest.raises(ConfigError, match="decode must be 'full' or 'draft'"):
        decode_split(RawSplit(files, np.zeros(5), ["a"]), 8, 3, decode="fast")


def test_a_worker_process_that_dies_is_one_clear_line(force_pool, monkeypatch):
    real = formats._decode_fitted

    def dies_on_crash(file, size, in_chans, decode):
        if file == b"crash":
            os._exit(1)  # as the kernel's out-of-memory killer would end it
        return real(file, size, in_chans, decode)

    monkeypatch.setattr(formats, "_decode_fitted", dies_on_crash)  # the forked workers inherit it
    files = [encode(photo(20, 20, seed=i), "PNG") for i in range(6)] + [b"crash"]
    with pytest.raises(DataError, match="worker process decoding the images stopped unexpectedly"):
        decode_files(files, 8, 3, workers=2)
