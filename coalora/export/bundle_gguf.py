"""A bundle's ``model.gguf``: the configured model for llama.cpp, and its perplexity there (issue 20).

:func:`write_bundle_gguf` merges the bundle's adapter into the unquantized target weights
(``W + (alpha / rank) B A``, :func:`coalora.export.gguf_file.merged_weights`), quantizes each target
to the ggml type of its configuration (:func:`coalora.export.gguf_file.write_gguf`) and, when the
bundle's windows are given, scores the file with llama.cpp on them
(:func:`coalora.export.gguf_ppl.llama_cpp_perplexity`), so the README can put llama.cpp's
perplexity next to coalora's simulated one, on the same tokens.

The merge is on the float weights, not on coalora's NF-dequantized ones: ggml then quantizes
once. Merging into ``Q_c(W)`` instead quantizes twice (NF, then ggml) and costs most of the
adapter's gain: on SmolLM2-135M at the allocator's 3-bit configuration (4 windows x 128 tokens)
llama.cpp's perplexity is 52.4 merged on W, 81.9 merged on Q_c(W), 94.6 without the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch

    from coalora.evaluation.spec import EvalWindows
    from coalora.quant.config import ModelQuantConfig

MERGE = "W + (alpha / rank) B A on the unquantized weights, then ggml's quantizer per target (no importance matrix)"


@dataclass(frozen=True)
class GgufSource:
    """What a bundle's GGUF needs besides the target weights: the whole model and its tokenizer.

    ``model``: the loaded transformers Llama (embeddings, norms and hyper-parameters are read from
    it; its targets may be wrapped or configured, since the targets come from the bundle's
    originals); ``windows``: the windows the bundle's ``measured`` perplexity was taken on (None:
    the file is written but not scored).
    """

    model: Any
    tokenizer: Any
    windows: EvalWindows | None = None
    threads: int | None = None


def _check_windows(windows: EvalWindows, measured: dict[str, Any] | None) -> None:
    """The windows must be the ones ``measured`` names, or the two perplexities are not comparable."""
    if measured is None:
        return
    got = {"seqlen": windows.seqlen, "windows": windows.n, "eval_set": windows.dataset, "eval_spec": windows.spec}
    for key, v in got.items():
        if measured.get(key) is not None and measured[key] != v:
            raise CoaloraError(f"the GGUF's windows have {key} {v!r} but the bundle's measured perplexity has "
                               f"{measured[key]!r}; pass the windows the perplexity was measured on")


def write_bundle_gguf(out: Path, source: GgufSource, config: ModelQuantConfig, originals: dict[str, torch.Tensor],
                      lora: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, adapter: dict[str, Any] | None,
                      measured: dict[str, Any] | None, name: str | None = None) -> dict[str, Any]:
    """Write ``out`` (the bundle's ``model.gguf``, ``general.name`` = ``name``) and return its record for
    ``coalora_config.json``: file, bits per target weight, bytes, types, seconds and, with windows,
    llama.cpp's perplexity."""
    from collections import Counter

    from coalora.export.gguf_file import merged_weights, write_gguf
    from coalora.export.gguf_ppl import llama_cpp_perplexity

    if source.windows is not None:
        _check_windows(source.windows, measured)
    alpha, rank = (float(adapter["alpha"]), int(adapter["rank"])) if lora is not None and adapter else (None, None)
    weights = merged_weights(originals, config, lora, alpha, rank)
    info = write_gguf(source.model, source.tokenizer, config, out, weights=weights, name=name,
                      threads=source.threads)
    del weights
    record: dict[str, Any] = {
        "file": out.name, "bits_per_weight": info.bits_per_weight, "file_bytes": info.file_bytes,
        "target_bytes": info.target_bytes, "tensors": info.tensors, "types": dict(Counter(info.types.values())),
        "merge": MERGE if lora is not None else "no adapter: the unquantized weights, then ggml's quantizer per target",
        "export_seconds": info.seconds, "llama_cpp": None,
    }
    if source.windows is not None:
        r = llama_cpp_perplexity(out, source.windows.windows, n_threads=source.threads)
        record["llama_cpp"] = {"ppl": r.ppl, "nll": r.nll, "tokens": r.tokens, "windows": r.windows,
                               "seqlen": r.seqlen, "eval_set": source.windows.dataset,
                               "eval_spec": source.windows.spec, "seconds": r.seconds}
    return record
