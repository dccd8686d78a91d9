"""Export bundles: one chosen configuration with its generated adapter, ready to ship (spec S6).

A bundle directory holds

* ``adapter/``: the generated LoRA in PEFT's format (``PeftModel.from_pretrained`` loads it on the
  base model with this configuration applied);
* ``quantized_weights.safetensors``: every target matrix bit-packed under its configuration
  (codes, double-quantized scales; :func:`coalora.quant.nf.pack`), about ``avg_bits * params / 8``
  bytes; embeddings, norms and ``lm_head`` come from the base model, identified by its weights hash;
* ``coalora_config.json``: the configuration (coalora.quant_config/1), average bits, predicted and
  measured perplexity with their convention, model id and weights hash, coalora version, the
  sha256 of every other file, and conversion notes;
* ``gptq_dynamic.json``: the per-module map as a GPTQModel ``dynamic`` dict (bits, group_size);
  ``hqq_quant_config.json``: HQQ's per-tag map, written only when it is lossless (every block
  shares one config per module type); ``torchao_config.json``: torchao's ``FqnToConfig``
  (:mod:`coalora.export.torchao`); ``llama_tensor_types.txt``: llama.cpp's per-tensor types
  (:mod:`coalora.export.gguf`). :func:`map_bits` gives each map's stored bits per weight;
* ``model.gguf`` (with ``gguf=``): the model for llama.cpp, adapter merged, and its llama.cpp
  perplexity on the bundle's windows (:mod:`coalora.export.bundle_gguf`);
* ``README.md``: how to load it (:mod:`coalora.export.bundle_readme`).

:func:`load_bundle` rebuilds the quantized model with its adapter from the bundle alone (plus the
registry's base model), after checking every file against its recorded hash.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from coalora import __version__
from coalora.errors import CoaloraError
from coalora.export.bundle_readme import PPL_CONVENTION
from coalora.export.bundle_readme import readme as _readme
from coalora.files import atomic_dir, atomic_file, sha256_file
from coalora.quant.config import ModelQuantConfig

if TYPE_CHECKING:
    from coalora.export.bundle_gguf import GgufSource

FORMAT = "coalora.bundle/1"
CONFIG_FILE = "coalora_config.json"
WEIGHTS_FILE = "quantized_weights.safetensors"
ADAPTER_DIR = "adapter"
_BLOCK_PREFIX = re.compile(r"^.*?\blayers\.\d+\.")


@dataclass
class Bundle:
    """A loaded bundle: the base model with the configuration (and adapter) applied."""

    model: Any
    """The quantized model, wrapped in a ``PeftModel`` when the bundle has an adapter."""
    tokenizer: Any
    config: ModelQuantConfig
    meta: dict[str, Any]
    path: Path


def gptq_dynamic(config: ModelQuantConfig) -> dict[str, dict[str, int]]:
    """GPTQModel's ``dynamic`` per-module overrides: ``{"+:^<module>$": {"bits": b0, "group_size": B0}}``."""
    return {f"+:^{re.escape(t.name)}$": {"bits": c.b0, "group_size": c.B0} for t, c in zip(config.targets, config.configs)}


def hqq_tag_map(config: ModelQuantConfig) -> tuple[dict[str, dict[str, int]] | None, str | None]:
    """HQQ's per-tag quant config (``{"self_attn.q_proj": {"nbits", "group_size"}}``), or (None, why not).

    A tag names a module type across all blocks, so the map is lossless only when every block
    uses the same (b0, B0) for that type.
    """
    tags: dict[str, set[tuple[int, int]]] = {}
    for t, c in zip(config.targets, config.configs):
        tags.setdefault(_BLOCK_PREFIX.sub("", t.name), set()).add((c.b0, c.B0))
    mixed = sorted(tag for tag, v in tags.items() if len(v) > 1)
    if mixed:
        return None, (f"HQQ's per-tag map is not written: {', '.join(mixed)} use different (bits, group size) in "
                      "different blocks, which a per-tag map cannot express")
    return {tag: {"nbits": b0, "group_size": bs} for tag, ((b0, bs),) in tags.items()}, None


