"""dtype and device selection: bf16 originals and compute, the weight cache sized from free memory."""

from __future__ import annotations

import pytest
import torch

from coalora.adapter.apply import DEFAULT_CACHE_BYTES, ConfigApplier, WeightCache, auto_cache_bytes, free_memory_bytes
from coalora.errors import CoaloraError
from coalora.models import find_targets, load_model, resolve_device, tiny_llama, torch_dtype
from coalora.quant.config import ModelQuantConfig, resolve_preset
from coalora.quant.packed import PackedLinear, pack_model


def test_load_model_in_bfloat16_keeps_every_weight_in_bf16():
    model, _ = load_model("tiny-llama", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_dtype_and_device_are_one_clear_error():
    with pytest.raises(CoaloraError, match="unknown dtype 'int8'"):
        torch_dtype("int8")
    with pytest.raises(CoaloraError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(CoaloraError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bf16_packed_and_fake_paths_agree_and_compute_in_bf16():
    """Same dequantized values, cast once to bf16: the two runtimes give identical bf16 logits."""
    fake, packed = tiny_llama(seed=0).to(torch.bfloat16), tiny_llama(seed=0).to(torch.bfloat16)
    targets = find_targets(fake)
    cfg = ModelQuantConfig.uniform("tiny-llama", targets, resolve_preset("nf4-dq"))
    ConfigApplier(fake, "tiny-llama", cache_bytes=0).apply(cfg)
    pack_model(packed, cfg)
    layer = packed.get_submodule(targets[0].name)
    assert isinstance(layer, PackedLinear) and layer.compute_dtype == torch.bfloat16
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = fake(input_ids=ids).logits, packed(input_ids=ids).logits
    assert a.dtype == b.dtype == torch.bfloat16
    assert torch.equal(a, b)


def test_bf16_changes_logits_only_by_rounding():
    fp32 = tiny_llama(seed=0)
    bf16 = tiny_llama(seed=0).to(torch.bfloat16)
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = fp32(input_ids=ids).logits, bf16(input_ids=ids).logits.float()
    assert not torch.equal(a, b)
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_default_cache_is_a_fraction_of_free_memory_and_says_what_it_holds(monkeypatch):
    monkeypatch.setattr("coalora.adapter.apply.free_memory_bytes", lambda device="cpu": 1 << 30)
    assert auto_cache_bytes() == (1 << 30) // 4  # a quarter of 1 GiB free
    monkeypatch.setattr("coalora.adapter.apply.free_memory_bytes", lambda device="cpu": 64 << 30)
    assert auto_cache_bytes() == DEFAULT_CACHE_BYTES  # never above the old fixed size
    model = tiny_llama(seed=0)
    applier = ConfigApplier(model, "tiny-llama")
    assert applier.cache.max_bytes == DEFAULT_CACHE_BYTES
    applier.apply(applier.uniform(resolve_preset("nf4-dq")))
    n = len(applier.targets)
    assert applier.cache.describe().startswith(f"{n} weights of {n} matrices, ")
    assert f"misses {n}" in applier.cache.describe()


def test_free_memory_is_positive_on_the_host():
    assert free_memory_bytes("cpu") > 0
    assert WeightCache(0).describe() == "0 weights of 0 matrices, 0.0 of 0.0 MiB (hits 0, misses 0)"


def test_meta_device_plumbing_builds_no_storage():
    """The device path is device-agnostic: a model moved to ``meta`` keeps its structure and holds no bytes."""
    model, _ = load_model("tiny-llama", device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    from coalora.quant.packed import resident_bytes

    assert resident_bytes(model).total == 0
