"""A protocol unit (one training run and its scoring) and the training recipe of each (method.md 6).

Every unit's :class:`~coalora.train.config.TrainConfig` comes from :func:`train_config`: the same
model, corpus, rank, window, batch, validation split and PEFT initialisation for every method; the
paper's recipe (:data:`~coalora.train.config.PAPER_RECIPE`: plain quantized base, uniform draws,
summed losses), which the arms vary; the steps that give each method the protocol's compute; the
unit's rate and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from coalora.errors import CoaloraError
from coalora.train.protocol.config import ProtocolConfig

if TYPE_CHECKING:  # torch-free at import: `coalora compare --help` and the report need only the names
    from coalora.train.config import TrainConfig
    from coalora.train.protocol.arms import Arm

CHECKPOINT_EVERY = 25
"""Steps between a unit run's checkpoints (an interrupted unit resumes from its last)."""

TRAINED_KINDS = ("headline", "arm", "scale")
"""Unit kinds that train one run of the comparison, in the folder named after the unit; their
token-passes are the method's compute (grid units train several short runs, ``none`` trains nothing)."""


@dataclass(frozen=True)
class Unit:
    """One training run and its scoring (``asdict`` of it is stored in the unit's JSON)."""

    name: str
    """The unit's file name under ``units/`` (e.g. ``grid-qlora-lr0.001``, ``coalora-s0``, ``qlora-2.5-s1``)."""
    kind: str
    """``grid`` (validation split only), ``theta-grid``, ``headline``, ``arm``, ``scale`` or ``none``."""
    method: str
    """A name of :data:`~coalora.train.protocol.config.METHODS`, or ``coalora+<arm>``."""
    seed: int = 0
    """Seed of the run's data order, configuration draws and initialisation."""
    lr: float = 0.0
    """AdamW rate of A, B."""
    theta_lr_scale: float = 10.0
    """theta's rate as a multiple of ``lr`` (coalora only)."""
    scale: float = 1.0
    """Multiple of the headline compute C."""
    budget: float | None = None
    """Per-configuration headline units: the budget; grid units: None (all grid budgets)."""


def fmt(x: float) -> str:
    """A number as unit names write it (``%g``: 0.001, 2.5, 3)."""
    return f"{x:g}"


def train_config(cfg: ProtocolConfig, unit: Unit, budget: float | None = None, grid: bool = False,
                 arm: Arm | None = None) -> TrainConfig:
    """The :class:`~coalora.train.config.TrainConfig` of one run of ``unit``.

    ``budget``: a per-configuration run's budget; ``grid``: a grid unit's shorter run; ``arm``:
    coalora's recipe with the arm's options, its steps set so its token-passes stay coalora's.
    """
    from coalora.train.config import PAPER_RECIPE, TrainConfig

    if arm is not None:
        base = train_config(cfg, Unit(unit.name, unit.kind, "coalora", unit.seed, unit.lr, unit.theta_lr_scale,
                                      unit.scale), grid=grid)
        tc = TrainConfig.from_dict({**base.to_dict(), **arm.options})
        # Equal compute: K may change, so the steps follow it.
        steps = int(round(base.token_passes / (tc.batch_size * tc.seqlen * tc.configs_each_step)))
        return TrainConfig.from_dict({**tc.to_dict(), "steps": steps})

    common = dict(model=cfg.model, corpus=cfg.corpus, rank=cfg.rank, seqlen=cfg.seqlen, batch_size=cfg.batch_size,
                  lr=unit.lr, seed=unit.seed, validation_windows=cfg.validation_windows, init="peft",
                  checkpoint_every=CHECKPOINT_EVERY, **PAPER_RECIPE)  # the headline measures the paper's recipe
    steps = cfg.steps_for(unit.method, unit.scale, grid)
    if unit.method in ("coalora", "coalora-theta-off"):
        return TrainConfig(method="coalora", theta=unit.method == "coalora", steps=steps,
                           configs_per_step=cfg.configs_per_step, theta_lr_scale=unit.theta_lr_scale,
                           search_every=cfg.search_every, **common)
    if unit.method == "shared":
        return TrainConfig(method="shared", steps=steps, **common)
    if unit.method == "qlora":
        return TrainConfig(method="qlora", budgets=(budget,), steps=steps, **common)
    if unit.method == "lqlora":
        return TrainConfig(method="lqlora", budgets=(budget,), steps=steps, **{**common, "init": "lq"})
    raise CoaloraError(f"no training for method {unit.method!r}")
