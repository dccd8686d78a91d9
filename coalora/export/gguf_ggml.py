"""ggml's own quantizers, called through ctypes from the ``libggml-base`` that llama-cpp-python ships.

A GGUF tensor quantized here holds exactly the bytes ``llama-quantize`` would write for the same
float rows and type (both call ``ggml_quantize_chunk``), with no importance matrix: coalora's
export quantizes the configured weights as they are (method section 1; the ggml type per matrix
comes from :func:`coalora.export.gguf.llama_type`).

The library is found in the installed ``llama_cpp`` package (``llama_cpp/lib/libggml-base.so``);
without llama-cpp-python (``pip install -r requirements-llama.txt``) every call is one
:class:`~coalora.errors.CoaloraError` saying so.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

import numpy as np

from coalora.errors import CoaloraError

INSTALL_HINT = ("llama-cpp-python is not installed; `pip install -r requirements-llama.txt` "
                "(or `make test`, which builds and installs it)")


@functools.cache
def ggml_library() -> ctypes.CDLL:
    """``libggml-base`` of the installed llama-cpp-python, with the quantization entry points typed."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise CoaloraError(INSTALL_HINT)
    libdir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    found = sorted(libdir.glob("libggml-base.so*")) + sorted(libdir.glob("libggml-base.dylib"))
    if not found:
        raise CoaloraError(f"llama-cpp-python at {libdir.parent} has no libggml-base library; reinstall it "
                           "(`pip install --force-reinstall -r requirements-llama.txt`)")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def row_size(ggml_type: int, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` weights in ``ggml_type`` (ggml's ``ggml_row_size``)."""
    return int(ggml_library().ggml_row_size(int(ggml_type), int(n_per_row)))


def quantize_rows(w: np.ndarray, ggml_type: int) -> np.ndarray:
    """``w`` ``[rows, n_per_row]`` (float32) quantized by ggml to ``ggml_type``: ``[rows, row bytes]`` uint8.

    ``n_per_row`` must be a multiple of the type's block size (256 for K-quants, 32 for the
    others); types that need an importance matrix (IQ1/IQ2) are refused.
    """
    import gguf

    lib = ggml_library()
    qtype = gguf.GGMLQuantizationType(int(ggml_type))
    if w.ndim != 2:
        raise CoaloraError(f"ggml quantizes matrices [rows, n_per_row], got shape {w.shape}")
    rows, n = w.shape
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if n % block:
        raise CoaloraError(f"{qtype.name} needs rows of a multiple of {block} weights, got rows of {n}")
    if lib.ggml_quantize_requires_imatrix(int(qtype)):
        raise CoaloraError(f"{qtype.name} needs an importance matrix, which coalora's export does not compute")
    src = np.ascontiguousarray(w, dtype=np.float32)
    size = row_size(int(qtype), n)
    dst = np.empty((rows, size), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, rows, n, None)
    if written != rows * size:
        raise CoaloraError(f"ggml wrote {written} bytes for a {rows} x {n} {qtype.name} tensor, expected {rows * size}")
    return dst
