"""The configuration-aware adapter of CoA-LoRA (method.md section 3, spec S3 and S6).

Every target matrix W_i gets one LoRA pair, shared by all quantization configurations:
A_i ``[r, d_in]`` (L2) and B_i ``[d_out, r]`` (L1). One small network theta, shared by every
layer, maps a layer's configuration to an r x r adjustment:

    features_i = (b0, b1, b2, B0, B1, block index, module type)      7 categorical indices
    M_i = MLP(concat of 8-dim embeddings)                              [r, r]
    U_i = I + gamma * M_i                                              gamma learnable, init 1
    y   = x W_C^T + bias + s * ((x A_i^T) U_i^T) B_i^T,  s = alpha / r

theta's last layer starts at N(0, 1e-3), so U ~ I and training starts from the plain LoRA.
For deployment, U folds into A (A' = U A) and the result is an ordinary LoRA adapter
(:mod:`coalora.export_peft`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coalora.config import FIELD_SIZES, ModelQuantConfig, resolve_preset
from coalora.errors import CoaloraError
from coalora.models import Target, target_modules_of

INITS = ("lq", "peft")


@dataclass(frozen=True)
class AdapterConfig:
    """Shape and initialisation of the configuration-aware adapter."""

    rank: int = 16
    alpha: float = 16.0
    """LoRA scaling numerator: s = alpha / rank (the paper: alpha 16 with rank 64)."""
    init: str = "lq"
    """``lq``: A, B from a rank-r SVD of W - Q_ref(W) (LQ-LoRA's first step); ``peft``: PEFT's default
    (A Kaiming-uniform, B = 0)."""
    ref_preset: str = "nf3-dq"
    """Reference configuration of the ``lq`` init (a preset or ``uniform:...``)."""
    embed_dim: int = 8
    hidden: int = 128
    theta_context: bool = False
    """theta also sees the whole configuration (its average bits and the parameter share of 2-bit
    matrices) beside each layer's own fields (:func:`config_context`)."""
    theta_error: bool = False
    """theta also sees each layer's quantization error under its configuration (:func:`error_features`,
    from coalora.error_table) beside the layer's own fields."""
    base: str = "quant"
    """What the adapter sits on: ``quant``, the quantized weight Q_c(W); ``lq``, LQ-LoRA's split
    Q_c(W - L1 L2) + L1 L2 computed per configuration (coalora.apply.BaseSpec)."""
    lq_rank: int = 8
    """Rank of the ``lq`` base's full-precision low-rank term."""
    lq_iters: int = 1
    """Alternations of the ``lq`` base's split (randomized SVD, then quantize)."""

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
            if not isinstance(v, int) or v < 1:
                raise CoaloraError(f"adapter {name} must be a positive integer, got {v!r}")

    @property
    def base_spec(self):
        """The :class:`~coalora.apply.BaseSpec` the model computes each configuration's weights with."""
        from coalora.apply import BaseSpec

        return BaseSpec(self.base, self.lq_rank, self.lq_iters)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return asdict(self)


CONTEXT_FEATURES = 2
"""Numbers in theta's optional context: (avg bits - 4) / 2 and the parameter share of 2-bit matrices."""


def config_context(config: ModelQuantConfig) -> torch.Tensor:
    """The whole configuration as theta's context, ``[2]`` float32: (avg bits - 4) / 2 and the
    parameter share of its matrices with b0 = 2 (main's coalora.adapter.theta.config_context)."""
    numels = config.numels
    low = sum(n for c, n in zip(config.configs, numels) if c.b0 == 2) / sum(numels)
    return torch.tensor([(config.avg_bits - 4.0) / 2.0, low], dtype=torch.float32)


def error_features(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each matrix's quantization error under each of the 432 configurations as theta sees it,
    ``[N, 432]`` float32: log(||W - Q_c(W)||^2 / ||W||^2) from :func:`coalora.error_table.error_table`
    (sampled mode, seed 0), standardized to mean 0 and std 1 over the table, so its scale matches
    the embeddings'. A function of the weights alone: recomputed, never stored, wherever theta runs.
    The error is of W itself, not of an ``lq`` base's residual: a per-layer difficulty signal that
    theta would otherwise have to learn from the field embeddings and the block index."""
    from coalora.error_table import error_table

    err = error_table([w.float() for w in weights], progress=False)  # [N, 432] float64
    norms = torch.stack([w.double().pow(2).sum() for w in weights]).clamp_min(1e-30)
    x = torch.log((err / norms[:, None]).clamp_min(1e-30))
    return ((x - x.mean()) / x.std().clamp_min(1e-12)).float()


class ConfigNet(nn.Module):
    """theta: layer configuration features ``[N, 7]`` (int64) and, with ``context``, the whole
    configuration's ``[CONTEXT_FEATURES]`` -> U ``[N, r, r]``, all layers in one call."""

    def __init__(self, rank: int, num_blocks: int, num_module_types: int, embed_dim: int = 8, hidden: int = 128,
                 context: bool = False, error: bool = False):
        super().__init__()
        self.rank = rank
        self.context = context
        self.error = error
        sizes = (*FIELD_SIZES, num_blocks, num_module_types)
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in sizes)
        width = embed_dim * len(sizes) + (CONTEXT_FEATURES if context else 0) + (1 if error else 0)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, hidden),
            nn.SiLU(),
            nn.Linear(hidden, rank * rank),
        )
        # Start as plain LoRA: M ~ 0 so U ~ I (method.md 3.2).
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)
        self.gamma = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: torch.Tensor, context: torch.Tensor | None = None,
                error: torch.Tensor | None = None) -> torch.Tensor:
        """U = I + gamma * M for every row of ``features`` ``[N, 7]``, each row also seeing ``context``
        ``[CONTEXT_FEATURES]`` and its layer's ``error`` ``[N]`` where theta takes them (and only then);
        returns ``[N, r, r]``."""
        if (context is not None) != self.context:
            raise ValueError(f"this theta {'takes' if self.context else 'takes no'} configuration context")
        if (error is not None) != self.error:
            raise ValueError(f"this theta {'takes' if self.error else 'takes no'} layer errors")
        parts = [emb(features[:, j]) for j, emb in enumerate(self.embeddings)]
        if context is not None:
            parts.append(context.to(parts[0].dtype).expand(features.shape[0], CONTEXT_FEATURES))
        if error is not None:
            parts.append(error.to(parts[0].dtype).view(-1, 1))
        z = torch.cat(parts, dim=-1)
        m = self.mlp(z).view(-1, self.rank, self.rank)
        eye = torch.eye(self.rank, dtype=m.dtype, device=m.device)
        return eye + self.gamma * m


