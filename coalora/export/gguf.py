"""llama.cpp's quantization types for a configuration: the per-tensor type map (``--tensor-type``).

Each target matrix gets the llama.cpp (ggml) type that best matches its (b0, B0):

======  ===========  ==========================================================================
b0      B0           llama.cpp type (bits per weight)
======  ===========  ==========================================================================
2       any          ``Q2_K`` (2.625): 16-weight groups, 4-bit scales per 256-weight super-block
3       any          ``Q3_K`` (3.4375): 16-weight groups, 6-bit scales
4       16, 32       ``IQ4_NL`` (4.5): 32-weight blocks on a non-uniform 4-bit grid, like NF4
4       64           ``Q4_K`` (4.5): 32-weight groups, 6-bit scales (double quantized, like b1/B1)
8       any          ``Q8_0`` (8.5): 32-weight blocks, fp16 scale
======  ===========  ==========================================================================

K-quants (``Q2_K``, ``Q3_K``, ``Q4_K``) need rows of a multiple of 256 weights; for other rows
(SmolLM2's 576-wide q/k/v/o/gate/up inputs) llama.cpp's own fallback applies (``llama-quant.cpp``):
``Q2_K`` -> ``Q4_0``, ``Q3_K`` -> ``IQ4_NL``, ``Q4_K`` -> ``Q5_0``, each a block-32 type. Non-target
tensors (embeddings, norms, output) are left to llama.cpp's defaults for the file type.

:func:`tensor_type_lines` writes the map as ``<gguf tensor name>=<type>`` lines (names from gguf-py's
``TensorNameMap``, e.g. ``blk.3.attn_q.weight=q4_k``), the form of ``llama-quantize``'s
``--tensor-type`` option, for users who quantize the model themselves.
:func:`coalora.export.gguf_file.write_gguf` writes the GGUF itself under this map (ggml's own
quantizers, the adapter merged first), and :mod:`coalora.export.gguf_ppl` scores it in llama.cpp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    from coalora.quant.config import ModelQuantConfig, QuantConfig

TENSOR_TYPES_FILE = "llama_tensor_types.txt"
QK_K = 256
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0"}


def llama_type(c: QuantConfig, row: int) -> str:
    """The llama.cpp type name of a matrix with config ``c`` and rows of ``row`` weights (the table
    above, with llama.cpp's fallback when a K-quant does not fit the row)."""
    name = {2: "Q2_K", 3: "Q3_K", 8: "Q8_0"}.get(c.b0) or ("IQ4_NL" if c.B0 <= 32 else "Q4_K")
    return _FALLBACK[name] if name in _FALLBACK and row % QK_K else name


def tensor_types(config: ModelQuantConfig, n_blocks: int | None = None) -> list[tuple[str, str]]:
    """``(gguf tensor name, llama.cpp type)`` of every target matrix, in target order."""
    import gguf

    blocks = n_blocks or 1 + max(t.block for t in config.targets)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    out = []
    for t, c in zip(config.targets, config.configs):
        g = names.get_name(t.name)
        if g is None:
            raise CoaloraError(f"module {t.name} has no llama.cpp tensor name (only Llama-style models map to GGUF)")
        out.append((f"{g}.weight", llama_type(c, t.shape[1])))
    return out


def tensor_type_lines(config: ModelQuantConfig) -> str:
    """The map as ``name=type`` lines (``llama-quantize --tensor-type`` takes one per option)."""
    return "".join(f"{n}={ty.lower()}\n" for n, ty in tensor_types(config))


def gguf_bits(config: ModelQuantConfig) -> float:
    """Average bits per target weight of the map (from ggml's block sizes: bytes per block * 8 /
    weights per block)."""
    import gguf

    n = bits = 0
    for t, (_, ty) in zip(config.targets, tensor_types(config)):
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ty]]
        bits += t.numel * size * 8 / block
        n += t.numel
    return bits / n
