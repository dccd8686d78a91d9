"""What every protocol unit shares (method.md 6): the fixed evaluation configurations, windows and KL reference.

The evaluation configurations are fixed once per protocol directory (``eval_configs.json``): the
allocator's solution at each budget (``budget``), the members of CoA-LoRA's initial training set
nearest to each budget (``seen``), and random configurations far from that set (``ood``).
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coalora.errors import CoaloraError
from coalora.paths import CHECKOUT
from coalora.train.protocol.arms import Arm
from coalora.train.protocol.config import ProtocolConfig


@dataclass
class Context:
    """What every unit shares: evaluation configurations, windows and the KL reference's key."""

    cfg: ProtocolConfig
    """The protocol's options."""
    out: Path
    """The protocol directory (``protocol.json``, ``eval_configs.json``, ``units/``)."""
    work: Path
    """Where unit runs keep their checkpoints (``$COALORA_HOME/protocol/<hash>``)."""
    eval_configs: list[dict[str, Any]]
    """``{"role": "budget"|"seen"|"ood", "budget": b | None, "hash", "avg_bits", "ids"}``."""
    reference_key: str
    """Cache key of the KL reference."""
    windows: Any
    """The :class:`~coalora.evaluation.spec.EvalWindows` every point is scored on."""
    reference: Any
    """The cached :class:`~coalora.evaluation.reference.Reference` of those windows (opened once, read by every unit)."""
    log: Callable[[str], None] = print
    """Progress messages."""
    progress: bool = True
    """Whether to show progress bars."""
    env: dict[str, Any] = field(default_factory=dict)
    """:func:`versions`, recorded in every unit."""
    arms: dict[str, Arm] = field(default_factory=dict)
    """Registered arms by method name."""


def versions() -> dict[str, str]:
    """Versions a result depends on (recorded in every unit)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "botorch", "gpytorch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    from coalora import __version__

    out["coalora"] = __version__
    try:
        here = CHECKOUT
        out["git"] = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git"] = "unknown"
    return out


def prepare(cfg: ProtocolConfig, out: Path, log: Callable[[str], None] = print, progress: bool = True) -> Context:
    """Fix the evaluation configurations (``<out>/eval_configs.json``, made once) and build the
    KL reference of the unquantized model on the eval windows (cached)."""
    from coalora.evaluation import reference
    from coalora.evaluation.perplexity import eval_windows
    from coalora.files import write_json_atomic
    from coalora.lqlora.sensitivity import weights_fingerprint
    from coalora.models import find_targets, load_model

    out.mkdir(parents=True, exist_ok=True)
    (out / "units").mkdir(exist_ok=True)
    saved = out / "protocol.json"
    _check_same_protocol(cfg, out, saved)
    model, tok = load_model(cfg.model)
    targets = find_targets(model)
    wh = weights_fingerprint(model, targets)
    ew = eval_windows(tok, corpus=cfg.eval_corpus, seqlen=cfg.eval_seqlen, windows=cfg.eval_windows, spec=cfg.eval_spec)
    ref_key = reference.key(cfg.model, wh, ew.key)
    ref = reference.build(model, ew.windows, ref_key, progress=progress)
    if not ref.cached:
        raise CoaloraError("the protocol's KL reference is too large to cache; lower eval_windows")
    cpath = out / "eval_configs.json"
    if cpath.is_file():
        configs = json.loads(cpath.read_text())["configs"]
    else:
        configs, initial = fix_eval_configs(cfg, model, tok, targets, progress)
        write_json_atomic(cpath, {"protocol": cfg.hash, "initial_set": initial, "configs": configs})
    write_json_atomic(saved, {"config": cfg.to_dict(), "hash": cfg.hash, "headline_compute": cfg.headline_compute,
                              "eval_windows": {"spec": ew.spec, "dataset": ew.dataset, "key": ew.key,
                                               "positions": [list(p) for p in ew.positions]}})
    return Context(cfg, out, work_dir(cfg.hash), configs, ref_key, ew, ref, log, progress, versions())


def work_dir(protocol_hash: str) -> Path:
    """Where protocol ``protocol_hash``'s runs train (``$COALORA_HOME/protocol/<hash>``; not kept past the machine)."""
    from coalora import assets

    return assets.home() / "protocol" / protocol_hash


def _check_same_protocol(cfg: ProtocolConfig, out: Path, saved: Path) -> None:
    """Refuse a directory that holds another protocol (its ``protocol.json`` has another hash)."""
    if saved.is_file():
        old = ProtocolConfig.from_dict(json.loads(saved.read_text())["config"])
        if old.hash != cfg.hash:
            diff = [k for k, v in cfg.to_dict().items() if old.to_dict().get(k) != v]
            raise CoaloraError(f"{out} holds protocol {old.hash}, not {cfg.hash} (differs in {', '.join(diff)}); "
                               "use another --out or the same options")


def fix_eval_configs(cfg: ProtocolConfig, model, tok, targets, progress: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """(the evaluation configurations as :attr:`Context.eval_configs` rows, the initial set's hashes).

    The initial set is CoA-LoRA's default one (the ``fast`` allocator at ``initial_budgets`` budgets
    over ``[budget_lo, budget_hi]`` of :class:`~coalora.train.config.TrainConfig`); ``seen`` takes,
    per budget, its member nearest in bits that no earlier row took; ``ood`` draws with seed 0.
    """
    from coalora.lqlora.allocate import allocate_many
    from coalora.lqlora.sensitivity import cached_error_table
    from coalora.quant.config import CONFIG_BITS, ModelQuantConfig
    from coalora.train.compare import far_random_configs
    from coalora.train.config import TrainConfig

    tc = TrainConfig(model=cfg.model)
    table = cached_error_table(model, cfg.model, targets, tc.weighting, tokenizer=tok, progress=progress).numpy()
    numels, bits = [t.numel for t in targets], list(CONFIG_BITS)
    initial_budgets = np.linspace(tc.budget_lo, tc.budget_hi, tc.initial_budgets).tolist()
    initial = [ModelQuantConfig.from_ids(cfg.model, targets, list(a.choice))
               for a in allocate_many(table, numels, bits, initial_budgets, method="fast")]
    at_budget = [ModelQuantConfig.from_ids(cfg.model, targets, list(a.choice))
                 for a in allocate_many(table, numels, bits, list(cfg.budgets), method="fast")]
    configs = [{"role": "budget", "budget": b, "config": c} for b, c in zip(cfg.budgets, at_budget)]
    taken = {c.hash for c in at_budget}
    for b in cfg.budgets[: cfg.seen]:
        best = min((c for c in initial if c.hash not in taken), key=lambda c: abs(c.avg_bits - b))
        taken.add(best.hash)
        configs.append({"role": "seen", "budget": None, "config": best})
    train_ids = np.array([list(c.ids) for c in initial])
    for ids in far_random_configs(numels, train_ids, cfg.ood, seed=0):
        configs.append({"role": "ood", "budget": None, "config": ModelQuantConfig.from_ids(cfg.model, targets, ids)})
    rows = [{"role": e["role"], "budget": e["budget"], "hash": e["config"].hash,
             "avg_bits": e["config"].avg_bits, "ids": list(e["config"].ids)} for e in configs]
    return rows, [c.hash for c in initial]
