"""Write a configured Llama-architecture model as a GGUF file that llama.cpp loads (spec S6, issue 20).

:func:`write_gguf` stores

* every **target** matrix (method section 1.1: q/k/v/o/gate/up/down of each block) in the llama.cpp
  type that best matches its configuration (:func:`coalora.export.gguf.llama_type`'s table),
  quantized by ggml's own ``ggml_quantize_chunk`` (:mod:`coalora.export.gguf_ggml`), from the float
  weights given in ``weights`` (by default the model's own; :func:`merged_weights` gives them with
  the adapter merged in);
* the **non-target** tensors as ``llama-quantize`` stores them for a K-quant file type: 1-D tensors
  (the RMS norms) in F32; ``token_embd`` (which, with tied embeddings, llama.cpp also uses as the
  output layer, since the file has no ``output`` tensor) and an untied ``output`` under
  llama.cpp's output-tensor rule, Q6_K when its rows are a multiple of 256 weights, else Q8_0
  (SmolLM2's 576-wide rows: Q8_0, as in the Q4_1 GGUF it comes from);
* llama.cpp's tensor names (gguf-py's ``TensorNameMap``: ``token_embd``, ``blk.N.attn_q``,
  ``output_norm`` ...), with q_proj / k_proj rows permuted from Hugging Face's rotary layout (the
  two halves of each head: ``[x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}]``) to llama.cpp's interleaved
  pairs (``[x_0, y_0, x_1, y_1 ...]``), per head (q: attention heads; k: KV heads), as llama.cpp's
  ``convert_hf_to_gguf.py`` does for Llama;
* the Llama hyper-parameters and the tokenizer (:mod:`coalora.export.gguf_vocab`).

With ``config=None`` every tensor is F32: a float GGUF of the same model, which checks the layout
(llama.cpp's logits of it equal the Hugging Face model's).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    from torch import nn

    from coalora.quant.config import ModelQuantConfig

GGUF_FILE = "model.gguf"
_FILE_TYPES = {"Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "IQ4_NL": "MOSTLY_IQ4_NL",
               "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0", "Q5_0": "MOSTLY_Q5_0", "F32": "ALL_F32"}


@dataclass(frozen=True)
class GgufInfo:
    """What :func:`write_gguf` wrote."""

    path: Path
    bits_per_weight: float
    """Stored bits per target weight: 8 * bytes of the target tensors / their weights."""
    target_bytes: int
    file_bytes: int
    tensors: int
    types: dict[str, str]
    """ggml type of every tensor, by GGUF name."""
    seconds: float


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q/k projection ``[n_head * head_dim, d_in]`` from HF's half-split rotary layout to
    llama.cpp's interleaved one, per head."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of :func:`permute_qk`."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def merged_weights(originals: dict[str, torch.Tensor], config: ModelQuantConfig,
                   lora: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, alpha: float | None = None,
                   rank: int | None = None, base: str = "float") -> dict[str, torch.Tensor]:
    """The float target weights ``{module: [d_out, d_in]}`` to quantize, with the adapter merged in.

    ``base="float"``: ``W + (alpha / rank) B A`` on the unquantized ``W``; ``"configured"``:
    ``Q_c(W) + (alpha / rank) B A``, the dequantized NF weight coalora runs (method section 3's
    ``W_C``) plus the adapter. ``lora``: ``{module: (A [r, d_in], B [d_out, r])}``.
    """
    from coalora.quant.nf import fake_quantize

    if base not in ("float", "configured"):
        raise CoaloraError(f"unknown merge base {base!r}; use float or configured")
    if lora is not None and (alpha is None or rank is None):
        raise CoaloraError("merging an adapter needs its alpha and rank (the LoRA scale is alpha / rank)")
    out = {}
    for t, c in zip(config.targets, config.configs):
        w = originals[t.name].detach().float().cpu()
        if base == "configured":
            w = fake_quantize(w, c).reshape(w.shape).float()
        if lora is not None and t.name in lora:
            a, b = lora[t.name]
            w = w + (float(alpha) / int(rank)) * (b.detach().float().cpu() @ a.detach().float().cpu())
        out[t.name] = w
    return out


def _hparams(cfg: Any) -> dict[str, Any]:
    """The Llama hyper-parameters llama.cpp reads, from a transformers ``LlamaConfig``."""
    if getattr(cfg, "model_type", None) != "llama":
        raise CoaloraError(f"GGUF export supports Llama-architecture models, got model_type "
                           f"{getattr(cfg, 'model_type', None)!r}")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise CoaloraError(f"GGUF export supports default RoPE only, got rope_type {rope.get('rope_type')!r}")
    heads = int(cfg.num_attention_heads)
    return {"blocks": int(cfg.num_hidden_layers), "ctx": int(cfg.max_position_embeddings),
            "hidden": int(cfg.hidden_size), "ffn": int(cfg.intermediate_size), "heads": heads,
            "kv_heads": int(getattr(cfg, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
            "theta": float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))),
            "eps": float(cfg.rms_norm_eps), "vocab": int(cfg.vocab_size),
            "tied": bool(getattr(cfg, "tie_word_embeddings", False))}


def _add_hparams(writer: Any, hp: dict[str, Any], name: str, file_type: int) -> None:
    import gguf

    writer.add_name(name)
    writer.add_block_count(hp["blocks"])
    writer.add_context_length(hp["ctx"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_feed_forward_length(hp["ffn"])
    writer.add_head_count(hp["heads"])
    writer.add_head_count_kv(hp["kv_heads"])
    writer.add_rope_freq_base(hp["theta"])
    writer.add_layer_norm_rms_eps(hp["eps"])
    writer.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] * hp["heads"] != hp["hidden"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    writer.add_vocab_size(hp["vocab"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and biases under plain Hugging Face keys: a target wrapped by an adapter
    layer (coalora's ``CoALoRALinear``, peft's LoRA layer) gives its ``base_layer``'s tensors, and the
    adapter's own parameters (``lora_A``, ``lora_B``, theta) are left out."""
    out = {}
    for key, v in model.state_dict().items():
        if key.rsplit(".", 1)[-1] in ("weight", "bias") and ".lora_" not in key:
            out[key.replace(".base_layer.", ".")] = v
    return out


