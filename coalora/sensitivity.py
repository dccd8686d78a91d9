"""A model's error table, computed once and cached, optionally weighted by activation statistics.

LQ-LoRA's budget ILP (method.md section 2.3) needs, for every target matrix i and each of the 432
configurations c, the cost e[i, c] of quantizing W_i with c. Two weightings:

* ``none``: the plain Frobenius error ``||W - Q_c(W)||_F^2``;
* ``activation``: ``sum_ij a_j (W - Q_c(W))_ij^2`` with a_j the mean squared input activation of
  column j over a few calibration windows of the *training* split. This is the expected output
  error ``E||x (W - Q)^T||^2`` under a diagonal input covariance, a cheap, data-aware stand-in for
  LQ-LoRA's Fisher weighting (which needs per-example gradients).

Tables are cached under ``$COALORA_HOME/error_tables`` keyed by model, weighting and a fingerprint
of the target weights, as safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from coalora import assets
from coalora.errors import CoaloraError
from coalora.models import Target, target_modules_of

WEIGHTINGS = ("none", "activation")
CALIBRATION_WINDOWS = 8
CALIBRATION_SEQLEN = 256


def weights_fingerprint(model: nn.Module, targets: list[Target] | tuple[Target, ...]) -> str:
    """sha256 over the target weights' bytes (16 hex digits): tables never outlive their weights."""
    h = hashlib.sha256()
    for name, lin in target_modules_of(model, list(targets)).items():
        h.update(name.encode())
        h.update(lin.weight.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def activation_importance(model: nn.Module, targets: list[Target] | tuple[Target, ...], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean squared input activation per input column of every target, ``{name: [1, d_in]}``.

    Args:
        windows: calibration token windows ``[n, seqlen]``.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, lin in target_modules_of(model, list(targets)).items():
        def hook(_mod, inputs, name=name):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        hooks.append(lin.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for w in windows:
                model(input_ids=w[None])
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / counts[name])[None, :] for name in sums}


def model_error_table(
    model: nn.Module,
    model_name: str,
    targets: list[Target] | tuple[Target, ...],
    weighting: str = "none",
    tokenizer=None,
    progress: bool = True,
    cache: bool = True,
) -> torch.Tensor:
    """The ``[N, 432]`` error table of a model (float64), from the cache when possible."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from coalora.error_table import error_table

    if weighting not in WEIGHTINGS:
        raise CoaloraError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    fp = weights_fingerprint(model, targets)
    safe_name = model_name.replace("/", "--").replace(os.sep, "--")
    path = assets.home() / "error_tables" / f"{safe_name}-{weighting}-{fp}.safetensors"
    if cache and path.is_file():
        try:
            table = load_file(str(path))["errors"]
            if table.shape == (len(targets), 432):
                return table
        except (SafetensorError, OSError, KeyError):
            pass  # a corrupt cache entry is recomputed, not trusted

    importance = None
    if weighting == "activation":
        if tokenizer is None:
            raise CoaloraError("activation weighting needs the model's tokenizer for calibration text")
        from coalora import data

        calib = data.load_corpus("shakespeare" if model_name != "tiny-llama" else _tiny_corpus(), "train")
        ids = data.tokenize(tokenizer, calib)
        importance = activation_importance(model, targets, data.windows(ids, CALIBRATION_SEQLEN, CALIBRATION_WINDOWS))
    weights = {name: lin.weight.detach() for name, lin in target_modules_of(model, list(targets)).items()}
    table = error_table(weights, importance, progress=progress)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"errors": table.contiguous()}, str(tmp), metadata={"model": model_name, "weighting": weighting})
        os.replace(tmp, path)
    return table


def _tiny_corpus() -> str:
    """Calibration text for the tiny test model, written once to the cache (it needs no download)."""
    p = Path(assets.home()) / "corpora" / "tiny.txt"
    if not p.is_file():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return str(p)
