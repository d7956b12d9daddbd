"""Checkpoints: one safetensors file each, written atomically, verified on load, holding everything a resume needs.

``last.safetensors`` holds the model (``model.*``), the EMA model (``ema.*``), the optimizer's tensors
(``optim.*``) and the RNG states (``rng.*``, ``gen.*``); its safetensors metadata carries the JSON state (epoch,
step, best metric, optimizer hyper-parameters) and a sha256 of every tensor, checked when it is read. A readable
copy of that JSON sits beside it. One file and one ``os.replace`` means a crash leaves either the old checkpoint or
the new one, never a mix (the new file reaches the disk before it replaces the old one, so a power cut does not
leave an empty file either); the checkpoint it replaces is kept as ``last.prev.safetensors``, so a ``last`` that is
damaged later (a bad disk, a truncated copy) still leaves one to resume from. Temporary files a killed writer left
are removed at the next write. :func:`write_text_atomic` gives the run's other files (``summary.json``...) the same
guarantee.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import torch
from rich.console import Console
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from smallvit.errors import SmallViTError


def _write_atomic(path: Path, write, keep_previous: Path | None = None) -> None:
    """Write through a temporary file and one ``os.replace``; with ``keep_previous``, the file being replaced is first
    hard-linked there, so at every instant both ``path`` and the previous version are complete files. A failed write
    (a full disk, no permission) removes its temporary file and is one :class:`SmallViTError` line."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    link = keep_previous.with_name(f".{keep_previous.name}.tmp-{os.getpid()}") if keep_previous else None
    existed = path.is_file()
    try:
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if link is not None and existed:
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, keep_previous)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        for leftover in (tmp, link):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        raise SmallViTError(_write_failure(path, err, existed)) from None


def _write_failure(path: Path, err: OSError | SafetensorError, existed: bool) -> str:
    """What went wrong writing ``path`` (safetensors reports the OS error inside its own message), the fix, and what
    is left of the file it was replacing."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None and (found := re.search(r"os error (\d+)", str(err))):
        code = int(found.group(1))
    reason = os.strerror(code) if code else " ".join(str(err).split()) or type(err).__name__
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable"
    else:
        fix = "fix the cause"
    if path.parent.name == "checkpoints":  # a run's checkpoint: <run>/checkpoints/
        fix += f", then continue with `smallvit train --resume {path.parent.parent}`"
    what = "checkpoint" if path.suffix == ".safetensors" else path.name
    kept = f"the previous {what} is intact" if existed else f"no {path.name} was written"
    return f"could not write {path} ({reason}): {fix}; {kept}"


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].contiguous()
        digest.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` as checkpoints are replaced: a crash leaves the old file or the new one, whole."""
    _write_atomic(path, lambda tmp: tmp.write_text(text))


def save_checkpoint(path: Path, tensors: dict[str, Tensor], state: dict) -> None:
    """Write ``tensors`` and the JSON-able ``state`` to ``path`` (+ ``path.with_suffix('.json')``) atomically; a
    ``last`` checkpoint it replaces becomes ``last.prev``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path.parent)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(state, indent=2, default=str)
    metadata = {"state": text, "sha256": tensor_digest(flat)}
    keep = previous_checkpoint(path) if path.stem == "last" else None
    _write_atomic(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata), keep_previous=keep)
    write_text_atomic(path.with_suffix(".json"), text + "\n")


def _remove_leftovers(folder: Path) -> None:
    """The temporary files of a writer killed mid-write (``.<name>.tmp-<pid>``, and safetensors' own ``.tmpXXXXXX``),
    each as large as a checkpoint. A run folder has one writer at a time (its lock), so none is in use."""
    for leftover in [*folder.glob(".*.tmp-*"), *folder.glob(".tmp??????")]:
        leftover.unlink(missing_ok=True)


def previous_checkpoint(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def load_checkpoint(path: Path, prefix: str | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read and verify a checkpoint; with ``prefix`` only the tensors under it, with the prefix stripped."""
    if not path.is_file():
        raise SmallViTError(f"checkpoint '{path}' does not exist: give a run folder or a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = json.loads(metadata.get("state", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SmallViTError(
            f"checkpoint '{path}' is unreadable ({reason}): use another checkpoint of the run"
        ) from None
    if "sha256" in metadata and tensor_digest(tensors) != metadata["sha256"]:
        raise SmallViTError(f"checkpoint '{path}' fails its checksum (damaged on disk): use another checkpoint")
    if prefix is not None:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors, state


def usable_checkpoint(folder: Path, console: Console | None = None) -> tuple[Path, dict]:
    """The run's ``last`` checkpoint and its state, or — when ``last`` is missing or damaged — ``last.prev`` (said
    on ``console``)."""
    last = folder / "last.safetensors"
    try:
        return last, load_checkpoint(last)[1]
    except SmallViTError as err:
        previous = previous_checkpoint(last)
        if not previous.is_file():
            raise
        if console is not None:
            console.print(f"{err}; resuming from the checkpoint before it, {previous.name}")
        return previous, load_checkpoint(previous)[1]


def prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer state dict into tensors (``optim.<param>.<name>``) and JSON-able hyper-parameters."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_id}.{name}"] = value
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            param_id, name = key[len("optim.") :].split(".", 1)
            state.setdefault(int(param_id), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, Tensor]:
    """The global RNG states (CPU, and CUDA when present) as tensors."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def restore_rng(tensors: dict[str, Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