def _plan(state: dict[str, torch.Tensor], config: ModelQuantConfig | None,
          hp: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(state key, GGUF name, ggml type name)`` of every tensor the file holds, in model order."""
    import gguf

    from coalora.export.gguf import QK_K, tensor_types

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["blocks"])
    targets = dict(tensor_types(config, hp["blocks"])) if config is not None else {}
    out = []
    for key, v in state.items():
        if key == "lm_head.weight" and hp["tied"]:
            continue  # llama.cpp uses token_embd as the output layer when the file has no output tensor
        g = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise CoaloraError(f"tensor {key} of the model has no llama.cpp name; only Llama models export to GGUF")
        if g in targets:
            ty = targets[g]
        elif v.dim() == 1 or config is None:
            ty = "F32"
        elif g in ("token_embd.weight", "output.weight"):
            ty = "Q8_0" if v.shape[-1] % QK_K else "Q6_K"
        else:
            ty = "Q8_0"
        out.append((key, g, ty))
    return out


def _tensor_data(w: torch.Tensor, ty: str) -> tuple[np.ndarray, Any]:
    """``(array, raw_dtype)`` for ``GGUFWriter.add_tensor``: float32 as is, else ggml's bytes."""
    import gguf

    from coalora.export.gguf_ggml import quantize_rows

    a = w.detach().float().cpu().numpy()
    if ty == "F32":
        return np.ascontiguousarray(a), None
    q = gguf.GGMLQuantizationType[ty]
    return quantize_rows(a.reshape(-1, a.shape[-1]), q), q


def write_gguf(model: nn.Module, tokenizer: Any, config: ModelQuantConfig | None, path: str | os.PathLike, *,
               weights: dict[str, torch.Tensor] | None = None, name: str | None = None,
               threads: int | None = None) -> GgufInfo:
    """Write ``model`` (a transformers ``LlamaForCausalLM``) under ``config`` as a GGUF at ``path`` (atomically).

    ``weights``: float target weights ``{module: [d_out, d_in]}`` to quantize instead of the model's
    own as they are now (pass them when a configuration is applied to the model or an adapter wraps
    it; e.g. :func:`merged_weights` of the originals); ``config=None`` keeps the targets in F32. Returns what was
    written, with the stored bits per target weight (equal to ``gguf_bits(config)``). ``threads``:
    tensors quantized at once (default: the CPU count, at most 8).
    """
    import gguf

    from coalora.export.gguf_vocab import add_vocab, vocab_metadata
    from coalora.files import atomic_file

    t0 = time.perf_counter()
    hp = _hparams(model.config)
    state = plain_state(model)
    plan = _plan(state, config, hp)
    vocab = vocab_metadata(tokenizer, hp["vocab"])
    target_keys = {f"{t.name}.weight": t.name for t in config.targets} if config is not None else {}
    if weights is not None and config is not None:
        missing = [n for n in target_keys.values() if n not in weights]
        if missing:
            raise CoaloraError(f"no float weight given for target {missing[0]!r}")
    common = Counter(ty for key, _, ty in plan if key in target_keys).most_common(1)
    file_type = gguf.LlamaFileType[_FILE_TYPES.get(common[0][0] if common else "F32", "GUESSED")]
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        _add_hparams(writer, hp, name or str(getattr(model.config, "_name_or_path", "") or "coalora"), int(file_type))
        add_vocab(writer, vocab)
        def tensor(item: tuple[str, str, str]) -> tuple[np.ndarray, Any]:
            key, g, ty = item
            w = state[key] if key not in target_keys or weights is None else weights[target_keys[key]]
            w = w.reshape(state[key].shape)
            if g.endswith(("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias")):
                w = permute_qk(w, hp["heads"] if ".attn_q." in g else hp["kv_heads"])
            return _tensor_data(w, ty)

        # ggml's quantizers run in C without the GIL: the tensors are quantized in parallel
        with ThreadPoolExecutor(max(1, min(threads or os.cpu_count() or 1, 8))) as pool:
            data = list(pool.map(tensor, plan))
        target_bytes = target_numel = 0
        for (key, g, _), (arr, raw) in zip(plan, data):
            writer.add_tensor(g, arr, raw_dtype=raw)
            if key in target_keys:
                target_bytes += arr.nbytes
                target_numel += state[key].numel()
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    p = Path(path)
    bits = 8 * target_bytes / target_numel if target_numel else 32.0
    return GgufInfo(p, bits, target_bytes, p.stat().st_size, len(plan), {g: ty for _, g, ty in plan},
                    time.perf_counter() - t0)
