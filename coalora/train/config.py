"""The training recipe, :class:`TrainConfig` (method.md section 4; the baselines of section 6).

One frozen dataclass holds every option of a run. Each field's docstring is its ``coalora train``
help (``coalora.cli_options`` reads them from this source), and a run's checkpoint stores the
recipe as :meth:`TrainConfig.to_dict`, so a resume can refuse options that would change the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from coalora.adapter.model import AdapterConfig
from coalora.errors import CoaloraError
from coalora.quant.config import MAX_BITS, MIN_BITS

METHODS = ("coalora", "qlora", "lqlora", "shared")
"""Training methods: CoA-LoRA and its three baselines (method.md 6)."""
SAMPLINGS = ("uniform", "excess")
"""How a step draws its configurations from the training set."""
BALANCES = ("sum", "equal")
"""How a step combines its configurations' losses."""
POSITIVE_INTS = ("rank", "seqlen", "batch_size", "steps", "configs_per_step", "initial_budgets", "search_candidates",
                 "search_steps", "segments", "probe_windows", "checkpoint_every")
POSITIVE_FLOATS = ("lr", "theta_lr_scale", "alpha", "max_grad_norm", "cache_gib")

PAPER_RECIPE: dict[str, Any] = {"base": "quant", "sampling": "uniform", "sampling_uniform": 0.0, "loss_balance": "sum"}
"""The paper's (and its official code's) CoA-LoRA recipe, and every baseline's: theta's adapter on the
plainly quantized Q_c(W), the K configurations drawn uniformly, their losses summed. The protocol's
headline ``coalora`` and ``coalora-theta-off`` runs pin it."""
RECIPE: dict[str, Any] = {"base": "lq", "sampling": "excess", "sampling_uniform": 0.5, "loss_balance": "equal",
                          "theta_lr_scale": 3.0}
