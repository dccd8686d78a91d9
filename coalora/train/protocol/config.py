"""The protocol's options, :class:`ProtocolConfig`, and its method names (method.md 6).

Each field's docstring is its ``coalora compare`` help. The config's :attr:`~ProtocolConfig.hash`
keys every unit and the protocol's work directory, so units of different protocols never mix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from coalora.errors import CoaloraError

METHODS = ("coalora", "coalora-theta-off", "shared", "qlora", "lqlora", "none")
"""The protocol's methods, by the names every file uses."""
SHARED_ADAPTER = ("coalora", "coalora-theta-off", "shared")
"""Methods with one adapter for every configuration (one run per seed)."""
PER_CONFIG = ("qlora", "lqlora")
"""Methods with one adapter per evaluation budget (one run per budget and seed)."""


@dataclass(frozen=True)
class ProtocolConfig:
    """What the protocol trains and scores; its hash keys every unit, so units of different
    protocols never mix."""

    model: str = "smollm2-135m"
    """Model to quantize (an offline name from `coalora models`)."""
    corpus: str = "shakespeare"
    """Training corpus (its train split; the validation split is carved from its end)."""
    eval_corpus: str = "shakespeare"
    """Evaluation corpus (its eval split: the four held-out plays for Shakespeare)."""
    budgets: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
    """Evaluation budgets (average bits): one per-configuration run each, one unseen point each."""
    per_config_steps: int = 50
    """Steps of each per-configuration run; sets the headline compute C (six runs' token-passes)."""
    rank: int = 8
    """LoRA rank of every method."""
    seqlen: int = 128
    """Training window length in tokens."""
    batch_size: int = 4
    """Training windows per step."""
    configs_per_step: int = 2
    """K, configurations per CoA-LoRA step (its steps are C / (batch * seqlen * K))."""
    search_every: int = 50
    """CoA-LoRA's steps between search rounds (both coalora arms)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every method at the headline compute."""
    compute_scales: tuple[float, ...] = (0.5, 2.0)
    """Other multiples of C for the compute curve (coalora and shared)."""
    scale_seeds: tuple[int, ...] = (0,)
    """Seeds of the compute-curve runs."""
    lr_grid: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    """Learning rates tried for every method's A, B on the validation split."""
    theta_grid: tuple[float, ...] = (3.0, 10.0, 30.0)
    """theta's rate multiples tried for coalora at its best rate (the first lr grid uses 10)."""
    grid_budgets: tuple[float, ...] = (2.5, 4.0)
    """Budgets of the per-configuration grid runs; a shared-adapter grid run spends the same
    compute (len(grid_budgets) * per_config_steps steps' worth), a third of C by default."""
    validation_windows: int = 32
    """Training windows (of `seqlen`) held out as the validation split, in every run."""
    eval_spec: str = "strided-v1"
    """Eval spec of every scored point (coalora.evaluation.spec)."""
    eval_windows: int = 16
    """Held-out windows per scored point (spread evenly over the held-out plays)."""
    eval_seqlen: int = 256
    """Held-out window length in tokens."""
    seen: int = 6
    """Initial-training-set configurations scored (nearest to each budget)."""
    ood: int = 10
    """Random configurations far from the initial training set."""
    hv_bits_ref: float = 7.25
    """Hypervolume reference point's bits."""
    hv_ppl_ref: float = 1000.0
    """Hypervolume reference point's perplexity (worse points add nothing)."""

    def __post_init__(self) -> None:
        """Refuse non-positive counts, empty grids, unsorted budgets and compute scales that do not
        give CoA-LoRA a whole number of steps."""
        for name in ("per_config_steps", "rank", "seqlen", "batch_size", "configs_per_step", "search_every",
                     "eval_windows", "eval_seqlen", "seen"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CoaloraError(f"{name} must be a positive integer, got {v!r}")
        if not self.seeds or not self.lr_grid or not self.budgets:
            raise CoaloraError("seeds, lr_grid and budgets must not be empty")
        if sorted(set(self.budgets)) != list(self.budgets):
            raise CoaloraError("budgets must be increasing and distinct")
        if self.ood < 0 or self.validation_windows < 1:
            raise CoaloraError("ood must be >= 0 and validation_windows >= 1")
        for s in self.compute_scales:
            steps = self.per_config_steps * len(self.budgets) * s / self.configs_per_step
            if not (s > 0 and abs(steps - round(steps)) < 1e-9):
                raise CoaloraError(f"compute scale {s} does not give a whole number of CoA-LoRA steps")

    @property
    def hash(self) -> str:
        """12 hex digits of the SHA-256 of :meth:`to_dict` (sorted keys): the protocol's identity."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProtocolConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    @property
    def tokens_per_step(self) -> int:
        """Training tokens of one step's batch (batch_size * seqlen)."""
        return self.batch_size * self.seqlen

    @property
    def headline_compute(self) -> int:
        """C: the per-configuration runs' token-passes summed over the budgets."""
        return len(self.budgets) * self.per_config_steps * self.tokens_per_step

    def steps_for(self, method: str, scale: float = 1.0, grid: bool = False) -> int:
        """Training steps of one run of ``method`` (per budget for the per-configuration methods)."""
        if method in PER_CONFIG:
            return self.per_config_steps
        k = self.configs_per_step if method.startswith("coalora") else 1
        runs = len(self.grid_budgets) if grid else len(self.budgets) * scale
        return int(round(runs * self.per_config_steps / k))
