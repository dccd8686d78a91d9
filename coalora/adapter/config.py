"""The adapter's shape and initialisation, :class:`AdapterConfig` (method.md section 3).

These are the one set of defaults for the adapter: rank, alpha, init and theta's size; the base's
(``base``, ``lq_rank``, ``lq_iters``) are :class:`~coalora.adapter.apply.BaseSpec`'s. The training
recipe (:class:`coalora.train.config.TrainConfig`) takes its adapter fields' defaults from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from coalora.adapter.apply import BaseSpec
from coalora.errors import CoaloraError
from coalora.quant.config import resolve_preset

INITS = ("lq", "peft")
"""A, B initialisations: ``lq`` (SVD of the reference residual) and ``peft`` (Kaiming A, zero B)."""


@dataclass(frozen=True)
class AdapterConfig:
    """Shape and initialisation of the configuration-aware adapter."""

    rank: int = 8
    """LoRA rank r: 8 is SmolLM2's hidden size (576) over 64, the paper's r/d for LLaMA-2-7B (64/4096)."""
    alpha: float = 16.0
    """LoRA scaling numerator: s = alpha / rank."""
    init: str = "peft"
    """``peft``: PEFT's default (A Kaiming-uniform, B = 0), so training starts from the bare quantized
    model; ``lq``: A, B from a rank-r SVD of W - Q_ref(W) (LQ-LoRA's first step). peft did better in
    every 100-step comparison run (data/results/archive/ablations)."""
    ref_preset: str = "nf3-dq"
    """Reference configuration of the ``lq`` init (a preset or ``uniform:b0,b1,b2,B0,B1``)."""
    embed_dim: int = 8
    """Width of each of theta's 7 feature embeddings."""
    hidden: int = 128
    """Width of theta's hidden layer."""
    theta_context: bool = False
    """theta also sees the whole configuration (its average bits and the parameter share of 2-bit
    matrices) beside each layer's own fields, so one layer's U can depend on how quantized the rest
    of the model is (coalora.adapter.theta.config_context). The paper's theta does not."""
    theta_error: bool = False
    """theta also sees each layer's quantization error under its configuration (standardized log
    relative error from the model's cached unweighted error table, coalora.adapter.theta.error_features;
    ~30 s on SmolLM2-135M the first time, then read from the cache). The paper's theta does not."""
    base: str = BaseSpec.kind
    """What the adapter sits on: ``quant``, the quantized weight Q_c(W); ``lq``, LQ-LoRA's split
    Q_c(W - L1 L2) + L1 L2 computed per configuration (coalora.adapter.apply.BaseSpec)."""
    lq_rank: int = BaseSpec.lq_rank
    """Rank of the ``lq`` base's full-precision low-rank term."""
    lq_iters: int = BaseSpec.lq_iters
    """Most alternations of the ``lq`` base's split (randomized SVD, then quantize; the best iterate is kept)."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise CoaloraError(f"adapter rank must be a positive integer, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise CoaloraError(f"adapter alpha must be a positive number, got {self.alpha!r}")
        if self.init not in INITS:
            raise CoaloraError(f"unknown adapter init {self.init!r}; use one of {', '.join(INITS)}")
        resolve_preset(self.ref_preset)  # validates
        _ = self.base_spec  # validates base, lq_rank, lq_iters
        if not isinstance(self.theta_context, bool):
            raise CoaloraError(f"adapter theta_context must be true or false, got {self.theta_context!r}")
        if not isinstance(self.theta_error, bool):
            raise CoaloraError(f"adapter theta_error must be true or false, got {self.theta_error!r}")
        for name in ("embed_dim", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CoaloraError(f"adapter {name} must be a positive integer, got {v!r}")

    @property
    def base_spec(self) -> BaseSpec:
        """The :class:`~coalora.adapter.apply.BaseSpec` the model computes each configuration's weights with."""
        return BaseSpec(self.base, self.lq_rank, self.lq_iters)

    @property
    def scaling(self) -> float:
        """s = alpha / rank, the LoRA term's scale."""
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        """Every field, as saved in trained-adapter files and checkpoints."""
        return asdict(self)
