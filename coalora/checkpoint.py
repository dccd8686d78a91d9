"""Checkpoint files: tensors in safetensors, structured state as JSON in its metadata (no pickle).

One file per checkpoint, written atomically (temporary file + ``os.replace``), so an interrupted
save leaves the previous checkpoint intact; the temporary a killed save leaves behind is removed
when the run resumes (or by the next save). A truncated or foreign file gives one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from coalora.errors import CoaloraError
from coalora.files import clean_stale_temps, load_tagged, save_tagged

FORMAT = "coalora.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and the JSON-serialisable ``meta`` to ``path`` atomically."""
    return save_tagged(tensors, path, FORMAT, meta)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint; every way it can be unreadable raises :class:`CoaloraError`."""
    clean_stale_temps(path)  # what a killed save left (only a dead writer's temporaries)
    return load_tagged(path, FORMAT, "checkpoint", damaged_hint="; delete it to start over", device=str(device))


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (``optim.<param>.<key>``) and JSON (groups, scalars)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CoaloraError(f"the optimizer state does not match this adapter ({e})") from None
