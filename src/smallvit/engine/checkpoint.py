"""Checkpoints: one safetensors file each, written atomically, holding everything a resume needs.

``last.safetensors`` holds the model (``model.*``), the EMA model (``ema.*``), the optimizer's tensors
(``optim.*``) and the RNG states (``rng.*``); its safetensors metadata carries the JSON state (epoch, step,
best metric, optimizer hyper-parameters, config). A readable copy of that JSON sits beside it. One file and one
``os.replace`` means a crash leaves either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from smallvit.errors import SmallViTError


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_checkpoint(path: Path, tensors: dict[str, Tensor], state: dict) -> None:
    """Write ``tensors`` and the JSON-able ``state`` to ``path`` (+ ``path.with_suffix('.json')``) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(state, indent=2, default=str)
    _write_atomic(path, lambda tmp: save_file(flat, str(tmp), metadata={"state": text}))
    _write_atomic(path.with_suffix(".json"), lambda tmp: tmp.write_text(text + "\n"))


def load_checkpoint(path: Path, prefix: str | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint; with ``prefix`` only the tensors under it, with the prefix stripped."""
    if not path.is_file():
        raise SmallViTError(f"checkpoint '{path}' does not exist: give a run folder or a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {}).get("state", "{}"))
            keys = [k for k in f.keys() if prefix is None or k.startswith(prefix)]
            tensors = {k[len(prefix or "") :]: f.get_tensor(k) for k in keys}
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise SmallViTError(f"checkpoint '{path}' is unreadable ({err}): use another checkpoint of the run") from None
    return tensors, state


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
