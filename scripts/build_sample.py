"""Build the bundled ``cifar10-sample`` from the shared CIFAR-10 JPEG archive.

    python scripts/build_sample.py ../shared/data/cifar10-jpeg.tar.gz

Takes, per class, training files ``0000``-``0203`` (train), ``0204``-``0253`` (val) and test files ``0000``-``0199``
(test); CIFAR-10's order is random, so these are random samples, and val shares no image with train. Keeps their
JPEG bytes unchanged and writes ``src/smallvit/data/sample/cifar10_sample.npz`` plus its recorded sha256. The output
is byte-for-byte reproducible.
"""

import argparse
import tarfile
from pathlib import Path

from smallvit.data.sample import ARCHIVE_START, PER_CLASS, SAMPLE_FILE, write_sample


def sample_split(folder: str, number: int) -> str | None:
    """The sample split that takes file ``number`` of the archive's ``folder`` (train or test), if any."""
    for split, (source, start) in ARCHIVE_START.items():
        if source == folder and start <= number < start + PER_CLASS[split]:
            return split
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="cifar10-jpeg.tar.gz (layout cifar10-jpeg/<split>/<class>/NNNN.jpg)")
    parser.add_argument("--out", type=Path, default=SAMPLE_FILE)
    args = parser.parse_args()

    chosen = {}  # (sample split, class, file name) -> JPEG bytes
    with tarfile.open(args.archive) as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10-jpeg, split, class, NNNN.jpg
            if member.isfile() and len(parts) == 4 and (split := sample_split(parts[1], int(Path(parts[3]).stem))):
                chosen[split, parts[2], parts[3]] = archive.extractfile(member).read()

    classes = sorted({name for _, name, _ in chosen})
    splits = {}
    for split in PER_CLASS:
        keys = sorted(k for k in chosen if k[0] == split)  # by class (alphabetical = CIFAR-10 id), then file name
        if len(keys) != PER_CLASS[split] * len(classes):
            raise SystemExit(f"{args.archive} gave {len(keys)} {split} images, not {PER_CLASS[split]} per class")
        splits[split] = ([chosen[k] for k in keys], [classes.index(k[1]) for k in keys])
        print(f"{split}: {len(keys)} images")
    sha256 = write_sample(args.out, splits, classes)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes), sha256 {sha256}")


if __name__ == "__main__":
    main()
