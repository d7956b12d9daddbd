"""First load of big photos: 2040 JPEGs of 4000x3000 decoded to 224 px, the new path against today's.

The photos are synthetic but compress like camera photos (smooth colour fields, blobs and sensor-like noise, JPEG
quality 90, about 3.3 MB each): ``--bases`` distinct pictures are drawn, and every file is one of them mirrored and
brightened by its own amount, so that no two files are the same bytes. They are written once into ``--cache`` (about
7 GB for 2040 files) and reused by later runs.

Variants, each ``decode_split`` of the same files to 224 px, RGB:

- ``old``: the decoder before this change, as it was (:func:`old_path`): one process, torch's default threads,
  every pixel decoded, then resized; timed on ``--subset`` files only, as it takes about half a second per photo;
- ``full-2w``: the same pixels through ``decode_split``, which starts 2 worker processes for a decode this long
  (what ``smallvit train`` gets);
- ``draft-1w``: reduced-scale JPEG decoding (Pillow ``draft``) in one process;
- ``draft-2w``: reduced-scale decoding with 2 worker processes (what ``smallvit fit`` asks for), on all ``--count``
  files: the headline seconds. (On the subset it would take too little time for ``decode_split`` to start workers.)

The first three are timed in turn on the subset (interleaved, ``--repeats`` rounds, median); every ratio is a rate
against the old path's rate on the subset. Wall-clock seconds depend on what
else the machine runs (the load average is recorded); CPU seconds per image (this process and its workers) much less.

    PYTHONPATH=src python benchmarks/bench_decode.py
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from common import record
from PIL import Image, ImageChops, ImageFilter

from smallvit.data.formats import RawSplit, decode_file, decode_split


def base_photo(seed: int, width: int, height: int) -> Image.Image:
    """A photo-like picture: a smooth colour field, softer blobs on it, and fine noise as a sensor leaves."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), np.uint8)).resize((width, height), Image.BICUBIC)
    blobs = Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).resize((width, height), Image.BICUBIC)
    picture = Image.blend(field, blobs.filter(ImageFilter.GaussianBlur(8)), 0.35)
    noise = Image.effect_noise((width, height), 6).convert("RGB")
    return ImageChops.add(picture, noise, scale=1.0, offset=-128)


def write_photos(job: tuple[int, list[int], str, int, int, int]) -> int:
    """Write files ``indices`` from base picture ``base``: mirrored on odd indices, brightened by ``index % 17``."""
    base, indices, folder, width, height, quality = job
    picture = base_photo(base, width, height)
    for index in indices:
        path = Path(folder) / f"photo_{index:05d}.jpg"
        if path.is_file():
            continue
        variant = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if index % 2 else picture
        variant = variant.point(lambda value, shift=index % 17: min(255, value + shift))
        tmp = path.with_suffix(".tmp")
        variant.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
    return len(indices)


def photos(folder: Path, count: int, bases: int, width: int, height: int, quality: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"photo_{index:05d}.jpg" for index in range(count)]
    missing = [i for i, path in enumerate(files) if not path.is_file()]
    if missing:
        print(f"writing {len(missing)} photos of {width}x{height} into {folder} (once; later runs reuse them)")
        started = time.perf_counter()
        jobs = [
            (base, [i for i in missing if i % bases == base], str(folder), width, height, quality)
            for base in range(bases)
        ]
        with ProcessPoolExecutor(2) as pool:
            written = sum(pool.map(write_photos, [job for job in jobs if job[1]]))
        print(f"wrote {written} photos in {time.perf_counter() - started:.0f} s")
    return files


def old_path(files: list[Path], size: int) -> torch.Tensor:
    """The decode loop of commit 2fe23f3 (``formats._decode_all``): one file after the other, torch's own threads."""
    return torch.stack([decode_file(path, size, 3) for path in files])


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(files: list[Path], size: int, decode: str, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of decoding ``files``."""
    raw = RawSplit(files, np.zeros(len(files), np.int64), ["photo"])
    cpu, started = cpu_seconds(), time.perf_counter()
    if decode == "old":
        images = old_path(files, size)
    else:
        images = decode_split(raw, size, 3, decode=decode, workers=workers, progress=False).images
    wall = time.perf_counter() - started
    assert images.shape == (len(files), 3, size, size)
    return wall, cpu_seconds() - cpu


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").is_file() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2040)
    parser.add_argument("--subset", type=int, default=48, help="files every variant decodes, for the ratios")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--bases", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "smallvit-bench-decode", help="photo folder"
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--no-record", action="store_true", help="print only (a smoke run)")
    args = parser.parse_args()

    folder = args.cache / f"{args.width}x{args.height}-q{args.quality}-b{args.bases}"
    files = photos(folder, args.count, args.bases, args.width, args.height, args.quality)
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    print(f"{len(files)} files, {megabytes / len(files):.2f} MB each on average; load average {load_average()}")

    subset = files[:: max(1, len(files) // args.subset)][: args.subset]
    variants = {"old": ("old", 1), "full-2w": ("full", args.workers), "draft-1w": ("draft", 1)}
    for path in subset:  # read every file once, so that no variant pays for the disk
        path.read_bytes()
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (decode, workers) in variants.items():
            wall, cpu = timed(subset, args.size, decode, workers)
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(f"  {name:9s} {len(subset) / wall:7.1f} img/s  {1000 * cpu / len(subset):6.1f} ms CPU/img")
    rate = {name: len(subset) / statistics.median(values) for name, values in walls.items()}
    cpu_ms = {name: 1000 * statistics.median(values) / len(subset) for name, values in cpus.items()}

    load_before = load_average()
    for path in files:  # read every file once, as for the subset
        path.read_bytes()
    wall, cpu = timed(files, args.size, "draft", args.workers)
    load_after = load_average()
    rate["draft-2w"] = len(files) / wall
    cpu_ms["draft-2w"] = 1000 * cpu / len(files)
    old_estimate = len(files) / rate["old"]
    print(f"\n{len(files)} photos of {args.width}x{args.height} to {args.size} px, draft, {args.workers} workers:")
    print(f"  {wall:.1f} s ({rate['draft-2w']:.1f} img/s, {cpu_ms['draft-2w']:.1f} ms CPU/img)")
    print(f"  the old path at its measured rate: {old_estimate:.0f} s ({rate['old']:.2f} img/s)")
    print(
        f"  ratio to the old path: draft-2w {rate['draft-2w'] / rate['old']:.1f}x, draft-1w "
        f"{rate['draft-1w'] / rate['old']:.1f}x, full-2w {rate['full-2w'] / rate['old']:.2f}x"
    )
    print(f"  load average: {load_before} before, {load_after} after (1, 5, 15 min)")
    if args.no_record:
        return
    record(
        "decode",
        {
            "files": len(files),
            "photo": f"{args.width}x{args.height} JPEG q{args.quality}, {megabytes / len(files):.2f} MB avg",
            "size": args.size,
            "workers": args.workers,
            "seconds_all_draft_2w": round(wall, 1),
            "old_path_seconds_estimated": round(old_estimate),
            "subset": len(subset),
            "repeats": args.repeats,
            "img_s": {name: round(value, 2) for name, value in rate.items()},
            "cpu_ms_per_img": {name: round(value, 1) for name, value in cpu_ms.items()},
            "ratio_vs_old": {name: round(value / rate["old"], 2) for name, value in rate.items()},
            "load_average": {"before": load_before, "after": load_after},
            "note": args.note,
        },
    )


if __name__ == "__main__":
    main()
