"""Build the bundled ``cifar10-sample`` from the shared CIFAR-10 JPEG archive.

    python scripts/build_sample.py path/to/cifar10-jpeg.tar.gz

Takes the first 204 training and 200 test files of every class (``0000.jpg`` onwards; CIFAR-10's order is random,
so these are a random sample), keeps their JPEG bytes unchanged, and writes
``src/smallvit/data/sample/cifar10_sample.npz`` plus its recorded sha256. The output is byte-for-byte reproducible.
"""

import argparse
import tarfile
from pathlib import Path

from smallvit.data.sample import PER_CLASS, SAMPLE_FILE, write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="cifar10-jpeg.tar.gz (layout cifar10-jpeg/<split>/<class>/NNNN.jpg)")
    parser.add_argument("--out", type=Path, default=SAMPLE_FILE)
    args = parser.parse_args()

    chosen = {}  # (split, class, file name) -> JPEG bytes
    with tarfile.open(args.archive) as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10-jpeg, split, class, NNNN.jpg
            if member.isfile() and len(parts) == 4 and int(Path(parts[3]).stem) < PER_CLASS[parts[1]]:
                chosen[parts[1:]] = archive.extractfile(member).read()

    classes = sorted({name for _, name, _ in chosen})
    splits = {}
    for split in PER_CLASS:
        keys = sorted(k for k in chosen if k[0] == split)  # by class (alphabetical = CIFAR-10 id), then file name
        splits[split] = ([chosen[k] for k in keys], [classes.index(k[1]) for k in keys])
        print(f"{split}: {len(keys)} images")
    sha256 = write_sample(args.out, splits, classes)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes), sha256 {sha256}")


if __name__ == "__main__":
    main()
