"""The configuration-aware adapter of CoA-LoRA, :class:`CoALoRAModel` (method.md section 3, spec S3 and S6).

Every target matrix W_i gets one LoRA pair, shared by all quantization configurations:
A_i ``[r, d_in]`` (L2) and B_i ``[d_out, r]`` (L1) in a :class:`~coalora.adapter.layer.CoALoRALinear`.
One small network theta (:class:`~coalora.adapter.theta.ConfigNet`), shared by every layer, maps a
layer's configuration to U_i = I + gamma * M_i ``[r, r]``:

    y   = x W_C^T + bias + s * ((x A_i^T) U_i^T) B_i^T,  s = alpha / r

For deployment, U folds into A (A' = U A, :meth:`CoALoRAModel.lora_for`) and the result is an
ordinary LoRA adapter (:mod:`coalora.export.peft`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from coalora.adapter.config import INITS, AdapterConfig
from coalora.adapter.layer import CoALoRALinear
from coalora.adapter.theta import ConfigNet, config_context, error_features
from coalora.errors import CoaloraError
from coalora.models import Target, target_modules_of
from coalora.quant.config import ModelQuantConfig, resolve_preset

__all__ = ["INITS", "AdapterConfig", "CoALoRALinear", "CoALoRAModel", "ConfigNet"]


def _module_type_index(targets: Sequence[Target]) -> dict[str, int]:
    types: list[str] = []
    for t in targets:
        if t.module_type not in types:
            types.append(t.module_type)
    return {m: i for i, m in enumerate(types)}


class CoALoRAModel(nn.Module):
    """A causal LM with configuration-aware LoRA on every target matrix.

    Owns a :class:`~coalora.adapter.apply.ConfigApplier` (which holds the original weights), theta and the
    shared LoRA pairs. ``forward(config=C, ...)`` quantizes the base under C (cached) and runs the
    model with U computed for C. ``cache_bytes`` bounds the applier's weight cache (None: sized from
    the free memory, :func:`~coalora.adapter.apply.auto_cache_bytes`); ``initialize=False`` skips
    :meth:`init_lora` when trained weights are loaded right after.

    Example:
        >>> m = CoALoRAModel(model, "smollm2-135m", targets, AdapterConfig(rank=8))
        >>> out = m(input_ids=ids, labels=ids, config=cfg)
    """

    def __init__(self, model: nn.Module, model_name: str, targets: Sequence[Target], adapter: AdapterConfig,
                 cache_bytes: int | None = None, seed: int = 0, initialize: bool = True):
        super().__init__()
        from coalora.adapter.apply import ConfigApplier

        self.model = model
        self.model_name = model_name
        self.targets = tuple(targets)
        self.adapter_config = adapter
        for p in model.parameters():
            p.requires_grad_(False)
        # The applier keeps the nn.Linear objects; they stay alive as each wrapper's base_layer.
        self.applier = ConfigApplier(model, model_name, list(self.targets), cache_bytes, adapter.base_spec)
        # theta's per-layer error input, [N, 432]; from the original weights, before they are wrapped.
        self._error = None
        if adapter.theta_error:
            from coalora.lqlora.sensitivity import cached_error_table

            errors = cached_error_table(model, model_name, self.targets, "none", progress=False)
            self._error = error_features(errors, [self.applier.originals[t.name] for t in self.targets])
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
        if initialize:  # skipped when trained weights are loaded right after
            self.init_lora(seed)

    # ---- initialisation

    @torch.no_grad()
    def init_lora(self, seed: int = 0) -> None:
        """Initialise every A, B (``lq``: SVD of the reference residual; ``peft``: Kaiming A, zero B)."""
        from coalora.lqlora.split import svd_split
        from coalora.quant.nf import fake_quantize

        g = torch.Generator().manual_seed(seed)
        ref = resolve_preset(self.adapter_config.ref_preset)
        for name, layer in self.layers.items():
            if self.adapter_config.init == "peft":
                # PEFT's LoRA default: kaiming_uniform_(A, a=sqrt(5)) and B = 0.
                bound = 1.0 / math.sqrt(layer.lora_A.shape[1])
                a = torch.empty_like(layer.lora_A).uniform_(-bound, bound, generator=g)
                layer.load_lora_(a, torch.zeros_like(layer.lora_B))
                continue
            w = self.applier.originals[name].float()
            layer.load_split_(*svd_split(w - fake_quantize(w, ref), self.adapter_config.rank))

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

    def set_config(self, config: ModelQuantConfig, *, theta: bool = True) -> None:
        """Quantize the base under ``config`` and bind each layer's U from theta (kept in the autograd
        graph); ``theta=False`` clears every U instead (the plain LoRA on Q_C(W): the baselines)."""
        self.applier.apply(config)
        self.set_u(self.u_matrices(config) if theta else None)

    def set_u(self, us: torch.Tensor | None) -> None:
        """Bind row i of ``us`` ``[N, r, r]`` as the U of ``targets[i]``; ``None`` clears every U (U = I).
        The base keeps whatever configuration it was quantized under."""
        if us is not None and us.shape[0] != len(self.targets):
            raise CoaloraError(f"got {us.shape[0]} U matrices for {len(self.targets)} target modules")
        for i, t in enumerate(self.targets):
            self.layers[t.name].set_u(None if us is None else us[i])

    @torch.no_grad()
    def lora_for(self, config: ModelQuantConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The plain LoRA for ``config``: ``{module: (A' = U A [r, d_in], B [d_out, r])}`` (spec S6)."""
        us = self.u_matrices(config)
        return {t.name: (us[i] @ self.layers[t.name].lora_A, self.layers[t.name].lora_B)
                for i, t in enumerate(self.targets)}

    # ---- inference modes

    def merge(self) -> None:
        """Merge each layer's LoRA into its weight for forwards without autograd (eval, sampling)."""
        for layer in self.layers.values():
            layer.merge()

    def unmerge(self, *, keep_weights: bool = False) -> None:
        """Take the LoRA path for every forward again and drop the merged copies (one weight per layer);
        ``keep_weights`` keeps them for a later :meth:`merge` (benchmarks that switch back and forth)."""
        for layer in self.layers.values():
            layer.unmerge(keep_weight=keep_weights)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the bare (quantized) base model: every LoRA term is skipped inside the block."""
        for layer in self.layers.values():
            layer.set_enabled(False)
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.set_enabled(True)

    def forward(self, *args, config: ModelQuantConfig | None = None, **kwargs):
        """The wrapped model's forward; with ``config``, :meth:`set_config` first."""
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
            layer.load_lora_(state[f"lora.{name}.lora_A"], state[f"lora.{name}.lora_B"])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """theta's parameters and every A, B (the base model is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]
