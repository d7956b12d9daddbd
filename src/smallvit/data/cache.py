"""Decoded-split cache: each split is decoded once and saved as uint8 tensors, so later loads only read one file."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$SMALLVIT_CACHE``, else ``~/.cache/smallvit/cache``."""
    return Path(os.environ.get("SMALLVIT_CACHE") or Path.home() / ".cache/smallvit/cache").expanduser()


def cached(key: str, build: Callable[[], dict]) -> dict:
    """Load ``<cache_dir>/<key>.pt``, or call ``build()`` and save its result there (atomically).

    ``key`` must name everything the result depends on. A cache file that cannot be read is rebuilt.
    """
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:  # whatever a damaged file raises, the fix is to rebuild it
            log.warning("rebuilding unreadable cache file %s (%s)", path, err)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value
