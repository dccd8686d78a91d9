"""Put a quantization configuration on a loaded model, fast (method.md section 10, S4 and S6).

Each target ``nn.Linear`` computes with the *dequantized* quantized weight (fake quantization:
the arithmetic is the real quantizer's, the storage stays float), and the original weights are
kept so that any other configuration can be applied next. Two things make switching cheap:

* only the matrices whose config changed are touched (a switch that changes k matrices costs k
  quantizations);
* a per-(matrix, config) cache of dequantized weights, bounded in bytes with least-recently-used
  eviction, so moving back and forth between configurations (training samples 2 per step from a
  few dozen) costs a lookup.

The applier holds the ``nn.Linear`` objects themselves, not their names, so it keeps working after
peft wraps them (peft keeps the original Linear as ``base_layer``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from coalora.errors import CoaloraError
from coalora.models import Target, find_targets, target_modules_of
from coalora.quant.config import ModelQuantConfig, QuantConfig
from coalora.quant.nf import fake_quantize

DEFAULT_CACHE_BYTES = 2 << 30  # 2 GiB: ~4 full SmolLM2 configurations in fp32
CACHE_FRACTION = 0.25
"""Share of the free memory (host RAM, or the GPU's for CUDA originals) a default-sized cache may take."""


def free_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Bytes free for new tensors on ``device``: ``MemAvailable`` for the host, ``mem_get_info`` for a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def auto_cache_bytes(device: torch.device | str = "cpu", fraction: float = CACHE_FRACTION,
                     cap: int = DEFAULT_CACHE_BYTES) -> int:
    """A cache size of ``fraction`` of the free memory on ``device``, at most ``cap`` bytes.

    The cap is the default cache size (2 GiB); the fraction shrinks it when a large
    model leaves little room, so the cache never pushes a run out of memory.
    """
    return max(0, min(cap, int(fraction * free_memory_bytes(device))))


@dataclass(frozen=True)
class ApplyStats:
    """What one :meth:`ConfigApplier.apply` did."""

    changed: int
    """Matrices whose configuration changed."""
    quantized: int
    """Of those, how many had to be quantized (cache misses)."""
    seconds: float
    """Wall time of the switch."""


class WeightCache:
    """LRU cache of dequantized weights keyed by (matrix name, config id) (plus the base when it is
    not the applier's), bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        if max_bytes < 0:
            raise CoaloraError(f"cache size must be non-negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        """The cached weight of (matrix name, config id), marked most recently used; None on a miss."""
        t = self._items.get(key)
        if t is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return t

    def put(self, key: tuple, t: torch.Tensor) -> None:
        """Cache ``t``, evicting least recently used weights to stay within ``max_bytes`` (a weight
        larger than the whole cache is not kept)."""
        size = t.numel() * t.element_size()
        if size > self.max_bytes:
            return  # would evict everything for one entry
        if key in self._items:
            self.bytes -= self._items.pop(key).numel() * t.element_size()
        self._items[key] = t
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def drop(self, name: str) -> None:
        """Forget every cached weight of matrix ``name`` (its original changed)."""
        for key in [k for k in self._items if k[0] == name]:
            t = self._items.pop(key)
            self.bytes -= t.numel() * t.element_size()

    def __len__(self) -> int:
        return len(self._items)

    def describe(self) -> str:
        """What the cache holds, e.g. ``'42 weights of 30 matrices, 180.0 of 2048.0 MiB (hits 40, misses 42)'``."""
        matrices = len({name for name, _ in self._items})
        return (f"{len(self._items)} weights of {matrices} matrices, {self.bytes / 2**20:.1f} of "
                f"{self.max_bytes / 2**20:.1f} MiB (hits {self.hits}, misses {self.misses})")


BASES = ("quant", "lq")


@dataclass(frozen=True)
class BaseSpec:
    """How a configuration turns a matrix's original ``W`` into the weight the model computes with.

    ``quant``: ``Q_c(W)``, the dequantized quantized weight. ``lq``: LQ-LoRA's split computed on the
    fly, ``Q_c(W - L1 L2) + L1 L2`` with a rank-``lq_rank`` ``L1 L2``, the best of at most ``lq_iters``
    alternations (:func:`coalora.lqlora.split.fast_split`): the quantized part absorbs what a low-rank term cannot, so
    the base under low-bit configurations stays close to ``W`` (method.md 2.1). Its ``L1 L2`` is a
    full-precision low-rank term beside the adapter (an extra ``lq_rank`` of adapter rank when
    deployed), and it depends only on the matrix's own configuration, so the per-(matrix, config)
    cache holds it like any quantized weight.
    """

    kind: str = "quant"
    lq_rank: int = 8
    lq_iters: int = 5

    def __post_init__(self) -> None:
        if self.kind not in BASES:
            raise CoaloraError(f"unknown base {self.kind!r}; use one of {', '.join(BASES)}")
        if self.lq_rank < 1 or self.lq_iters < 1:
            raise CoaloraError(f"lq_rank and lq_iters must be positive, got {self.lq_rank}, {self.lq_iters}")

    def weight(self, w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
        """The computed weight ``[d_out, d_in]`` float32 of original ``w`` under ``config``."""
        if self.kind == "quant":
            return fake_quantize(w, config)
        from coalora.lqlora.split import fast_split

        split = fast_split(w, config, self.lq_rank, self.lq_iters)
        return split.q + split.l1 @ split.l2


class ConfigApplier:
    """Switch a model between quantization configurations.

    Example:
        >>> applier = ConfigApplier(model, "smollm2-135m")
        >>> applier.apply(cfg)          # every target now computes with its quantized weight
        >>> applier.restore()           # back to the original weights

    ``cache_bytes``: the weight cache's bound; None sizes it with :func:`auto_cache_bytes`.
    """

    def __init__(self, model: nn.Module, model_name: str, targets: list[Target] | None = None,
                 cache_bytes: int | None = None, base: BaseSpec | None = None):
        self.model = model
        self.base = base or BaseSpec()
        self.model_name = model_name
        self.targets = tuple(targets if targets is not None else find_targets(model))
        self.linears: dict[str, nn.Linear] = target_modules_of(model, list(self.targets))
        # The originals are what every configuration quantizes: the loaded weights themselves (detached,
        # so training never tracks them), not a copy. Once a configuration is applied each layer computes
        # with its quantized weight and the originals are the one other copy; a clone would make a third
        # while the loaded tensors (often a memory map of the checkpoint) stay resident. Nothing writes into
        # a weight in place: every configuration, restore() and set_original() rebind ``weight.data``.
        self.originals = {name: lin.weight.detach() for name, lin in self.linears.items()}
        self.current: dict[str, int | None] = {name: None for name in self.linears}
        self.current_base: dict[str, BaseSpec | None] = {name: None for name in self.linears}
        if cache_bytes is None:  # sized from the free memory where the weights live
            device = next(iter(self.originals.values())).device if self.originals else torch.device("cpu")
            cache_bytes = auto_cache_bytes(device)
        self.cache = WeightCache(cache_bytes)

    def uniform(self, config: QuantConfig) -> ModelQuantConfig:
        """The model's configuration with ``config`` on every target."""
        return ModelQuantConfig.uniform(self.model_name, self.targets, config)

    @property
    def applied(self) -> ModelQuantConfig | None:
        """The configuration now on the model under this applier's base (None if any matrix holds its
        original weight or another base's)."""
        if any(v is None for v in self.current.values()) or any(b != self.base for b in self.current_base.values()):
            return None
        return ModelQuantConfig.from_ids(self.model_name, self.targets, [self.current[t.name] for t in self.targets])  # type: ignore[misc]

    def quantized_weight(self, name: str, config: QuantConfig, base: BaseSpec | None = None) -> tuple[torch.Tensor, bool]:
        """Weight of one matrix under ``config`` (and ``base``, default this applier's) and whether it
        was computed (a miss)."""
        base = base or self.base
        key = (name, config.id) if base == self.base else (name, config.id, base)
        w = self.cache.get(key)
        if w is not None:
            return w, False
        orig = self.originals[name]
        w = base.weight(orig.float(), config).to(orig.dtype)
        self.cache.put(key, w)
        return w, True

    def apply(self, config: ModelQuantConfig, base: BaseSpec | None = None) -> ApplyStats:
        """Make every target compute with its weight quantized under ``config``; ``base`` overrides this
        applier's base for this call (``BaseSpec()``: plain quantization under an ``lq`` adapter, the
        quantized model alone)."""
        if config.model != self.model_name or tuple(t.name for t in config.targets) != tuple(t.name for t in self.targets):
            raise CoaloraError(
                f"configuration is for model {config.model!r}, not {self.model_name!r} (its modules do not match)"
            )
        base = base or self.base
        t0 = time.perf_counter()
        changed = quantized = 0
        for target, c in zip(config.targets, config.configs):
            if self.current[target.name] == c.id and self.current_base[target.name] == base:
                continue
            w, miss = self.quantized_weight(target.name, c, base)
            # Rebinding .data shares the cached tensor: no copy, and weights are frozen, so nobody writes to it.
            self.linears[target.name].weight.data = w
            self.current[target.name] = c.id
            self.current_base[target.name] = base
            changed += 1
            quantized += int(miss)
        return ApplyStats(changed, quantized, time.perf_counter() - t0)

    def set_original(self, name: str, weight: torch.Tensor) -> None:
        """Make ``weight`` what every configuration of matrix ``name`` quantizes (LQ-LoRA's base
        quantizes ``W - L1 L2``); its cached quantized weights are dropped and the original is put on."""
        self.originals[name] = weight.detach()
        self.cache.drop(name)
        self.linears[name].weight.data = self.originals[name]
        self.current[name] = self.current_base[name] = None

    def restore(self) -> None:
        """Put the original (unquantized) weights back."""
        for name, lin in self.linears.items():
            lin.weight.data = self.originals[name]
            self.current[name] = self.current_base[name] = None
