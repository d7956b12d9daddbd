"""The folder ``smallvit fit`` reads: its layout, classes, image counts, sizes, modes and unreadable files."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from smallvit.data import split_validation
from smallvit.data.formats import IMAGE_SUFFIXES
from smallvit.errors import DataError


@dataclass
class FolderSummary:
    """What :func:`scan_folder` found. ``counts[split][class]`` counts readable images; ``flat`` folders (no split
    folders) have one split, ``all``."""

    folder: Path
    flat: bool
    classes: list[str]
    counts: dict[str, dict[str, int]]
    sizes: list[tuple[int, int]]  # (width, height) of every readable image
    modes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def total(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def carves_val(self) -> bool:
        """Split folders without ``val/``: validation is held out of ``train/`` (``data.val_split=none``)."""
        return not self.flat and "val" not in self.counts

    def train_count(self, val_fraction: float = 0.1) -> int:
        """Training images after the validation split is held out (flat folders and split folders without ``val/``:
        ``val_fraction`` of each class, as the imagefolder dataset and the engine hold it out)."""
        if self.flat:
            return sum(n - round(val_fraction * n) for n in self.counts["all"].values())
        train = self.counts.get("train", {})
        if self.carves_val:
            labels = torch.repeat_interleave(torch.arange(len(train)), torch.tensor(list(train.values())))
            return len(split_validation(labels, val_fraction)[0])
        return sum(train.values())

    @property
    def short_sides(self) -> list[int]:
        return [min(size) for size in self.sizes]

    @property
    def median_side(self) -> float | None:
        return statistics.median(self.short_sides) if self.sizes else None

    def balanced(self, split: str) -> bool:
        """Whether every class of ``split`` has as many images as the others."""
        return len(set(self.counts.get(split, {}).values())) <= 1

    def to_json(self) -> dict:
        sides = self.short_sides
        return {
            "folder": str(self.folder),
            "layout": "FOLDER/<class>/<image>" if self.flat else "FOLDER/<split>/<class>/<image>",
            "classes": self.classes,
            "counts": self.counts,
            "images": self.total,
            "shorter_side": distribution(sides),
            "modes": dict(self.modes),
            "formats": dict(self.formats),
            "unreadable": [{"path": path, "why": why} for path, why in self.unreadable],
        }


def distribution(values: list[int]) -> dict:
    """``{"min", "median", "max"}`` of ``values`` (empty: ``{}``)."""
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(folder: Path) -> FolderSummary:
    """Read every image's header in ``FOLDER/<class>/<image>`` or ``FOLDER/{train,val,test}/<class>/<image>`` (the
    layouts of the ``imagefolder`` dataset): sizes, modes, formats, and the files that cannot be opened. Nothing is
    decoded; a file whose header reads but whose pixels are damaged is found while decoding."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give FOLDER holding FOLDER/<class>/<image>")
    subdirs = _class_folders(folder)
    flat = any(_image_files(d) for d in subdirs)
    if flat:
        splits = {"all": subdirs}
    else:
        known = [d for d in subdirs if d.name in ("train", "val", "test")]
        if not any(d.name == "train" for d in known):
            found = ", ".join(d.name for d in subdirs) or "nothing"
            raise DataError(
                f"{folder} holds no class folders with images (found: {found}): expected FOLDER/<class>/<image> "
                "or FOLDER/train/<class>/<image>"
            )
        splits = {
            d.name: _class_folders(d) for d in sorted(known, key=lambda d: ("train", "val", "test").index(d.name))
        }
    summary = FolderSummary(folder, flat, [], {}, [])
    classes = set()
    for split, class_dirs in splits.items():
        summary.counts[split] = {}
        for class_dir in class_dirs:
            readable = 0
            for path in _image_files(class_dir):
                try:
                    with Image.open(path) as image:
                        summary.sizes.append(image.size)
                        summary.modes[image.mode] += 1
                        summary.formats[image.format or "?"] += 1
                        readable += 1
                except Exception as err:  # a header PIL cannot read: not an image, truncated, hostile
                    summary.unreadable.append((str(path), " ".join(str(err).split()) or type(err).__name__))
            summary.counts[split][class_dir.name] = readable
            classes.add(class_dir.name)
    summary.classes = sorted(classes)
    for per_class in summary.counts.values():
        for name in summary.classes:
            per_class.setdefault(name, 0)
    if summary.total == 0:
        raise DataError(f"{folder} holds no readable image: add images in FOLDER/<class>/<image>")
    return summary


def check_folder(summary: FolderSummary, on_bad_file: str) -> None:
    """Stop on an unreadable file (unless ``on_bad_file`` is skip) or on a class without a training image."""
    if summary.unreadable and on_bad_file == "error":
        path, why = summary.unreadable[0]
        raise DataError(
            f"{len(summary.unreadable)} unreadable image file(s) in {summary.folder}, the first {path} ({why}): "
            "remove them, or pass --on-bad-file skip to leave them out"
        )
    empty = [name for name, n in (summary.counts.get("train") or summary.counts["all"]).items() if n == 0]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no readable training image in {summary.folder}: add images or remove it"
        )