def map_bits(config: ModelQuantConfig) -> dict[str, float]:
    """Average stored bits per target weight of ``config`` and of each runtime's map of it (same
    b0 and group size B0; only the scales' storage differs): coalora (NF-b0 codes, b1-bit scales
    double-quantized), GPTQModel (fp16 scale and a b0-bit packed zero point per group), HQQ (fp16
    scale and zero per group) and torchao ``IntxWeightOnlyConfig`` (fp32 scale and int8 zero point
    per group as torchao 0.18 stores them on the CPU) and llama.cpp (the ggml type of each matrix:
    :mod:`coalora.export.gguf`)."""
    n = sum(t.numel for t in config.targets)

    def avg(f) -> float:
        return sum(t.numel * f(c) for t, c in zip(config.targets, config.configs)) / n

    from coalora.export.gguf import gguf_bits

    return {"coalora": config.avg_bits, "gptqmodel": avg(lambda c: c.b0 + (16 + c.b0) / c.B0),
            "hqq": avg(lambda c: c.b0 + 32 / c.B0), "torchao": avg(lambda c: c.b0 + 40 / c.B0),
            "llama.cpp": gguf_bits(config)}


def _check_inputs(model_name: str, config: ModelQuantConfig, originals: dict[str, torch.Tensor],
                  lora: dict[str, Any] | None, adapter: dict[str, Any] | None) -> None:
    if config.model != model_name:
        raise CoaloraError(f"configuration is for model {config.model!r}, not {model_name!r}")
    missing = [t.name for t in config.targets if t.name not in originals]
    if missing:
        raise CoaloraError(f"no weight for module {missing[0]!r} of {model_name}")
    if lora is not None and (adapter is None or "rank" not in adapter or "alpha" not in adapter):
        raise CoaloraError("an adapter needs its description: {'id', 'method', 'rank', 'alpha'}")


def _write_maps(tmp: Path, config: ModelQuantConfig) -> list[str]:
    """The runtimes' map files (GPTQModel, torchao, llama.cpp types, HQQ when lossless); their notes."""
    from coalora.export.gguf import TENSOR_TYPES_FILE, tensor_type_lines
    from coalora.export.torchao import TORCHAO_FILE, torchao_json

    (tmp / "gptq_dynamic.json").write_text(json.dumps(gptq_dynamic(config), indent=2) + "\n")
    (tmp / TORCHAO_FILE).write_text(json.dumps(torchao_json(config), indent=2) + "\n")
    (tmp / TENSOR_TYPES_FILE).write_text(tensor_type_lines(config))
    notes = ["GPTQModel dynamic: bits and group_size per module carry over exactly; GPTQ's integer grid "
             "replaces the NF-k codebook and its scales are not double-quantized (b1, b2, B1 are dropped)"]
    hqq, why = hqq_tag_map(config)
    if hqq is not None:
        (tmp / "hqq_quant_config.json").write_text(json.dumps(hqq, indent=2) + "\n")
        notes.append("HQQ per-tag map: lossless for (nbits, group_size); HQQ's own zero/scale quantization differs")
    else:
        notes.append(why)
    return notes


