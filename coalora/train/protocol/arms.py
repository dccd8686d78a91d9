"""Ablation arms: CoA-LoRA variants measured under the protocol's compute, data and seeds.

An arm is coalora's recipe and chosen rates with some training options changed; it is registered
in ``<out>/arms.json`` and runs one unit per headline seed (or per seed of its own subset).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from coalora.errors import CoaloraError


@dataclass(frozen=True)
class Arm:
    """A CoA-LoRA variant measured under the protocol (an ablation row): coalora's recipe and rates
    with some :class:`~coalora.train.config.TrainConfig` options changed, at the same compute and seeds."""

    name: str
    """1-40 letters, digits, '-', '_' or '.'; its units are ``arm-<name>-s<seed>``."""
    options: dict[str, Any]
    """The changed training options (none of :data:`FIXED_BY_PROTOCOL`)."""
    why: str = ""
    """What the arm tests, for the report."""
    seeds: tuple[int, ...] = ()
    """The headline seeds it runs at; empty: all of them. A screening arm runs at one seed and is
    repeated at the others only if it earns a place in the recipe."""

    @property
    def method(self) -> str:
        """The arm's method name in every file: ``coalora+<name>``."""
        return f"coalora+{self.name}"


FIXED_BY_PROTOCOL = ("model", "method", "corpus", "seqlen", "batch_size", "steps", "seed", "validation_windows",
                     "lr", "checkpoint_every", "budgets")
"""Training options an arm may not change: they set the compute, data, seed or rate of the comparison.
``theta`` is not among them: an arm's recipe with ``theta: false`` is that recipe's own theta-off ablation."""

THETA_ONLY = ("theta_lr_scale", "theta_context", "theta_error")
"""Training options that do not enter a run with theta off: recipes differing only in them share one
theta-off ablation (the arm with the same other options and ``theta: false``)."""


def check_arm(arm: Arm) -> Arm:
    """Refuse arms that would leave the protocol (another compute, data or seed) or name unknown options."""
    from coalora.train.config import TrainConfig

    if not arm.name or not all(ch.isalnum() or ch in "-_." for ch in arm.name) or len(arm.name) > 40:
        raise CoaloraError(f"arm name {arm.name[:40]!r} must be 1-40 letters, digits, '-', '_' or '.'")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in arm.seeds):
        raise CoaloraError(f"arm {arm.name}: seeds must be non-negative integers, got {list(arm.seeds)[:8]}")
    known = {f.name for f in fields(TrainConfig)}
    for k in arm.options:
        if k not in known:
            raise CoaloraError(f"arm {arm.name}: unknown training option {k!r}")
        if k in FIXED_BY_PROTOCOL:
            raise CoaloraError(f"arm {arm.name}: {k} is fixed by the protocol (equal compute, same data and seeds)")
    TrainConfig(**{**arm.options, "model": "tiny-llama"})  # validates the values
    return arm


def load_arms(out: Path) -> list[Arm]:
    """The arms registered in ``<out>/arms.json`` (none if absent)."""
    p = Path(out) / "arms.json"
    if not p.is_file():
        return []
    try:
        rows = json.loads(p.read_text())["arms"]
        return [check_arm(Arm(r["name"], dict(r["options"]), r.get("why", ""), tuple(r.get("seeds", ()))))
                for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CoaloraError(f"{p} is not a list of protocol arms ({type(e).__name__}); fix or delete it") from None


def add_arm(out: str | os.PathLike, arm: Arm) -> list[Arm]:
    """Register ``arm`` in ``<out>/arms.json`` (replacing one of the same name with no finished units)."""
    from coalora.files import write_json_atomic

    out = Path(out)
    check_arm(arm)
    arms = [a for a in load_arms(out) if a.name != arm.name]
    old = next((a for a in load_arms(out) if a.name == arm.name), None)
    if old is not None and old.options != arm.options and any((out / "units").glob(f"arm-{arm.name}-s*.json")):
        raise CoaloraError(f"arm {arm.name} already has results with other options; choose another name")
    arms.append(arm)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "arms.json", {"arms": [asdict(a) for a in arms]})
    return arms
