"""Trained-adapter files: round trip, bad files, the generate CLI, and the PEFT equivalence on SmolLM2."""

from __future__ import annotations

import json
import random

import pytest
import torch

from coalora.adapter.model import AdapterConfig, CoALoRAModel
from coalora.adapter.trained import load_trained, read_trained, save_trained
from coalora.errors import CoaloraError
from coalora.models import find_targets, tiny_llama
from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig


def _trained_tiny(tmp_path, rank=4):
    model = tiny_llama(seed=0)
    coa = CoALoRAModel(model, "tiny-llama", find_targets(model), AdapterConfig(rank=rank))
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return coa, save_trained(coa, tmp_path / "tiny.safetensors", dtype=torch.float32)


def _cfg(targets, seed=0, model="tiny-llama"):
    rng = random.Random(seed)
    return ModelQuantConfig.from_ids(model, targets, [rng.randrange(len(ALL_CONFIGS)) for _ in targets])


def test_round_trip_gives_the_same_adapters(tmp_path):
    coa, path = _trained_tiny(tmp_path)
    model = tiny_llama(seed=0)
    back = load_trained(path, model, "tiny-llama")
    cfg = _cfg(back.targets)
    a, b = coa.lora_for(cfg), back.lora_for(cfg)
    for k in a:
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])


@pytest.mark.parametrize("field", ["theta_context", "theta_error"])
def test_theta_inputs_round_trip_and_their_size_is_checked(tmp_path, tmp_home, field):
    """An adapter whose theta sees the configuration's context (or each layer's error) loads with it;
    a description that says otherwise is refused before anything is built, and an older file (no
    field) loads without it."""
    from coalora.adapter.trained import FORMAT
    from coalora.files import load_tagged, save_tagged

    model = tiny_llama(seed=0)
    coa = CoALoRAModel(model, "tiny-llama", find_targets(model), AdapterConfig(rank=4, **{field: True}))
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = save_trained(coa, tmp_path / "ctx.safetensors", dtype=torch.float32)
    back = load_trained(path, tiny_llama(seed=0), "tiny-llama")
    assert getattr(back.adapter_config, field)
    cfg = _cfg(back.targets, 3)
    assert torch.equal(coa.u_matrices(cfg), back.u_matrices(cfg))
    tensors, meta = load_tagged(path, FORMAT, "trained adapter")
    meta["adapter"][field] = False
    save_tagged(tensors, tmp_path / "lying.safetensors", FORMAT, meta)
    with pytest.raises(CoaloraError, match=f"{field} False[,)].* does not match its tensors"):
        load_trained(tmp_path / "lying.safetensors", tiny_llama(seed=0), "tiny-llama")
    _, old = _trained_tiny(tmp_path)
    tensors, meta = load_tagged(old, FORMAT, "trained adapter")
    del meta["adapter"][field]
    save_tagged(tensors, tmp_path / "old.safetensors", FORMAT, meta)
    assert not getattr(load_trained(tmp_path / "old.safetensors", tiny_llama(seed=0), "tiny-llama").adapter_config,
                       field)


def test_bf16_file_is_half_the_size(tmp_path):
    coa, p32 = _trained_tiny(tmp_path)
    p16 = save_trained(coa, tmp_path / "bf16.safetensors")
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    assert read_trained(p16)[1]["dtype"] == "bfloat16"


def test_wrong_model_truncated_and_foreign_files(tmp_path):
    _, path = _trained_tiny(tmp_path)
    with pytest.raises(CoaloraError, match="trained for model 'tiny-llama', not 'smollm2-135m'"):
        load_trained(path, tiny_llama(seed=0), "smollm2-135m")
    other = tiny_llama(seed=0, num_layers=3)
    with pytest.raises(CoaloraError, match="target modules"):
        load_trained(path, other, "tiny-llama")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CoaloraError, match="corrupt or truncated"):
        read_trained(cut)
    with pytest.raises(CoaloraError, match="no trained adapter"):
        read_trained(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CoaloraError, match="not a coalora adapter"):
        read_trained(tmp_path / "foreign.safetensors")


def test_cli_generate_writes_a_peft_adapter(tmp_path, capsys):
    from coalora.cli import main

    _, path = _trained_tiny(tmp_path)
    out = tmp_path / "peft"
    assert main(["generate", "--adapter", str(path), "--model", "tiny-llama", "--preset", "nf3-dq",
                 "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["modules"] == 14 and res["rank"] == 4
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"
    assert main(["generate", "--adapter", str(path), "--model", "tiny-llama", "--out", str(out)]) == 2
    assert "exactly one of --config or --preset" in capsys.readouterr().err


@pytest.mark.integration
def test_generated_adapter_matches_fused_model_on_smollm2(tmp_path):
    """The PEFT adapter loaded on the quantized SmolLM2 reproduces the configuration-aware model."""
    from peft import PeftModel

    from coalora.adapter.apply import ConfigApplier
    from coalora.export.peft import save_peft_adapter
    from coalora.models import load_model

    model, _ = load_model("smollm2-135m")
    targets = find_targets(model)
    coa = CoALoRAModel(model, "smollm2-135m", targets, AdapterConfig(rank=8, init="peft"), cache_bytes=0)
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer in coa.layers.values():
            layer.lora_B.add_(torch.randn_like(layer.lora_B) * 0.01)
    cfg = _cfg(targets, seed=7, model="smollm2-135m")
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused = coa(input_ids=ids, config=cfg).logits
    path = save_peft_adapter(coa.lora_for(cfg), tmp_path / "a", rank=8, alpha=16.0, base_model="smollm2-135m")
    del coa, model
    base, _ = load_model("smollm2-135m")
    ConfigApplier(base, "smollm2-135m", cache_bytes=0).apply(cfg)
    with torch.no_grad():
        ref = PeftModel.from_pretrained(base, str(path))(input_ids=ids).logits
    diff = (fused - ref).abs().max().item()
    assert diff < 1e-4, diff