def export_bundle(
    model_name: str,
    config: ModelQuantConfig,
    originals: dict[str, torch.Tensor],
    out: str | os.PathLike,
    *,
    weights_hash: str,
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    adapter: dict[str, Any] | None = None,
    predicted: dict[str, float] | None = None,
    measured: dict[str, Any] | None = None,
    make_zip: bool = False,
    force: bool = False,
    gguf: GgufSource | None = None,
) -> Path:
    """Write a bundle directory (atomically: built in a temp dir, then renamed) and optionally a zip.

    ``originals``: the unquantized target weights ``{module: [d_out, d_in]}``; ``lora``: the
    generated adapter ``{module: (A [r, d_in], B [d_out, r])}`` with ``adapter`` = ``{"id", "method",
    "rank", "alpha"}``; ``measured``: ``{"ppl", "nll", "eval_set", "seqlen", "windows", "tokens"}`` and,
    since eval specs, ``"eval_spec"`` and ``"kld"`` (None when not measured). ``gguf``: also write
    ``model.gguf`` for llama.cpp (adapter merged, ggml-quantized) and, with its windows, record and
    report llama.cpp's perplexity on them (:mod:`coalora.export.bundle_gguf`).
    Returns the directory (or the zip file with ``make_zip``).
    """
    from coalora.export.peft import save_peft_adapter
    from coalora.files import save_safetensors_atomic
    from coalora.quant.nf import pack, quantize

    out = Path(out)
    final = out.with_name(out.name + ".zip") if make_zip else out
    if final.exists() and not force:
        raise CoaloraError(f"{final} already exists; choose another --out or pass --force to replace it")
    _check_inputs(model_name, config, originals, lora, adapter)

    def build(tmp: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for t, c in zip(config.targets, config.configs):
            for k, v in pack(quantize(originals[t.name].float(), c)).items():
                tensors[f"{t.name}.{k}"] = v
        save_safetensors_atomic(tensors, tmp / WEIGHTS_FILE, metadata={"format": "coalora.packed/1"})
        if lora is not None:
            save_peft_adapter(lora, tmp / ADAPTER_DIR, rank=int(adapter["rank"]), alpha=float(adapter["alpha"]),
                              base_model=model_name)
        notes = _write_maps(tmp, config)
        gguf_record = None
        if gguf is not None:
            from coalora.export.bundle_gguf import write_bundle_gguf
            from coalora.export.gguf_file import GGUF_FILE

            gguf_record = write_bundle_gguf(tmp / GGUF_FILE, gguf, config, originals, lora, adapter, measured,
                                            name=model_name)
        params = sum(t.numel for t in config.targets)
        meta = {
            "format": FORMAT, "model": model_name, "weights_hash": weights_hash, "coalora_version": __version__,
            "config": config.to_json(), "config_hash": config.hash, "avg_bits": config.avg_bits,
            "packed_bytes": (tmp / WEIGHTS_FILE).stat().st_size, "bits_bytes": params * config.avg_bits / 8,
            "adapter": adapter if lora is not None else None, "predicted": predicted,
            "measured": ({**measured, "convention": PPL_CONVENTION} if measured else None),
            "conversion_notes": notes, "map_bits": map_bits(config),
            "written": sorted(p.name for p in tmp.iterdir()),
        }
        if gguf_record is not None:
            meta["gguf"] = gguf_record
        (tmp / "README.md").write_text(_readme(meta))
        meta["files"] = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    if not make_zip:
        with atomic_dir(out) as tmp:
            build(tmp)
        return out
    return _zip_bundle(final, build)


def _zip_bundle(final: Path, build) -> Path:
    """Build the bundle in a temporary directory and zip it (one top-level folder) into ``final``."""
    # the zip and the directory it is made from are temporaries of the final name (pid-tagged), so
    # what a killed export leaves is removed by the next export to the same path
    with atomic_file(final) as ztmp, \
            tempfile.TemporaryDirectory(prefix=f".{final.name}.{os.getpid()}.", dir=final.parent) as d:
        tmp = Path(d)
        build(tmp)
        top = final.name.removesuffix(".zip")  # one top-level folder: unzipping never scatters files
        with zipfile.ZipFile(ztmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(tmp.rglob("*")):
                if p.is_file():
                    z.write(p, f"{top}/{p.relative_to(tmp)}")
    return final


def read_bundle_meta(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(bundle directory, its verified metadata); a zip is unpacked into a temp directory first.

    Every file listed in ``coalora_config.json`` must exist with its recorded sha256, and the keys
    that loading uses must be there with the right types; anything else is one :class:`CoaloraError`.
    """
    p = Path(path)
    if not p.exists():
        raise CoaloraError(f"no bundle at {p}")
    if not p.is_file():
        return p, _verified_meta(p)
    if not zipfile.is_zipfile(p):
        raise CoaloraError(f"{p} is neither a bundle directory nor a zip file")
    d = Path(tempfile.mkdtemp(prefix="coalora-bundle-"))
    try:
        try:
            with zipfile.ZipFile(p) as z:
                for name in z.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise CoaloraError(f"{p}: unsafe path {name!r} in the zip")
                z.extractall(d)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
            # a damaged archive: bad CRC, truncated member, mangled header fields (zipfile raises
            # NotImplementedError for a compression method it does not know, e.g. a corrupted method id)
            raise CoaloraError(f"{p} is a damaged zip file ({type(e).__name__}: {e}); re-export the bundle") from None
        except OSError as e:
            raise CoaloraError(f"cannot unpack {p} into {d} ({e}); free some space in the temporary directory") from None
        return _bundle_root(d), _verified_meta(_bundle_root(d))
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise


def _bundle_root(d: Path) -> Path:
    """Where an unpacked zip's bundle is: its one top-level folder, or ``d`` itself (older zips)."""
    if (d / CONFIG_FILE).is_file():
        return d
    entries = list(d.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else d


def _verified_meta(p: Path) -> dict[str, Any]:
    cfg = p / CONFIG_FILE
    if not cfg.is_file():
        raise CoaloraError(f"{p} is not a coalora bundle: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CoaloraError(f"{cfg}: malformed JSON ({type(e).__name__}: {e}); re-export the bundle") from None
    except OSError as e:
        raise CoaloraError(f"cannot read {cfg}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CoaloraError(f"{cfg}: format is {got!r}; this coalora reads {FORMAT!r}")
    files = meta.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise CoaloraError(f"{cfg}: no file list with hashes (key 'files'); the bundle is incomplete")
    _check_meta(cfg, meta)
    if meta["adapter"] is not None:
        for rel in (f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors"):
            if rel not in files:
                raise CoaloraError(f"{cfg}: the bundle has an adapter but its file list lacks {rel}; re-export the bundle")
    for rel, digest in files.items():
        f = p / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CoaloraError(f"{cfg}: unsafe path {rel!r} in the file list; re-export the bundle")
        if not f.is_file():
            raise CoaloraError(f"bundle {p}: file {rel} is missing; re-export the bundle")
        if sha256_file(f) != digest:
            raise CoaloraError(f"bundle {p}: file {rel} was altered (its sha256 differs from the recorded one); "
                               "re-export the bundle")
    return meta


def _number(v: Any, positive: bool = False) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (v > 0 or not positive)


def _count(v: Any, least: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _check_meta(cfg: Path, meta: dict[str, Any]) -> None:
    """The keys that loading and ``coalora load`` read, with their types (the file holds the hashes, so
    it is itself unhashed: a hand edit is caught here)."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise CoaloraError(f"{cfg}: key {key!r} must be {what}, got {meta.get(key)!r:.80}; re-export the bundle")

    need(isinstance(meta.get("model"), str), "model", "the name of a registry model")
    need(isinstance(meta.get("weights_hash"), str), "weights_hash", "the base weights' hash")
    need(isinstance(meta.get("config"), dict), "config", "a configuration object (coalora.quant_config/1)")
    a = meta.get("adapter", "missing")
    need(a is None or (isinstance(a, dict) and isinstance(a.get("method"), str) and _count(a.get("rank"))
                       and _number(a.get("alpha"), positive=True)),
         "adapter", "null or an object with 'method', a positive integer 'rank' and a positive 'alpha'")
    m = meta.get("measured", "missing")
    need(m is None or (isinstance(m, dict) and _number(m.get("ppl"), positive=True) and isinstance(m.get("eval_set"), str)
                       and _count(m.get("seqlen"), 2) and _count(m.get("windows"))),
         "measured", "null or an object with a positive 'ppl', 'eval_set', 'seqlen' (>= 2) and 'windows' (>= 1)")
    for key in ("avg_bits", "packed_bytes", "bits_bytes"):
        need(_number(meta.get(key), positive=True), key, "a positive number")


def _write_dequantized(model, targets, config: ModelQuantConfig, packed: dict[str, torch.Tensor], p: Path) -> None:
    """The fake-quantized load: each target Linear's weight overwritten by its dequantized packed weight."""
    from coalora.models import target_modules_of
    from coalora.quant.nf import PACK_KEYS, unpack

    modules = target_modules_of(model, targets)
    with torch.no_grad():
        for t, c in zip(targets, config.configs):
            qt = unpack({k: packed.get(f"{t.name}.{k}") for k in PACK_KEYS if f"{t.name}.{k}" in packed})
            if qt.config != c or tuple(qt.shape) != tuple(modules[t.name].weight.shape):
                raise CoaloraError(f"bundle {p}: packed weight of {t.name} does not match its configuration")
            w = modules[t.name].weight
            w.copy_(qt.dequantize().reshape(w.shape).to(w.device, w.dtype))


def load_bundle(path: str | os.PathLike, device: str | None = None, dtype: str = "float32",
                runtime: str = "packed") -> Bundle:
    """Rebuild the quantized model with its adapter from a bundle (directory or zip).

    ``runtime="packed"`` (default): every target becomes a :class:`coalora.quant.packed.PackedLinear` holding
    the bundle's packed codes as they are (memory ~ avg_bits / 8 per weight), dequantized per layer in
    each forward; ``"fake"``: the dequantized weights are written into the base model's Linears.
    ``dtype``: the compute dtype (the base weights are checked against the recorded hash in float32
    unless the checkpoint itself is in ``dtype``; whatever stays in full precision is then cast).
    """
    from safetensors.torch import load_file

    from coalora.lqlora.sensitivity import weights_fingerprint
    from coalora.models import find_targets, load_model, torch_dtype

    if runtime not in ("packed", "fake"):
        raise CoaloraError(f"unknown runtime {runtime!r}; use packed or fake")
    compute = torch_dtype(dtype, device)
    p, meta = read_bundle_meta(path)
    name = meta.get("model")
    if not isinstance(name, str):
        raise CoaloraError(f"{p / CONFIG_FILE}: key 'model' must name a registry model")
    # A bf16 checkpoint read in bf16 has the hash of its float32 reading; an fp32 one does not, so
    # only then is it read again in float32 (and cast after the check).
    model, tok = load_model(name, dtype=dtype, device=device)
    targets = find_targets(model)
    if dtype != "float32" and weights_fingerprint(model, targets) != meta.get("weights_hash"):
        del model
        model, tok = load_model(name, device=device)
    if weights_fingerprint(model, targets) != meta.get("weights_hash"):
        raise CoaloraError(f"bundle {p} was made from other weights of {name} (weights hash "
                           f"{meta.get('weights_hash')}); re-export it from this model")
    config = ModelQuantConfig.from_json(meta.get("config"), targets, model=name, where=f"{p / CONFIG_FILE}: config")
    packed = load_file(str(p / WEIGHTS_FILE))
    if runtime == "packed":
        from coalora.quant.packed import load_packed

        load_packed(model, config, packed, where=f"bundle {p}", dtype=compute)
    else:
        _write_dequantized(model, targets, config, packed, p)
    del packed
    model.to(compute)  # packed buffers are integers: only what stays in full precision is cast
    if meta.get("adapter") is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(p / ADAPTER_DIR))
    model.eval()
    return Bundle(model, tok, config, meta, p)