"""coalora's default recipe (issue 16): the LQ split base, excess draws half mixed with uniform ones,
equal loss weights, theta at 3x the LoRA rate: the protocol's arm ``lq5-mix-equal-t3``
(data/results/protocol/summary.md; at 10x the same recipe diverged late at one of three seeds)."""
AUTO = "auto"
"""The value of ``base``, ``sampling`` and ``loss_balance`` that takes the method's own: :data:`RECIPE`'s
for ``coalora``, :data:`PAPER_RECIPE`'s for the baselines."""
DEFAULT_LR = {"coalora": 3e-3, "qlora": 3e-3, "shared": 3e-4, "lqlora": 1e-3}
"""Each method's default rate: the one the protocol's lr grid chose on the validation split of the
training plays (data/results/protocol/summary.md, "Learning rates")."""


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. Defaults are the CPU recipe for SmolLM2-135M (README, data/README.md);
    ``auto`` and a missing ``lr`` take the method's own (:data:`RECIPE`, :data:`PAPER_RECIPE`,
    :data:`DEFAULT_LR`), and the stored recipe holds what they resolved to."""

    model: str = "smollm2-135m"
    """Registry name (`coalora models`) or a local Hugging Face checkpoint directory."""
    method: str = "coalora"
    """``coalora`` (theta + search); baselines: ``qlora`` (one config, Q = quant(W), plain LoRA),
    ``lqlora`` (one config, LQ-LoRA's decomposition W ~ Q + L1 L2 as base and init), ``shared`` (one
    plain LoRA over a fixed set of configs, one per step)."""
    rank: int = AdapterConfig.rank
    """LoRA rank: 8 is SmolLM2's hidden size (576) over 64, the paper's r/d for LLaMA-2-7B (64/4096)."""
    alpha: float = AdapterConfig.alpha
    """LoRA scaling numerator: the LoRA term is scaled by alpha / rank."""
    init: str = AdapterConfig.init
    """A, B initialisation: ``peft`` (Kaiming A, zero B) or ``lq`` (SVD of the residual at ``ref_preset``).
    peft did better in every 100-step comparison run (data/results/archive/ablations)."""
    ref_preset: str = AdapterConfig.ref_preset
    """Reference configuration of the ``lq`` init (a preset or ``uniform:b0,b1,b2,B0,B1``)."""
    base: str = AUTO
    """What the adapter sits on: ``quant`` (Q_c(W)) or ``lq`` (LQ-LoRA's split Q_c(W - L1 L2) + L1 L2,
    computed per configuration when it is applied; coalora.adapter.apply.BaseSpec). ``auto``: ``lq`` for
    coalora, ``quant`` for the baselines."""
    lq_rank: int = AdapterConfig.lq_rank
    """Rank of the ``lq`` base's low-rank term."""
    lq_iters: int = AdapterConfig.lq_iters
    """Most alternations of the ``lq`` base's split; the best iterate is kept (five take about 9 s per
    SmolLM2 configuration on one thread, data/results/lq_base.json)."""
    corpus: str = "shakespeare"
    """Training corpus (its train split): ``shakespeare``, a .txt/.jsonl file or directory, or ``hf:...``."""
    seqlen: int = 128
    """Tokens per training window."""
    batch_size: int = 4
    """Windows per step, summed over processes."""
    steps: int = 300
    """Optimizer steps (a resumed run may raise or lower it)."""
    lr: float | None = None
    """AdamW rate of A, B. Default: the protocol's grid's choice for the method (validation split of the
    training plays): 3e-3 for coalora and qlora, 3e-4 for shared, 1e-3 for lqlora. The paper's is 1e-4,
    too slow for a few hundred steps."""
    theta_lr_scale: float = RECIPE["theta_lr_scale"]
    """theta's learning rate as a multiple of ``lr`` (A, B keep ``lr``); 1 is the paper's single rate.
    3 is the protocol's arm ``lq5-mix-equal-t3``: at 10x (the lr grid's choice on short runs) that recipe
    diverged late at one seed of three, with theta's gradient norm at 26-34; at 3x no seed did. At 1e-4
    theta barely moves in a few hundred steps and U stays near I (a plain shared LoRA)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm over all trained parameters (the log flags clipped steps)."""
    configs_per_step: int = 2
    """K, the configurations whose gradients each ``coalora`` step sums (``shared`` takes one per step)."""
    theta: bool = True
    """``coalora`` only: False fixes U = I (theta off, everything else the same): the ablation that isolates theta."""
    theta_context: bool = AdapterConfig.theta_context
    """``coalora`` only: theta also sees the whole configuration (average bits, parameter share of
    2-bit matrices) beside each layer's own fields, so a layer's U can depend on how quantized the
    rest of the model is. The paper's theta sees the layer's fields alone."""
    theta_error: bool = AdapterConfig.theta_error
    """``coalora`` only: theta also sees each layer's quantization error under its configuration
    (standardized log relative error from the error table), a per-layer difficulty signal."""
    sampling: str = AUTO
    """How each step draws its K configurations from the training set: ``uniform``, or ``excess``
    (probability proportional to (probe loss - unquantized probe loss) ** sampling_power, refreshed at
    every search round: more steps where quantization hurts). ``auto``: ``excess`` for coalora,
    ``uniform`` for the baselines."""
    sampling_power: float = 1.0
    """Exponent of the ``excess`` sampling weights (0 is uniform)."""
    sampling_uniform: float = RECIPE["sampling_uniform"]
    """``excess`` only: the share of each draw's probability spread evenly over the training set,
    p = (1 - u) * excess / sum(excess) + u / N (0: excess alone, which starves configurations whose
    probe loss the adapter has brought to the unquantized model's)."""
    loss_balance: str = AUTO
    """How the K losses combine: ``sum`` (the official code) or ``equal`` (each configuration's loss
    divided by its own detached value, so a 10-nat 2-bit loss does not drown a 3-nat 6-bit one).
    ``auto``: ``equal`` for coalora, ``sum`` for the baselines."""
    budget_lo: float = 2.25
    """Lowest budget (average bits) of the initial training set and of the search's Pareto segments."""
    budget_hi: float = 7.25
    """Highest budget of the initial training set and of the search's segments."""
    initial_budgets: int = 50
    """Size of the initial training set: allocator solutions at evenly spaced budgets."""
    budgets: tuple[float, ...] = ()
    """Explicit budgets instead (baselines: one for ``qlora``, four for ``shared``)."""
    weighting: str = "fisher"
    """Error weighting of the allocator that builds the training set."""
    search_every: int = 100
    """Steps between search rounds; 0 freezes the training set (the paper's ablation)."""
    search_candidates: int = 5
    """Configurations each search round proposes (EHVI) and scores."""
    search_steps: int = 20
    """Coordinate-ascent steps of each proposal's acquisition optimisation."""
    segments: int = 40
    """Segments of the bit range in the segment-wise Pareto filter."""
    probe_windows: int = 4
    """Training-text windows held out to score configurations in the search (its f1)."""
    validation_windows: int = 0
    """Training windows held out before the probe windows (never trained on): the validation split
    that learning rates are tuned on (``coalora compare``'s grid), carved from the training text."""
    checkpoint_every: int = 50
    """Steps between checkpoints (one is always written at the end)."""
    cache_gib: float = 4.0
    """Size of the per-(matrix, config) cache of quantized weights, GiB."""
    seed: int = 0
    """Seed of the data order, configuration draws and LoRA initialisation."""

    def __post_init__(self) -> None:
        """Resolve the method's defaults (``auto``, no ``lr``), then refuse an invalid recipe with one
        :class:`CoaloraError` naming the option and its valid values."""
        if self.method not in METHODS:
            raise CoaloraError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        own = RECIPE if self.method == "coalora" else PAPER_RECIPE
        for name in ("base", "sampling", "loss_balance"):
            if getattr(self, name) == AUTO:
                object.__setattr__(self, name, own[name])
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.method])
        self._check_choices_and_counts()
        self._check_rates()
        self._check_budgets()
        _ = self.adapter  # validates the adapter fields

    def _check_choices_and_counts(self) -> None:
        if not isinstance(self.validation_windows, int) or self.validation_windows < 0:
            raise CoaloraError(f"validation_windows must be a non-negative integer, got {self.validation_windows!r}")
        for name in POSITIVE_INTS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CoaloraError(f"{name} must be a positive integer, got {v!r}")
        if self.sampling not in SAMPLINGS:
            raise CoaloraError(f"unknown sampling {self.sampling!r}; use one of {', '.join(SAMPLINGS)}")
        if self.loss_balance not in BALANCES:
            raise CoaloraError(f"unknown loss_balance {self.loss_balance!r}; use one of {', '.join(BALANCES)}")

    def _check_rates(self) -> None:
        if not (isinstance(self.sampling_power, (int, float)) and math.isfinite(self.sampling_power)
                and self.sampling_power >= 0):
            raise CoaloraError(f"sampling_power must be a non-negative number, got {self.sampling_power!r}")
        if not (isinstance(self.sampling_uniform, (int, float)) and not isinstance(self.sampling_uniform, bool)
                and 0 <= self.sampling_uniform <= 1):
            raise CoaloraError(f"sampling_uniform must be a number in [0, 1], got {self.sampling_uniform!r}")
        if self.search_every < 0:
            raise CoaloraError(f"search_every must be >= 0 (0 freezes the training set), got {self.search_every}")
        for name in POSITIVE_FLOATS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise CoaloraError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise CoaloraError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def _check_budgets(self) -> None:
        if not MIN_BITS <= self.budget_lo < self.budget_hi <= MAX_BITS:
            raise CoaloraError(f"budget range [{self.budget_lo}, {self.budget_hi}] must lie inside "
                               f"{MIN_BITS:.4f}..{MAX_BITS:.4f} with lo < hi")
        for b in self.budgets:
            if not MIN_BITS <= b <= MAX_BITS:
                raise CoaloraError(f"budget {b} is outside the feasible range {MIN_BITS:.4f}..{MAX_BITS:.4f}")
        if self.method in ("qlora", "lqlora") and len(self.budgets) != 1:
            raise CoaloraError(f"method {self.method} trains one adapter for one configuration: give exactly one budget")
        if self.method == "shared" and len(self.budgets) == 1:
            raise CoaloraError("method shared trains one LoRA over several fixed configurations: give 2+ budgets "
                               "(or none: the initial training set of `initial_budgets` allocator solutions)")

    @property
    def adapter(self) -> AdapterConfig:
        """The adapter's shape and initialisation (rank, alpha, init, base) as :class:`AdapterConfig`."""
        return AdapterConfig(self.rank, self.alpha, self.init, self.ref_preset, base=self.base, lq_rank=self.lq_rank,
                             lq_iters=self.lq_iters, theta_context=self.theta_context,
                             theta_error=self.theta_error)

    @property
    def use_theta(self) -> bool:
        """Whether theta's U adjusts the LoRA per configuration (``coalora`` with ``theta``); else U = I."""
        return self.method == "coalora" and self.theta

    @property
    def configs_each_step(self) -> int:
        """Configurations per step: K for ``coalora``, 1 for ``shared`` and the per-configuration baselines."""
        return self.configs_per_step if self.method == "coalora" else 1

    @property
    def token_passes(self) -> int:
        """Training compute of the whole run: forward + backward passes over training tokens,
        summed over configurations (steps * batch * seqlen * configurations per step)."""
        return self.steps * self.batch_size * self.seqlen * self.configs_each_step

    @property
    def searching(self) -> bool:
        """Whether Pareto search rounds (method.md 5) refresh the training set every ``search_every`` steps."""
        return self.method == "coalora" and self.search_every > 0

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready data (``budgets`` a list), as a checkpoint stores it."""
        d = asdict(self)
        d["budgets"] = list(self.budgets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; an unknown option is refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CoaloraError(f"unknown training option {unknown[0]!r}")
        d = dict(d)
        if "budgets" in d:
            d["budgets"] = tuple(float(b) for b in d["budgets"])
        return cls(**d)
