"""A bundle's ``README.md``: how to load it, and what each runtime's map of the configuration keeps.

The table lists every file a runtime can use, the bits per target weight it stores and, where the
bundle measured one, the perplexity on the bundle's windows: coalora's simulated perplexity of the
configuration (NF-k fake quantization with the adapter) and, with a ``model.gguf``, llama.cpp's
perplexity of that file on the same token windows (:mod:`coalora.export.bundle_gguf`).
"""

from __future__ import annotations

from typing import Any

PPL_CONVENTION = "token-level perplexity exp(mean NLL) over non-overlapping windows of seqlen tokens"


def _measured_line(meta: dict[str, Any]) -> str:
    m = meta["measured"]
    if not m:
        return "not measured"
    spec = f", eval spec {m['eval_spec']}" if m.get("eval_spec") else ""
    kl = f"; KL to the unquantized model {m['kld']:.4f} nats/token" if m.get("kld") is not None else ""
    tasks = "".join(f"; lm-eval {t['task']} {t['metric']} {t['value']:.3f}"
                    + (f" +- {t['stderr']:.3f}" if t.get("stderr") is not None else "") + f" ({t['documents']} documents)"
                    for t in m.get("tasks") or [])
    return f"{m['ppl']:.3f} on {m['eval_set']} ({m['windows']} x {m['seqlen']} tokens{spec}){kl}{tasks}"


def _gguf_section(meta: dict[str, Any]) -> str:
    g = meta.get("gguf")
    if not g:
        return ""
    lc = g.get("llama_cpp")
    m = meta.get("measured")
    if lc:
        ppl = (f"llama.cpp's perplexity of `{g['file']}` is **{lc['ppl']:.3f}** on the bundle's windows "
               f"({lc['windows']} x {lc['seqlen']} tokens of {lc['eval_set']}, fed as token ids, no BOS)")
        ppl += f", next to coalora's simulated {m['ppl']:.3f}." if m else "."
    else:
        ppl = "Its perplexity under llama.cpp was not measured."
    return f"""
## llama.cpp

`{g['file']}` is the configured model for llama.cpp (`llama-cli -m {g['file']}`, or
`llama_cpp.Llama("{g['file']}")`): {g['merge']}; each target in the ggml type of the table in
`coalora/export/gguf.py` ({g['bits_per_weight']:.3f} bits per target weight, {g['file_bytes'] / 2**20:.1f} MiB),
norms in F32, token embeddings as llama.cpp's output-tensor rule (Q6_K or Q8_0). {ppl}
"""


def map_rows(meta: dict[str, Any]) -> str:
    """The runtime table's rows: runtime, file, what it keeps, bits per target weight, perplexity."""
    b = meta["map_bits"]
    m, g = meta.get("measured"), meta.get("gguf")
    rows = [("coalora (this bundle)", "quantized_weights.safetensors", "yes (what was measured)", b["coalora"],
             f"{m['ppl']:.3f} (simulated)" if m else "")]
    rows += [("GPTQModel `dynamic`", "gptq_dynamic.json", "b0, B0; integer grid, fp16 scales", b["gptqmodel"], ""),
             ("torchao", "torchao_config.json", "b0, B0; integer grid, fp32 scales", b["torchao"], ""),
             ("llama.cpp (`llama-quantize --tensor-type`)", "llama_tensor_types.txt",
              "nearest ggml type per matrix (coalora/export/gguf.py's table)", b["llama.cpp"], "")]
    if "hqq_quant_config.json" in meta.get("written", ()):
        rows.insert(2, ("HQQ", "hqq_quant_config.json", "b0, B0 per module type; fp16 scales", b["hqq"], ""))
    if g:
        lc = g.get("llama_cpp")
        rows.append(("llama.cpp (GGUF)", g["file"], "nearest ggml type per matrix, adapter merged, ggml-quantized",
                     g["bits_per_weight"], f"{lc['ppl']:.3f} (llama.cpp)" if lc else "not measured"))
    return "\n".join(f"| {r} | `{f}` | {e} | {v:.3f} | {p} |" for r, f, e, v, p in rows)


def readme(meta: dict[str, Any]) -> str:
    """The bundle's README from its metadata (``coalora_config.json`` without the file hashes)."""
    return f"""# coalora bundle: {meta['model']} at {meta['avg_bits']:.3f} average bits

Configuration `{meta['config_hash']}` ({meta['config']['format']}), adapter: {meta['adapter']['method'] if meta['adapter'] else 'none'}.
Measured perplexity: {_measured_line(meta)}. Convention: {PPL_CONVENTION}.

## Load it

```python
from coalora.export.bundle import load_bundle

b = load_bundle("{'.'}")          # checks every file's sha256, rebuilds weights + adapter
b.model                         # a PeftModel over the quantized {meta['model']}
```

or from the command line: `coalora load .` (add `--eval` to re-measure the perplexity).

With plain `peft`: load the base model, replace each target weight by the dequantized
`quantized_weights.safetensors` entry (`coalora.quant.nf.unpack(...).dequantize()`), then
`PeftModel.from_pretrained(model, "adapter")`.

`gptq_dynamic.json` is the per-module (bits, group size) map in GPTQModel's `dynamic` form
(GPTQ re-quantizes with its own integer grid; NF-k codes and double-quantized scales do not carry
over). See `coalora_config.json` for notes on each conversion.

`torchao_config.json` is torchao's `FqnToConfig` (`torchao.core.config.config_from_dict`, then
`torchao.quantization.quantize_(model, cfg, filter_fn=None)`): per module int-b0 weight-only, group B0.
{_gguf_section(meta)}
## Maps and what they keep

Every map keeps each matrix's bits b0 and group size B0 exactly; none keeps the NF-b0 codebook (they
use a uniform integer grid) or the double-quantized scales, so each stores more bits per weight.
Perplexities are on the bundle's windows:

| runtime | file | exact | avg bits per target weight | perplexity |
|---|---|---|---|---|
{map_rows(meta)}
"""
