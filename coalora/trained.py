"""A trained CoA-LoRA adapter as one small file: theta and the shared A, B (no optimiser state).

Format: safetensors with ``theta.*`` and ``lora.<module>.lora_A|lora_B`` tensors (bf16 by default:
half the size, and the adapter's outputs change by far less than quantization does) and JSON
metadata ``{"format": "coalora.adapter/1", "model", "adapter", "targets", "train"}``. This is what
``data/default/`` ships and what ``coalora generate`` / the app load.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from coalora.adapter import AdapterConfig, CoALoRAModel
from coalora.errors import CoaloraError
from coalora.files import load_tagged, save_tagged

FORMAT = "coalora.adapter/1"


def _targets_hash(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _write(tensors: dict[str, torch.Tensor], path: str | os.PathLike, *, model: str, adapter: dict[str, Any],
           names: list[str], dtype: torch.dtype, train: dict[str, Any]) -> Path:
    meta = {
        "model": model,
        "adapter": adapter,
        "targets": len(names),
        "targets_hash": _targets_hash(names),
        "dtype": str(dtype).removeprefix("torch."),
        "train": train,
    }
    body = {k: v.to(dtype) for k, v in tensors.items() if k.startswith(("theta.", "lora."))}
    return save_tagged(body, path, FORMAT, meta)


def save_trained(coa: CoALoRAModel, path: str | os.PathLike, train_meta: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``coa``'s theta and LoRA weights (cast to ``dtype``) atomically."""
    return _write(coa.trainable_state(), path, model=coa.model_name, adapter=coa.adapter_config.to_dict(),
                  names=[t.name for t in coa.targets], dtype=dtype, train=train_meta or {})


def read_trained(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a trained-adapter file (clear errors for anything unreadable)."""
    return load_tagged(path, FORMAT, "trained adapter",
                       missing_hint=" (train one with `coalora train`, or `make train-default`)")


def _check_sizes(path, tensors: dict[str, torch.Tensor], adapter: AdapterConfig) -> None:
    """The description's sizes must match the tensors before anything is allocated from them (an
    edited ``rank`` of 10**6 would otherwise ask for terabytes instead of giving an error)."""
    from coalora.config import FIELD_SIZES

    a = next((v for k, v in tensors.items() if k.startswith("lora.") and k.endswith(".lora_A")), None)
    first = tensors.get("theta.mlp.1.weight")  # ConfigNet's Linear(embed_dim * features, hidden)
    if a is None or first is None:
        raise CoaloraError(f"adapter {path} lacks its LoRA or theta tensors; it is not a complete trained adapter")
    features = len(FIELD_SIZES) + 2  # the five config fields, block index, module type
    width = (adapter.embed_dim * features + (2 if adapter.theta_context else 0)  # adapter.CONTEXT_FEATURES
             + (1 if adapter.theta_error else 0))
    if a.dim() != 2 or a.shape[0] != adapter.rank or tuple(first.shape) != (adapter.hidden, width):
        raise CoaloraError(f"adapter {path}: its description (rank {adapter.rank}, hidden {adapter.hidden}, embed_dim "
                           f"{adapter.embed_dim}) does not match its tensors (A {tuple(a.shape)}, theta's first layer "
                           f"{tuple(first.shape)}); the file was edited or damaged")


def load_trained(path: str | os.PathLike, model, model_name: str, targets=None, **kwargs) -> CoALoRAModel:
    """Wrap ``model`` (a loaded ``model_name``) with the trained adapter at ``path``.

    Raises :class:`CoaloraError` if the file is for another model, another set of target modules
    or is damaged. ``kwargs`` go to :class:`CoALoRAModel` (e.g. ``cache_bytes``).
    """
    from coalora.models import find_targets

    tensors, meta = read_trained(path)
    if meta.get("model") != model_name:
        raise CoaloraError(f"adapter {path} was trained for model {meta.get('model')!r}, not {model_name!r}")
    targets = list(targets if targets is not None else find_targets(model))
    if meta.get("targets_hash") != _targets_hash([t.name for t in targets]):
        raise CoaloraError(f"adapter {path} does not match the target modules of {model_name}")
    try:
        adapter = AdapterConfig(**meta["adapter"])
    except (KeyError, TypeError) as e:
        raise CoaloraError(f"adapter {path} has an invalid adapter description ({e})") from None
    _check_sizes(path, tensors, adapter)
    coa = CoALoRAModel(model, model_name, targets, adapter, initialize=False, **kwargs)
    w = next(model.parameters())
    coa.load_trainable_state({k: v.to(dtype=w.dtype) for k, v in tensors.items()})
    coa.trained_meta = meta  # type: ignore[attr-defined]
    return coa


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                      extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter of a training checkpoint as a trained-adapter file (no model load needed)."""
    from coalora.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(checkpoint)
    try:
        state = meta["state"]
        train = {
            "config": meta["train_config"],
            **{k: state[k] for k in ("step", "seconds", "search_seconds", "tokens", "searches", "train_set")},
            **(extra or {}),
        }
        model, adapter, names = meta["train_config"]["model"], meta["adapter"], list(meta["targets"])
        if not all(isinstance(n, str) for n in names):
            raise TypeError
    except (KeyError, TypeError):
        raise CoaloraError(f"{checkpoint} is not a complete training checkpoint (its metadata lacks the run's "
                           "state); resume the run with `coalora train` to write a new one") from None
    return _write(tensors, out, model=model, adapter=adapter, names=names, dtype=dtype, train=train)
