"""NF-k quantization with block-wise absmax double quantization (method.md section 1.4, LQ-LoRA).

A weight matrix W is stored under a configuration c = (b0, b1, b2, B0, B1) as

1. W flattened row-major and zero-padded to a multiple of B0*B1, viewed as blocks of B0 weights;
2. s_j = max|x| over block j; a global offset o = min_j s_j over blocks holding real weights;
3. per group of B1 blocks, t_g = max_j (s_j - o), stored in the b2 float format;
4. b1-bit unsigned scale codes q_j = round((s_j - o) * (2^b1 - 1) / t_g), giving the dequantized
   scale s^_j = o + q_j * t_g / (2^b1 - 1);
5. b0-bit weight codes: the index of the NF-b0 codebook entry nearest to x / s^_j, so that
   x^ = code[idx] * s^_j (both LQ-LoRA's fake and real paths scale by the *dequantized* scale).

Padding never changes how real weights are quantized: padded blocks are all-zero, they are left out
of the offset, their scale codes sit at 0 and padded weights map to the exact-zero code. The packed
format (:func:`pack`) does not store padding at all.

The NF-k codebooks and the nearest-code search live in :mod:`coalora.quant.codebook`; this module
holds the scales, :func:`quantize` / :func:`fake_quantize` and the bit-packed storage format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from coalora.errors import CoaloraError
from coalora.quant.codebook import NF_DELTA, nearest_code_index, nearest_code_value, nf_codebook, zero_code
from coalora.quant.config import SCALE2_FORMATS, QuantConfig

__all__ = [
    "SCALE2_DTYPES", "NF_DELTA", "PACK_KEYS", "DoubleQuantizedScales", "QuantizedTensor", "block_absmax",
    "check_weight", "dequantize_scales", "double_quantize", "fake_quantize", "nearest_code_index",
    "nearest_code_value", "nf_codebook", "normalized_blocks", "pack", "pack_bits", "packed_layout",
    "packed_lengths", "packed_nbytes", "quantize", "unpack", "unpack_bits", "zero_code",
]

#: torch dtype of each b2 (second-level scale) format.
SCALE2_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

_CHUNK = 1 << 18  # weights per fake_quantize pass; a multiple of every B0


# --------------------------------------------------------------------------------------------- scales


def check_weight(w: Tensor) -> None:
    """Raise :class:`CoaloraError` unless ``w`` is a non-empty floating-point tensor."""
    if not isinstance(w, Tensor):
        raise CoaloraError(f"expected a torch.Tensor weight, got {type(w).__name__}")
    if not w.is_floating_point():
        raise CoaloraError(f"expected a floating-point weight, got dtype {w.dtype}")
    if w.numel() == 0:
        raise CoaloraError(f"cannot quantize an empty weight of shape {tuple(w.shape)}")


def _flat_padded(w: Tensor, multiple: int) -> Tensor:
    """float32 ``[ceil(numel/multiple) * multiple]``: ``w`` row-major, then zeros."""
    flat = w.reshape(-1)
    pad = -flat.numel() % multiple
    if pad:
        return torch.cat([flat.float(), flat.new_zeros(pad, dtype=torch.float32)])
    return flat.float().contiguous()


def block_absmax(flat: Tensor, B0: int) -> Tensor:  # noqa: N803 (the paper's symbol)
    """First-level scales s_j = max|x| over each block of ``B0``: ``[numel // B0]`` float32.

    Raises :class:`CoaloraError` if the weight holds NaN or inf (amax propagates both).
    """
    absmax = flat.view(-1, B0).abs().amax(dim=1)
    if not math.isfinite(float(absmax.max())):
        raise CoaloraError("cannot quantize a weight with NaN or infinite values")
    return absmax


@dataclass
class DoubleQuantizedScales:
    """The double-quantized first-level scales of one tensor under one (b1, b2, B1)."""

    scale_codes: Tensor
    """uint8 ``[n_blocks]``: q_j in [0, 2^b1 - 1]."""
    scales2: Tensor
    """``[n_blocks // B1]`` in the b2 dtype: t_g, the max of (s_j - o) over the group."""
    offset: Tensor
    """float32 scalar: o, the smallest s_j over blocks with real weights."""
    scales: Tensor
    """float32 ``[n_blocks]``: the dequantized scales s^_j = o + q_j * t_g / (2^b1 - 1)."""


def dequantize_scales(scale_codes: Tensor, scales2: Tensor, offset: Tensor, b1: int) -> Tensor:
    """s^_j = o + q_j * t_g / (2^b1 - 1): float32 ``[n_blocks]`` from the stored scale state."""
    step = scales2.float() / (2**b1 - 1)
    return (scale_codes.view(step.numel(), -1).float() * step[:, None]).add_(offset).reshape(-1)


def double_quantize(absmax: Tensor, b1: int, b2: str, B1: int, n_real_blocks: int) -> DoubleQuantizedScales:  # noqa: N803
    """Double-quantize first-level scales ``absmax [n_blocks]`` (a multiple of ``B1``).

    Only the first ``n_real_blocks`` blocks hold real weights: the rest (all-zero padding) are left
    out of the offset and clamped to it, so they change neither the offset nor any group max.
    """
    levels = 2**b1 - 1
    offset = absmax[:n_real_blocks].min()
    shifted = (absmax - offset).clamp_(min=0.0).view(-1, B1)
    scales2 = shifted.amax(dim=1).to(SCALE2_DTYPES[b2])
    t = scales2.float()  # the stored (rounded) value is the one the decoder will see
    if not bool(torch.isfinite(t).all()):
        raise CoaloraError(f"block scales up to {float(t.max())} overflow the {b2} second-level scale format")
    # t == 0 (every scale in the group equals the offset) would give 0/0; those codes are 0.
    inv = torch.where(t > 0, levels / t, torch.zeros_like(t))
    scale_codes = (shifted * inv[:, None]).round_().clamp_(0, levels).to(torch.uint8).view(-1)
    return DoubleQuantizedScales(scale_codes, scales2, offset, dequantize_scales(scale_codes, scales2, offset, b1))


def normalized_blocks(blocks: Tensor, scales: Tensor) -> Tensor:
    """x / s^_j: ``blocks [M, B0]`` over ``scales [M]``, a new float32 ``[M, B0]``; an all-zero
    scale divides by 1 so that 0/0 never occurs."""
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    return blocks / safe[:, None]


# --------------------------------------------------------------------------------------------- quantize


@dataclass
class QuantizedTensor:
    """A weight stored under a :class:`QuantConfig`: b0-bit weight codes plus double-quantized scales.

    ``n_padded`` is ``numel`` rounded up to a multiple of ``B0 * B1``.
    """

    codes: Tensor
    """uint8 ``[n_padded]``: NF-b0 codebook index of every weight, padding included (the zero code)."""
    scale_codes: Tensor
    """uint8 ``[n_padded // B0]``: b1-bit first-level scale codes."""
    scales2: Tensor
    """``[n_padded // (B0 * B1)]`` in the b2 dtype: second-level scales."""
    offset: Tensor
    """float32 scalar: the global scale offset."""
    shape: tuple[int, ...]
    """Shape of the original weight."""
    config: QuantConfig

    @property
    def numel(self) -> int:
        """Weights in the original tensor (padding excluded)."""
        return math.prod(self.shape)

    @property
    def padding_overhead(self) -> float:
        """Padded weights per real weight in this in-memory form (0.037 for 192x576 at B0*B1=16384).

        :func:`pack` stores no padding, so the packed size carries (almost) none of this overhead.
        """
        return self.codes.numel() / self.numel - 1.0

    def scales(self) -> Tensor:
        """Dequantized first-level scales s^_j, float32 ``[n_padded // B0]``."""
        return dequantize_scales(self.scale_codes, self.scales2, self.offset, self.config.b1)

    def dequantize(self) -> Tensor:
        """x^ = code[idx] * s^_j: float32 tensor of the original shape."""
        values = nf_codebook(self.config.b0).to(self.codes.device)[self.codes.long()]
        out = values.view(-1, self.config.B0).mul_(self.scales()[:, None])
        return out.view(-1)[: self.numel].view(self.shape)


def quantize(w: Tensor, config: QuantConfig) -> QuantizedTensor:
    """Quantize ``w`` (any shape, floating point, finite) under ``config`` (method.md 1.4)."""
    check_weight(w)
    B0, B1 = config.B0, config.B1  # noqa: N806
    flat = _flat_padded(w, B0 * B1)
    absmax = block_absmax(flat, B0)
    dq = double_quantize(absmax, config.b1, config.b2, B1, n_real_blocks=-(-w.numel() // B0))
    codes = nearest_code_index(normalized_blocks(flat.view(-1, B0), dq.scales), config.b0).view(-1)
    return QuantizedTensor(codes, dq.scale_codes, dq.scales2, dq.offset, tuple(w.shape), config)


def fake_quantize(w: Tensor, config: QuantConfig) -> Tensor:
    """``quantize(w, config).dequantize()`` bit for bit, without materializing codes: float32, shape of ``w``."""
    check_weight(w)
    B0, B1 = config.B0, config.B1  # noqa: N806
    n = w.numel()
    # Weights only need padding to whole blocks (never, for 576-wide rows); the group padding is
    # done on the B1x smaller scale vector instead, which is equivalent and saves a copy.
    flat = _flat_padded(w, B0)
    absmax = block_absmax(flat, B0)
    n_blocks = absmax.numel()
    absmax = torch.cat([absmax, absmax.new_zeros(-n_blocks % B1)])
    scales = double_quantize(absmax, config.b1, config.b2, B1, n_real_blocks=n_blocks).scales[:n_blocks]
    out = torch.empty_like(flat)
    blocks, out_blocks = flat.view(-1, B0), out.view(-1, B0)
    # Chunks keep the temporaries small and reused from the heap: whole-matrix temporaries are
    # mmap'ed and page-faulted afresh on every call, which measured up to 3x slower.
    step = _CHUNK // B0
    for i in range(0, n_blocks, step):
        s = scales[i : i + step]
        y = normalized_blocks(blocks[i : i + step], s)
        torch.mul(nearest_code_value(y, config.b0), s[:, None], out=out_blocks[i : i + step])
    return out[:n].view(w.shape)


# --------------------------------------------------------------------------------------------- packing
#
# Bit layout: a stream of n values of b bits is split into groups of 8 values (the last one
# zero-filled) and value i occupies bits [i*b, (i+1)*b) of the stream, least significant bit first,
# bytes in order. So 4-bit codes store c0 | c1 << 4, and 8 3-bit codes fill 3 bytes.

PACK_KEYS: tuple[str, ...] = ("codes", "scale_codes", "scales2", "offset", "shape", "config")


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """uint8 ``[ceil(n/8) * bits]``: the low ``bits`` bits of each uint8 in ``values [n]``, densely."""
    v = values.cpu().numpy().astype(np.uint8, copy=False)
    v = np.concatenate([v, np.zeros(-len(v) % 8, dtype=np.uint8)])
    if bits == 8:
        return torch.from_numpy(v.copy())
    planes = np.unpackbits(v[:, None], axis=1, count=bits, bitorder="little")  # [n, bits], LSB first
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: uint8 ``[n]``."""
    p = packed.cpu().numpy()
    if bits == 8:
        return torch.from_numpy(p[:n].copy())
    planes = np.unpackbits(p, count=n * bits, bitorder="little").reshape(n, bits)
    return torch.from_numpy(np.packbits(planes, axis=1, bitorder="little").reshape(n))


def packed_lengths(shape: tuple[int, ...], config: QuantConfig) -> tuple[int, int, int, int, int]:
    """(n real weights, n blocks with real weights, n groups with real weights, code bytes, scale-code bytes)."""
    n = math.prod(shape)
    blocks = -(-n // config.B0)
    groups = -(-blocks // config.B1)
    return n, blocks, groups, -(-n // 8) * config.b0, -(-blocks // 8) * config.b1


def pack(qt: QuantizedTensor) -> dict[str, Tensor]:
    """Bit-pack ``qt`` into tensors that ``safetensors.torch.save_file`` can store.

    Keys: ``codes`` and ``scale_codes`` (uint8, densely bit-packed, padding dropped), ``scales2``
    (b2 dtype, groups holding real weights), ``offset`` (float32 ``[1]``), ``shape`` (int64) and
    ``config`` (int64 ``[5]``: b0, b1, index of b2 in ``SCALE2_FORMATS``, B0, B1).
    """
    c = qt.config
    n, blocks, groups, _, _ = packed_lengths(qt.shape, c)
    # Padding is implied (zero code, scale code 0, t = 0); refuse to silently drop anything else.
    if (
        bool((qt.codes[n:] != zero_code(c.b0)).any())
        or bool((qt.scale_codes[blocks:] != 0).any())
        or bool((qt.scales2[groups:] != 0).any())
    ):
        raise CoaloraError("cannot pack: the QuantizedTensor's padding is not the canonical zero padding")
    return {
        "codes": pack_bits(qt.codes[:n], c.b0),
        "scale_codes": pack_bits(qt.scale_codes[:blocks], c.b1),
        "scales2": qt.scales2[:groups].contiguous().cpu(),
        "offset": qt.offset.reshape(1).float().cpu(),
        "shape": torch.tensor(qt.shape, dtype=torch.int64),
        "config": torch.tensor([c.b0, c.b1, SCALE2_FORMATS.index(c.b2), c.B0, c.B1], dtype=torch.int64),
    }


def packed_nbytes(qt: QuantizedTensor) -> int:
    """Bytes of all tensors in ``pack(qt)`` (data and the small metadata), without packing."""
    _, _, groups, code_bytes, scale_bytes = packed_lengths(qt.shape, qt.config)
    metadata = 4 + 8 * len(qt.shape) + 8 * 5  # offset, shape, config
    return code_bytes + scale_bytes + groups * SCALE2_DTYPES[qt.config.b2].itemsize + metadata


def packed_layout(d: dict[str, Tensor]) -> tuple[tuple[int, ...], QuantConfig]:
    """(shape, config) of a :func:`pack` dict after checking every key's dtype and size.

    Raises :class:`CoaloraError` naming whatever is missing or malformed; used by :func:`unpack`
    and by the packed runtime (:mod:`coalora.quant.packed`), which keeps the packed tensors as they are.
    """
    if not isinstance(d, dict):
        raise CoaloraError(f"a packed quantized tensor is a dict of tensors, got {type(d).__name__}")
    missing = [k for k in PACK_KEYS if k not in d]
    if missing:
        raise CoaloraError(
            f"packed quantized tensor is missing {', '.join(missing)} (expected keys {', '.join(PACK_KEYS)})"
        )
    for key in PACK_KEYS:
        if not isinstance(d[key], Tensor):
            raise CoaloraError(f"packed quantized tensor: {key} is a {type(d[key]).__name__}, not a tensor")
    cfg, shape_t = d["config"], d["shape"]
    if cfg.dtype != torch.int64 or cfg.shape != (5,):
        raise CoaloraError(f"packed quantized tensor: config must be int64 [5], got {cfg.dtype} {list(cfg.shape)}")
    b0, b1, i_b2, B0, B1 = (int(v) for v in cfg)  # noqa: N806
    if not 0 <= i_b2 < len(SCALE2_FORMATS):
        raise CoaloraError(f"packed quantized tensor: config b2 index {i_b2} is outside 0..{len(SCALE2_FORMATS) - 1}")
    try:
        config = QuantConfig(b0, b1, SCALE2_FORMATS[i_b2], B0, B1)
    except CoaloraError as e:
        raise CoaloraError(f"packed quantized tensor: {e}") from None
    if shape_t.dtype != torch.int64 or shape_t.dim() != 1 or bool((shape_t <= 0).any()):
        raise CoaloraError("packed quantized tensor: shape must be a 1-D int64 tensor of positive sizes")
    shape = tuple(int(v) for v in shape_t)
    n, blocks, groups, code_bytes, scale_bytes = packed_lengths(shape, config)
    expected = {
        "codes": (torch.uint8, (code_bytes,)),
        "scale_codes": (torch.uint8, (scale_bytes,)),
        "scales2": (SCALE2_DTYPES[config.b2], (groups,)),
        "offset": (torch.float32, (1,)),
    }
    for key, (dtype, size) in expected.items():
        if d[key].dtype != dtype or tuple(d[key].shape) != size:
            raise CoaloraError(
                f"packed quantized tensor: {key} should be {dtype} {list(size)} for shape {list(shape)} under {config}, "
                f"got {d[key].dtype} {list(d[key].shape)}"
            )
    return shape, config


def unpack(d: dict[str, Tensor]) -> QuantizedTensor:
    """Inverse of :func:`pack`; raises :class:`CoaloraError` naming whatever is missing or malformed."""
    shape, config = packed_layout(d)
    b0, b1, B0, B1 = config.b0, config.b1, config.B0, config.B1  # noqa: N806
    n, blocks, groups, _, _ = packed_lengths(shape, config)
    n_padded = -(-n // (B0 * B1)) * B0 * B1
    codes = torch.full((n_padded,), zero_code(b0), dtype=torch.uint8)
    codes[:n] = unpack_bits(d["codes"], b0, n)
    scale_codes = torch.zeros(n_padded // B0, dtype=torch.uint8)
    scale_codes[:blocks] = unpack_bits(d["scale_codes"], b1, blocks)
    scales2 = torch.zeros(n_padded // (B0 * B1), dtype=SCALE2_DTYPES[config.b2])
    scales2[:groups] = d["scales2"]
    return QuantizedTensor(codes, scale_codes, scales2, d["offset"].reshape(()).clone(), shape, config)
