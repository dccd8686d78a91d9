"""A model's error table under a weighting, computed once and cached (:func:`cached_error_table`).

LQ-LoRA's budget ILP (method.md section 2.3) needs, for every target matrix i and each of the 432
configurations c, the cost e[i, c] of quantizing W_i with c. Two weightings:

* ``none``: the plain Frobenius error ``||W - Q_c(W)||_F^2``;
* ``activation``: ``sum_ij a_j (W - Q_c(W))_ij^2`` with a_j the mean squared input activation of
  column j over a few calibration windows of the *training* split. This is the expected output
  error ``E||x (W - Q)^T||^2`` under a diagonal input covariance, a cheap, data-aware stand-in for
  LQ-LoRA's Fisher weighting;
* ``fisher``: ``sum_ij F_ij (W - Q_c(W))_ij^2`` with F the diagonal empirical Fisher, the sum over
  calibration windows of the squared gradient of each window's LM loss (LQ-LoRA's data-aware
  weighting, method.md 2.2). To second order this is twice the loss increase that quantizing W_i
  alone causes, so it ranks matrices by what they do to the loss, not only to their own output.
  On SmolLM2-135M it is the default: the activation weighting let the allocator put 2 bits on
  matrices whose output error is small but whose effect on the loss is large (README).

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

WEIGHTINGS = ("none", "activation", "fisher")
CALIBRATION_WINDOWS = 8
CALIBRATION_SEQLEN = 256
FISHER_WINDOWS = 32


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


def fisher_importance(model: nn.Module, targets: list[Target] | tuple[Target, ...], windows: torch.Tensor,
                      progress: bool = False) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of every target weight, ``{name: [d_out, d_in]}`` (float32).

    One backward pass per calibration window (each window is one "example", as LQ-LoRA's
    per-sequence estimate); only the target weights get gradients.

    Args:
        windows: calibration token windows ``[n, seqlen]``.
    """
    from tqdm.auto import tqdm

    linears = target_modules_of(model, list(targets))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    fisher = {name: torch.zeros_like(lin.weight, dtype=torch.float32) for name, lin in linears.items()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for lin in linears.values():
            lin.weight.requires_grad_(True)
        for w in tqdm(windows, desc="fisher", unit="win", disable=not progress, leave=False):
            model.zero_grad(set_to_none=True)
            model(input_ids=w[None], labels=w[None]).loss.backward()
            for name, lin in linears.items():
                fisher[name].add_(lin.weight.grad.float().square())
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return fisher


def weighting_importance(
    model: nn.Module,
    model_name: str,
    targets: list[Target] | tuple[Target, ...],
    weighting: str,
    tokenizer=None,
    progress: bool = True,
) -> dict[str, torch.Tensor] | None:
    """Per-weight importance of every target under ``weighting`` (None for ``none``), from the
    calibration windows of the training split: ``activation`` ``[1, d_in]``, ``fisher`` ``[d_out, d_in]``."""
    if weighting not in WEIGHTINGS:
        raise CoaloraError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    if weighting == "none":
        return None
    if tokenizer is None:
        raise CoaloraError(f"{weighting} weighting needs the model's tokenizer for calibration text")
    from coalora import data

    calib = data.load_corpus("shakespeare" if model_name != "tiny-llama" else _tiny_corpus(), "train")
    ids = data.tokenize(tokenizer, calib)
    if weighting == "activation":
        return activation_importance(model, targets, data.windows(ids, CALIBRATION_SEQLEN, CALIBRATION_WINDOWS))
    return fisher_importance(model, targets, data.windows(ids, CALIBRATION_SEQLEN, FISHER_WINDOWS), progress=progress)


def cached_error_table(
    model: nn.Module,
    model_name: str,
    targets: list[Target] | tuple[Target, ...],
    weighting: str = "none",
    tokenizer=None,
    progress: bool = True,
    cache: bool = True,
) -> torch.Tensor:
    """A model's ``[N, 432]`` error table (float64) under ``weighting``: read from the cache, or
    computed (:func:`weighting_importance`, then :func:`coalora.lqlora.error_table.error_table` on
    the target weights) and cached. :func:`~coalora.lqlora.error_table.error_table` is the
    computation on given tensors; this is the model-level entry point."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from coalora.files import save_safetensors_atomic
    from coalora.lqlora.error_table import error_table

    if weighting not in WEIGHTINGS:
        raise CoaloraError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    fp = weights_fingerprint(model, targets)
    safe_name = model_name.replace("/", "--").replace(os.sep, "--")
    # The key names the calibration too, so changing it never reuses a stale table.
    calib = {"none": "", "activation": f"{CALIBRATION_WINDOWS}x{CALIBRATION_SEQLEN}",
             "fisher": f"{FISHER_WINDOWS}x{CALIBRATION_SEQLEN}"}[weighting]
    path = assets.home() / "error_tables" / f"{safe_name}-{weighting}{calib}-{fp}.safetensors"
    if cache and path.is_file():
        try:
            table = load_file(str(path))["errors"]
            if table.shape == (len(targets), 432):
                return table
        except (SafetensorError, OSError, KeyError):
            pass  # a corrupt cache entry is recomputed, not trusted
    importance = weighting_importance(model, model_name, targets, weighting, tokenizer, progress)
    weights = {name: lin.weight.detach() for name, lin in target_modules_of(model, list(targets)).items()}
    table = error_table(weights, importance, progress=progress)
    if cache:
        save_safetensors_atomic({"errors": table}, path, metadata={"model": model_name, "weighting": weighting})
    return table



def _tiny_corpus() -> str:
    """Calibration text for the tiny test model, written once to the cache (it needs no download)."""
    p = Path(assets.home()) / "corpora" / "tiny.txt"
    if not p.is_file():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return str(p)
