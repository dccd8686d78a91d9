"""The packed runtime: linear layers that keep a configuration's bit-packed codes and dequantize on the fly.

The fake-quantized path (:mod:`coalora.adapter.apply`) keeps every original weight plus a dequantized copy
(4 + 4 bytes per weight in fp32) so that configurations can be switched in place; that is what
training and the explorer need. A *deployed* configuration needs neither: :class:`PackedLinear`
stores exactly what :func:`coalora.quant.nf.pack` writes (b0-bit weight codes, b1-bit scale codes,
second-level scales in the b2 format, the offset; method.md section 1.4), about ``avg_bits / 8``
bytes per weight, and rebuilds the weight ``x^ = code[idx] * s^_j`` in each forward, one layer at a
time (a temporary of ``d_out x d_in`` in the compute dtype, freed after the matmul).

The dequantized weight is bit-identical to :func:`coalora.quant.nf.fake_quantize` (same codebook
values, same float32 scale arithmetic, then one cast to the compute dtype), so a packed model's
logits equal the fake-quantized model's on the same configuration.

Decoding runs in torch on the layer's device (CPU or CUDA; no host round trip per forward):
byte-aligned widths (2, 4, 8 bits) read each packed byte through a ``[256, 8/b]`` table of codebook
values; 3-bit codes are read 8 at a time from 3-byte words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coalora.errors import CoaloraError
from coalora.quant.config import ModelQuantConfig, QuantConfig
from coalora.quant.nf import SCALE2_DTYPES, dequantize_scales, nf_codebook, pack, packed_layout, quantize

# Integer views of the float scale state, so that ``model.to(dtype)`` (which casts floating buffers)
# cannot round the stored scales: the bits stay what pack() wrote.
_INT_VIEW: dict[torch.dtype, torch.dtype] = {torch.bfloat16: torch.int16, torch.float16: torch.int16,
                                             torch.float32: torch.int32}


# --------------------------------------------------------------------------------------------- decoding


@cache
def _byte_table_cpu(bits: int, k: int | None) -> Tensor:
    """``[256, 8 // bits]``: the values of the codes packed in each byte, LSB first.

    ``k`` given: float32 NF-k codebook values; ``None``: the integer codes (int32).
    """
    per = 8 // bits
    byte = torch.arange(256, dtype=torch.int32)[:, None]
    codes = (byte >> (torch.arange(per, dtype=torch.int32) * bits)) & ((1 << bits) - 1)
    return codes if k is None else nf_codebook(k)[codes.long()]


@cache
def _byte_table(bits: int, k: int | None, device: torch.device) -> Tensor:
    """:func:`_byte_table_cpu` on ``device``, copied there once (no host transfer per forward)."""
    return _byte_table_cpu(bits, k).to(device)


@cache
def _codebook_on(k: int, device: torch.device) -> Tensor:
    return nf_codebook(k).to(device)


def unpack_codes(packed: Tensor, bits: int, n: int) -> Tensor:
    """The first ``n`` ``bits``-bit codes of a :func:`coalora.quant.nf.pack` bit stream: int32 ``[n]``.

    ``packed``: uint8 ``[ceil(n/8) * bits]`` on any device; the result is on the same device.
    """
    if bits == 8:
        return packed[:n].to(torch.int32)
    if 8 % bits == 0:
        return _byte_table(bits, None, packed.device).index_select(0, packed.to(torch.int32)).reshape(-1)[:n]
    # 8 codes span ``bits`` whole bytes: read them as one little-endian word (bits <= 3 fits int32).
    if bits > 3:
        raise CoaloraError(f"packed codes of {bits} bits are not a coalora width (2, 3, 4 or 8)")
    g = packed.view(-1, bits).to(torch.int32)
    word = g[:, 0]
    for j in range(1, bits):
        word = word | (g[:, j] << (8 * j))
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32) * bits
    return ((word[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]


def code_values(packed: Tensor, k: int, n: int) -> Tensor:
    """NF-k codebook values of the first ``n`` packed ``k``-bit codes: float32 ``[n]``."""
    if 8 % k == 0 and k != 8:
        return _byte_table(k, k, packed.device).index_select(0, packed.to(torch.int32)).reshape(-1)[:n]
    return _codebook_on(k, packed.device).index_select(0, unpack_codes(packed, k, n))


# --------------------------------------------------------------------------------------------- the layer


class PackedLinear(nn.Linear):
    """``y = x W^T + b`` with ``W`` stored bit-packed under one :class:`QuantConfig`.

    A subclass of ``nn.Linear`` (with ``in_features``/``out_features``) so that target discovery and
    peft's LoRA wrapping accept it; ``weight`` is not a parameter but the dequantized weight, rebuilt
    on each access. Buffers (all integer, so ``.to(device)`` moves them and ``.to(dtype)`` leaves them
    alone): ``codes`` uint8 ``[ceil(n/8) * b0]``, ``scale_codes`` uint8 ``[ceil(blocks/8) * b1]``,
    ``scales2`` the b2 values' bits ``[groups]``, ``offset`` float32 bits ``[1]``.
    """

    def __init__(self, packed: dict[str, Tensor], bias: Tensor | None = None, dtype: torch.dtype = torch.float32):
        nn.Module.__init__(self)
        shape, config = packed_layout(packed)
        if len(shape) != 2:
            raise CoaloraError(f"a packed linear weight is 2-D [d_out, d_in], got shape {list(shape)}")
        self.out_features, self.in_features = shape
        self.config: QuantConfig = config
        self.compute_dtype = dtype
        device = packed["codes"].device
        self.register_buffer("codes", packed["codes"].contiguous())
        self.register_buffer("scale_codes", packed["scale_codes"].to(device).contiguous())
        s2 = packed["scales2"].to(device).contiguous()
        self.register_buffer("scales2", s2.view(_INT_VIEW[s2.dtype]))
        self.register_buffer("offset", packed["offset"].to(device).float().contiguous().view(torch.int32))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(device, dtype), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig, dtype: torch.dtype | None = None) -> PackedLinear:
        """Quantize ``linear.weight`` under ``config`` and pack it (on the weight's device)."""
        w = linear.weight.detach()
        dtype = dtype or w.dtype
        packed = {k: v.to(w.device) for k, v in pack(quantize(w.float(), config)).items()}
        return cls(packed, linear.bias, dtype)

    @property
    def n(self) -> int:
        """Weights in the layer, ``d_out * d_in``."""
        return self.out_features * self.in_features

    def scales(self) -> Tensor:
        """Dequantized first-level scales s^_j: float32 ``[ceil(n / B0)]``."""
        c = self.config
        blocks = -(-self.n // c.B0)
        q = unpack_codes(self.scale_codes, c.b1, blocks)
        groups = self.scales2.numel()
        padded = torch.zeros(groups * c.B1, dtype=torch.int32, device=q.device)
        padded[:blocks] = q
        s2 = self.scales2.view(SCALE2_DTYPES[c.b2])
        return dequantize_scales(padded, s2, self.offset.view(torch.float32).reshape(()), c.b1)[:blocks]

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """``W^ [d_out, d_in]`` in ``dtype`` (default the compute dtype), equal to ``fake_quantize``'s."""
        c = self.config
        scales = self.scales()
        values = code_values(self.codes, c.b0, self.n)
        pad = scales.numel() * c.B0 - self.n
        if pad:
            values = torch.cat([values, values.new_zeros(pad)])
        w = values.view(-1, c.B0).mul_(scales[:, None]).view(-1)[: self.n].view(self.out_features, self.in_features)
        return w.to(dtype or self.compute_dtype)

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The dequantized weight (computed on access; nothing full-size is stored)."""
        return self.dequantize()

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., d_in]`` -> ``[..., d_out]`` with the weight dequantized on the fly."""
        w = self.dequantize(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def packed_nbytes(self) -> int:
        """Bytes held by this layer: packed buffers plus the bias."""
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return b + sum(t.numel() * t.element_size() for t in self.buffers())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, config={self.config}, " \
               f"compute_dtype={self.compute_dtype}"


# --------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ResidentBytes:
    """Bytes a model holds in tensors, split the way the memory target counts them."""

    packed: int
    """Packed target layers (codes, scales, biases)."""
    full_precision: int
    """Every other parameter and buffer (embeddings, norms, ``lm_head``), each counted once."""

    @property
    def total(self) -> int:
        """All resident bytes."""
        return self.packed + self.full_precision


def resident_bytes(model: nn.Module) -> ResidentBytes:
    """What ``model``'s tensors occupy, shared storages (tied embeddings) counted once."""
    seen: set[int] = set()
    packed = full = 0
    for m in model.modules():
        own = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        for _, t in own:
            if t.device.type == "meta":
                continue
            key = t.untyped_storage().data_ptr()
            if key in seen:
                continue
            seen.add(key)
            size = t.untyped_storage().nbytes()
            if isinstance(m, PackedLinear):
                packed += size
            else:
                full += size
    return ResidentBytes(packed, full)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def _plain_linear(model: nn.Module, name: str) -> nn.Linear:
    m = model.get_submodule(name)
    if type(m) is not nn.Linear:
        raise CoaloraError(f"{name} is a {type(m).__name__}, not a plain nn.Linear: pack the model before adding "
                           "adapters, and only once")
    return m


def own_storage(model: nn.Module) -> None:
    """Give every remaining parameter and buffer its own memory (one tensor at a time).

    ``from_pretrained`` maps the checkpoint file and its tensors view that mapping: as long as one of
    them (say, the embeddings) lives, every page of the file that packing read stays resident, which
    would keep the whole float model in RSS. Copies release the mapping.
    """
    with torch.no_grad():
        seen: dict[int, Tensor] = {}
        for m in model.modules():
            if isinstance(m, PackedLinear):
                continue
            for store in (m._parameters, m._buffers):
                for k, t in store.items():
                    if t is None or t.device.type != "cpu":
                        continue
                    key = t.untyped_storage().data_ptr()
                    if key not in seen:  # tied weights stay tied
                        seen[key] = t.detach().clone()
                    if isinstance(t, nn.Parameter):
                        t.data = seen[key]
                    else:
                        store[k] = seen[key]


def pack_model(model: nn.Module, config: ModelQuantConfig, dtype: torch.dtype | None = None) -> int:
    """Replace every target ``nn.Linear`` of ``config`` by a :class:`PackedLinear`, in place.

    Each original weight is quantized, packed and dropped before the next one, so the peak stays
    near the unpacked model's size. Returns the packed bytes of all targets.
    """
    total = 0
    for t, c in zip(config.targets, config.configs):
        lin = _plain_linear(model, t.name)
        if tuple(lin.weight.shape) != tuple(t.shape):
            raise CoaloraError(f"{t.name} has shape {tuple(lin.weight.shape)}, the configuration expects {t.shape}")
        with torch.no_grad():
            new = PackedLinear.from_linear(lin, c, dtype)
        _set_module(model, t.name, new)
        total += new.packed_nbytes()
        del lin
    own_storage(model)
    return total


def load_packed(model: nn.Module, config: ModelQuantConfig, tensors: dict[str, Tensor], where: str = "bundle",
                dtype: torch.dtype | None = None) -> int:
    """Install packed weights ``{"<module>.<key>": tensor}`` (what an exported bundle stores) in place.

    Each packed weight must be the configuration's and fit its module; returns the packed bytes.
    """
    from coalora.quant.nf import PACK_KEYS

    total = 0
    for t, c in zip(config.targets, config.configs):
        lin = _plain_linear(model, t.name)
        d = {k: tensors[f"{t.name}.{k}"] for k in PACK_KEYS if f"{t.name}.{k}" in tensors}
        try:
            shape, qc = packed_layout(d)
        except CoaloraError as e:
            raise CoaloraError(f"{where}: packed weight of {t.name}: {e}") from None
        if qc != c or tuple(shape) != tuple(lin.weight.shape):
            raise CoaloraError(f"{where}: packed weight of {t.name} does not match its configuration")
        device = lin.weight.device
        new = PackedLinear({k: v.to(device) for k, v in d.items()}, lin.bias, dtype or lin.weight.dtype)
        _set_module(model, t.name, new)
        total += new.packed_nbytes()
    own_storage(model)
    return total


def packed_target_bytes(config: ModelQuantConfig) -> int:
    """Bytes of the packed format of every target under ``config`` (what :func:`pack` writes)."""
    from coalora.quant.nf import packed_lengths

    total = 0
    for t, c in zip(config.targets, config.configs):
        _, _, groups, code_bytes, scale_bytes = packed_lengths(tuple(t.shape), c)
        total += code_bytes + scale_bytes + groups * SCALE2_DTYPES[c.b2].itemsize + 4
    return total


def describe_packed(model: nn.Module) -> dict[str, float]:
    """Resident bytes of a packed model (for logs and JSON output), with the bits they amount to."""
    rb = resident_bytes(model)
    n = sum(m.n for m in model.modules() if isinstance(m, PackedLinear))
    return {"packed_bytes": rb.packed, "full_precision_bytes": rb.full_precision,
            "resident_weight_bytes": rb.total, "packed_bits_per_weight": 8 * rb.packed / n if n else math.nan}