class CoALoRALinear(nn.Module):
    """A frozen linear (whose weight the :class:`~coalora.apply.ConfigApplier` swaps) plus LoRA with U.

    ``U`` ``[r, r]`` is set by :class:`CoALoRAModel` before each forward; ``None`` means the identity
    (plain LoRA).

    With ``merge`` on, a forward without autograd uses one merged weight ``W_C + s B (U A)``
    ``[d_out, d_in]`` (built on first use, rebuilt when U, the quantized weight or A, B change):
    evaluation and sampling then cost what the dense model costs, as PEFT's ``merge_and_unload``
    does, for one weight copy per layer. Training (autograd on) always takes the unmerged path.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, scaling: float):
        super().__init__()
        self.base_layer = base_layer
        self.scaling = scaling
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.zeros(rank, base_layer.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, dtype=w.dtype, device=w.device))
        self._u: torch.Tensor | None = None
        self._u_version = 0
        self.enabled = True
        self.merge = False
        self._merged: torch.Tensor | None = None
        self._merged_key: tuple | None = None

    @property
    def U(self) -> torch.Tensor | None:
        return self._u

    @U.setter
    def U(self, value: torch.Tensor | None) -> None:
        self._u = value
        self._u_version += 1  # a new U, even one at a recycled address, invalidates the merged weight

    def merged_weight(self) -> torch.Tensor:
        """``W_C + s B (U A)`` ``[d_out, d_in]``, cached until U, W_C, A or B change."""
        w = self.base_layer.weight
        key = (self._u_version, w.data_ptr(), w._version, self.lora_A._version, self.lora_B._version)
        if self._merged is None or self._merged_key != key:
            with torch.no_grad():
                a = self.lora_A if self._u is None else self._u.detach() @ self.lora_A
                self._merged = torch.addmm(w, self.lora_B, a, alpha=self.scaling)
            self._merged_key = key
        return self._merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base_layer(x)
        if self.merge and not torch.is_grad_enabled():
            return F.linear(x, self.merged_weight(), self.base_layer.bias)
        # Fold U into A first (A' = U A, [r, d_in]): r*r*d_in flops per layer, negligible next to the
        # tokens, and the same arithmetic order as the exported PEFT adapter, so both agree to float
        # rounding (x A^T U^T B^T in another order drifts by ~1e-4 in the logits over 30 blocks).
        a = self.lora_A if self.U is None else self.U @ self.lora_A
        return self.base_layer(x) + F.linear(F.linear(x, a), self.lora_B) * self.scaling


def _module_type_index(targets: Sequence[Target]) -> dict[str, int]:
    types: list[str] = []
    for t in targets:
        if t.module_type not in types:
            types.append(t.module_type)
    return {m: i for i, m in enumerate(types)}


class CoALoRAModel(nn.Module):
    """A causal LM with configuration-aware LoRA on every target matrix.

    Owns a :class:`~coalora.apply.ConfigApplier` (which holds the original weights), theta and the
    shared LoRA pairs. ``forward(config=C, ...)`` quantizes the base under C (cached) and runs the
    model with U computed for C.

    Example:
        >>> m = CoALoRAModel(model, "smollm2-135m", targets, AdapterConfig(rank=16))
        >>> out = m(input_ids=ids, labels=ids, config=cfg)
    """

    def __init__(self, model: nn.Module, model_name: str, targets: Sequence[Target], adapter: AdapterConfig,
                 cache_bytes: int | None = None, seed: int = 0, initialize: bool = True):
        super().__init__()
        from coalora.apply import DEFAULT_CACHE_BYTES, ConfigApplier

        self.model = model
        self.model_name = model_name
        self.targets = tuple(targets)
        self.adapter_config = adapter
        for p in model.parameters():
            p.requires_grad_(False)
        # The applier keeps the nn.Linear objects; they stay alive as each wrapper's base_layer.
        self.applier = ConfigApplier(model, model_name, list(self.targets),
                                     DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes, adapter.base_spec)
        self.type_index = _module_type_index(self.targets)
        self.num_blocks = max(t.block for t in self.targets) + 1
        self.theta = ConfigNet(adapter.rank, self.num_blocks, len(self.type_index), adapter.embed_dim, adapter.hidden,
                               context=adapter.theta_context, error=adapter.theta_error)
        self.layers: dict[str, CoALoRALinear] = {}
        modules = dict(model.named_modules())
        for t, lin in target_modules_of(model, list(self.targets)).items():
            wrapper = CoALoRALinear(lin, adapter.rank, adapter.scaling)
            parent_name, _, child = t.rpartition(".")
            setattr(modules[parent_name], child, wrapper)
            self.layers[t] = wrapper
        self._lora = nn.ModuleDict({t.replace(".", "__"): m for t, m in self.layers.items()})
        self._static = torch.tensor([[t.block, self.type_index[t.module_type]] for t in self.targets], dtype=torch.long)
        self.theta.to(next(model.parameters()).device)
        self._error = (error_features([self.applier.originals[t.name] for t in self.targets])
                       if adapter.theta_error else None)  # [N, 432]
        if initialize:  # skipped when trained weights are loaded right after
            self.init_lora(seed)

    # ---- initialisation

    @torch.no_grad()
    def init_lora(self, seed: int = 0) -> None:
        """Initialise every A, B (``lq``: SVD of the reference residual; ``peft``: Kaiming A, zero B)."""
        from coalora.lq import svd_split
        from coalora.quant import fake_quantize

        g = torch.Generator().manual_seed(seed)
        ref = resolve_preset(self.adapter_config.ref_preset)
        r, s = self.adapter_config.rank, self.adapter_config.scaling
        for name, layer in self.layers.items():
            if self.adapter_config.init == "peft":
                # PEFT's LoRA default: kaiming_uniform_(A, a=sqrt(5)) and B = 0.
                bound = 1.0 / math.sqrt(layer.lora_A.shape[1])
                layer.lora_A.copy_(torch.empty_like(layer.lora_A).uniform_(-bound, bound, generator=g))
                layer.lora_B.zero_()
                continue
            w = self.applier.originals[name].float()
            l1, l2 = svd_split(w - fake_quantize(w, ref), r)  # [d_out, r], [r, d_in]
            layer.lora_A.copy_(l2 / math.sqrt(s))
            layer.lora_B.copy_(l1 / math.sqrt(s))

    # ---- configuration-dependent parts

    def features(self, config: ModelQuantConfig) -> torch.Tensor:
        """theta's input ``[N, 7]``: the 5 value indices, block index, module type."""
        self._check_config(config)
        return torch.cat([config.index_matrix(), self._static], dim=1).to(self.theta.gamma.device)

    def u_matrices(self, config: ModelQuantConfig) -> torch.Tensor:
        """U for every target under ``config``, ``[N, r, r]`` (one batched theta call)."""
        device = self.theta.gamma.device
        context = config_context(config).to(device) if self.theta.context else None
        error = None
        if self._error is not None:
            error = self._error[torch.arange(len(self.targets)), torch.tensor(config.ids)].to(device)
        return self.theta(self.features(config), context, error)

    def set_config(self, config: ModelQuantConfig) -> None:
        """Quantize the base under ``config`` and bind each layer's U (kept in the autograd graph)."""
        self.applier.apply(config)
        us = self.u_matrices(config)
        for i, t in enumerate(self.targets):
            self.layers[t.name].U = us[i]

    def set_merge(self, on: bool = True) -> None:
        """Merge each layer's LoRA into its weight for forwards without autograd (eval, sampling);
        off: drop the merged copies (one weight copy per layer)."""
        for layer in self.layers.values():
            layer.merge = on
            if not on:
                layer._merged, layer._merged_key = None, None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the bare (quantized) base model: every LoRA term is skipped inside the block."""
        for layer in self.layers.values():
            layer.enabled = False
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.enabled = True

    def forward(self, *args, config: ModelQuantConfig | None = None, **kwargs):
        if config is not None:
            self.set_config(config)
        return self.model(*args, **kwargs)

    def _check_config(self, config: ModelQuantConfig) -> None:
        if config.model != self.model_name or tuple(t.name for t in config.targets) != tuple(t.name for t in self.targets):
            raise CoaloraError(f"configuration is for model {config.model!r}, not {self.model_name!r}")

    # ---- parameters

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """theta and every A, B, keyed ``theta.*`` / ``lora.<module>.lora_A|lora_B`` (detached)."""
        out = {f"theta.{k}": v.detach() for k, v in self.theta.state_dict().items()}
        for name, layer in self.layers.items():
            out[f"lora.{name}.lora_A"] = layer.lora_A.detach()
            out[f"lora.{name}.lora_B"] = layer.lora_B.detach()
        return out

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state`; every key must be present with its exact shape."""
        expected = self.trainable_state()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            raise CoaloraError(f"adapter weights do not match this model/adapter ({what}); "
                               "was it trained for another model or with another rank?")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CoaloraError(f"adapter tensor {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)} "
                                   "(another model or rank?)")
        self.theta.load_state_dict({k.removeprefix("theta."): v for k, v in state.items() if k.startswith("theta.")})
        for name, layer in self.layers.items():
            layer.lora_A.copy_(state[f"lora.{name}.lora_A"])
            layer.lora_B.copy_(state[f"lora.{name}.lora_B"])

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def generate(self, config: ModelQuantConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The plain LoRA for ``config``: ``{module: (A' = U A [r, d_in], B [d_out, r])}`` (spec S6)."""
        us = self.u_matrices(config)
        return {t.name: (us[i] @ self.layers[t.name].lora_A, self.layers[t.name].lora_B)
                for i, t in enumerate(self.targets)}
