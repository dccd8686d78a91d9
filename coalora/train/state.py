"""What a run carries from step to step and across resumes (method.md section 4).

:class:`TrainState` is everything that changes during training besides the tensors. One
safetensors checkpoint (:mod:`coalora.checkpoint`) holds it with the adapter (theta, every
A and B), the AdamW state and the torch RNG, so a resumed run continues bit for bit.
:func:`read_checkpoint` refuses a checkpoint whose recipe differs in anything that changes the
result (``steps`` may change: train longer, or stop earlier).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from coalora.errors import CoaloraError
from coalora.train.config import TrainConfig

CHECKPOINT = "checkpoint.safetensors"
"""File name of a run's checkpoint inside its directory."""
FREE_OPTIONS = ("steps", "checkpoint_every", "cache_gib")
"""Options a resumed run may change: they do not change what the steps compute."""


@dataclass
class TrainState:
    """What changes during training (all of it is checkpointed)."""

    step: int = 0
    """Optimizer steps taken so far."""
    train_set: list[list[int]] = field(default_factory=list)
    """Config ids per matrix of every configuration in the current training set."""
    scores: dict[str, float] = field(default_factory=dict)
    """Probe loss by configuration hash, from the latest search round."""
    seconds: float = 0.0
    """Training wall time so far (search included), summed over resumed runs."""
    search_seconds: float = 0.0
    """The part of ``seconds`` spent in search rounds."""
    tokens: int = 0
    """Training token-passes so far (forward + backward, summed over configurations)."""
    probe_tokens: int = 0
    """Forward-only tokens the search spent scoring configurations on the probe windows."""
    trained_on: list[str] = field(default_factory=list)
    """Hashes of every configuration a training step has taken gradients on, in first-use order."""
    ref_probe: float | None = None
    """The unquantized model's probe loss (``excess`` sampling's floor)."""
    hv_ref: list[float] | None = None
    """Hypervolume reference point of the search's log, fixed at its first round."""
    searches: int = 0
    """Search rounds run so far."""


def write_checkpoint(path: Path, cfg: TrainConfig, target_names: list[str], state: TrainState,
                     adapter: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Write the run's checkpoint atomically: ``adapter`` (``theta.*``, ``lora.*``), the AdamW state
    (``optim.*``), the torch RNG, and as metadata the recipe, targets, state and optimizer groups."""
    from coalora.checkpoint import optimizer_to_tensors, save_checkpoint

    opt_t, opt_meta = optimizer_to_tensors(optimizer)
    tensors = {**adapter, **opt_t, "rng.torch": torch.get_rng_state()}
    meta = {
        "train_config": cfg.to_dict(),
        "adapter": cfg.adapter.to_dict(),
        "targets": target_names,
        "state": asdict(state),
        "optimizer": opt_meta,
    }
    save_checkpoint(path, tensors, meta)


@dataclass
class Saved:
    """A checkpoint's contents, checked against the resuming recipe by :func:`read_checkpoint`."""

    adapter: dict[str, torch.Tensor]
    """theta and every A, B (``theta.*``, ``lora.<module>.lora_A|lora_B``)."""
    optimizer: dict[str, torch.Tensor]
    """The AdamW state tensors (``optim.<param>.<key>``)."""
    optimizer_meta: dict[str, Any]
    """The AdamW param groups and scalar state."""
    rng: torch.Tensor
    """The torch RNG state at the save."""
    state: TrainState
    """The counters, training set and search state at the save."""


def read_checkpoint(path: Path, cfg: TrainConfig, target_names: list[str]) -> Saved:
    """The checkpoint at ``path``, which ``cfg`` may resume.

    Refuses, with one :class:`CoaloraError` each, an incomplete file, a recipe that differs in an
    option outside :data:`FREE_OPTIONS` (theta's rate is free where theta is not trained), and
    another model's targets.
    """
    from coalora.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(path)
    if not {"train_config", "targets", "state", "optimizer"} <= set(meta) or "rng.torch" not in tensors:
        raise CoaloraError(f"{path} is not a complete training checkpoint; delete it to start over")
    saved = TrainConfig.from_dict(meta["train_config"]).to_dict()
    free = FREE_OPTIONS + (() if cfg.use_theta else ("theta_lr_scale",))  # the baselines have no theta
    now = cfg.to_dict()
    mismatch = [k for k, v in saved.items() if k not in free and v != now[k]]
    if mismatch:
        k = mismatch[0]
        raise CoaloraError(f"{path} was trained with {k}={saved[k]!r}, not {now[k]!r}; "
                           "use another --out directory or the same options")
    if meta.get("targets") != target_names:
        raise CoaloraError(f"{path} is for another model (its target modules differ)")
    return Saved(adapter={k: v for k, v in tensors.items() if k.startswith(("theta.", "lora."))},
                 optimizer={k: v for k, v in tensors.items() if k.startswith("optim.")},
                 optimizer_meta=meta["optimizer"], rng=tensors["rng.torch"], state=TrainState(**meta["state"]))
