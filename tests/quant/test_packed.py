"""The packed runtime (coalora.quant.packed): bit-exact agreement with fake quantization, memory, CLI paths."""

from __future__ import annotations

import json

import pytest
import torch

from coalora.adapter.apply import ConfigApplier
from coalora.errors import CoaloraError
from coalora.models import find_targets, tiny_llama
from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig, QuantConfig, resolve_preset
from coalora.quant.nf import fake_quantize, nf_codebook, pack, quantize, unpack_bits
from coalora.quant.packed import (
    PackedLinear,
    code_values,
    describe_packed,
    pack_model,
    packed_target_bytes,
    resident_bytes,
    unpack_codes,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_torch_unpacking_equals_the_reference_bit_stream(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
    from coalora.quant.nf import pack_bits

    packed = pack_bits(codes, bits)
    assert torch.equal(unpack_codes(packed, bits, n), unpack_bits(packed, bits, n).to(torch.int32))
    assert torch.equal(unpack_codes(packed, bits, n), codes.to(torch.int32))
    assert torch.equal(code_values(packed, bits, n), nf_codebook(bits)[codes.long()])


@pytest.mark.parametrize(("shape", "stride"), [((3, 5), 1), ((100, 37), 1), ((128, 128), 7), ((64, 128), 11)])
def test_dequantized_weight_is_bit_identical_to_fake_quantize_for_every_config(shape, stride):
    """Every one of the 432 configurations on small and ragged shapes (padding), a spread on larger ones."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(shape[1], shape[0])
    for c in ALL_CONFIGS[::stride]:
        layer = PackedLinear.from_linear(lin, c)
        assert torch.equal(layer.dequantize(), fake_quantize(lin.weight.detach(), c)), c


def test_forward_equals_the_linear_with_the_fake_quantized_weight():
    torch.manual_seed(1)
    lin = torch.nn.Linear(96, 40, bias=True)
    c = QuantConfig(3, 8, "bf16", 32, 64)
    layer = PackedLinear.from_linear(lin, c)
    x = torch.randn(2, 5, 96)
    ref = torch.nn.functional.linear(x, fake_quantize(lin.weight.detach(), c), lin.bias)
    assert torch.equal(layer(x), ref)
    assert isinstance(layer, torch.nn.Linear) and (layer.in_features, layer.out_features) == (96, 40)


def test_casting_the_model_leaves_the_packed_scale_bits_alone():
    torch.manual_seed(2)
    lin = torch.nn.Linear(64, 64)
    layer = PackedLinear.from_linear(lin, QuantConfig(4, 8, "fp32", 64, 16))
    before = layer.dequantize(torch.float32)
    layer.to(torch.bfloat16)
    assert torch.equal(layer.dequantize(torch.float32), before)  # the codes/scales survive .to(dtype)
    assert layer.bias.dtype == torch.bfloat16


def test_packed_model_logits_equal_the_fake_quantized_model(tiny_model):
    targets = find_targets(tiny_model)
    g = torch.Generator().manual_seed(0)
    configs = [ALL_CONFIGS[int(i)] for i in torch.randint(0, len(ALL_CONFIGS), (len(targets),), generator=g)]
    cfg = ModelQuantConfig("tiny-llama", tuple(targets), tuple(configs))
    ids = torch.randint(0, 256, (2, 32), generator=g)
    ConfigApplier(tiny_model, "tiny-llama").apply(cfg)
    with torch.no_grad():
        fake = tiny_model(input_ids=ids).logits
    packed_model = tiny_llama(seed=0)
    pack_model(packed_model, cfg)
    with torch.no_grad():
        packed = packed_model(input_ids=ids).logits
    assert torch.equal(packed, fake)
    assert sum(isinstance(m, PackedLinear) for m in packed_model.modules()) == len(targets)
    with pytest.raises(CoaloraError, match="plain nn.Linear"):
        pack_model(packed_model, cfg)  # packing twice is refused, not silently re-quantized


def test_resident_bytes_follow_the_bits():
    model = tiny_llama(seed=0)
    targets = find_targets(model)
    dense_target_bytes = sum(t.numel for t in targets) * 4
    cfg = ModelQuantConfig.uniform("tiny-llama", targets, resolve_preset("nf3-dq"))
    full_before = resident_bytes(model).full_precision
    pack_model(model, cfg)
    rb = resident_bytes(model)
    assert rb.packed == pytest.approx(packed_target_bytes(cfg), rel=0.01)
    assert rb.full_precision == pytest.approx(full_before - dense_target_bytes, rel=1e-6)  # the originals are gone
    assert rb.packed < dense_target_bytes * 3.5 / 32  # ~3.1 bits per weight, not 32
    assert describe_packed(model)["packed_bits_per_weight"] < 3.5


def test_pack_keeps_the_format_quant_pack_writes():
    torch.manual_seed(3)
    lin = torch.nn.Linear(50, 30)
    c = QuantConfig(3, 4, "fp16", 16, 64)
    layer = PackedLinear.from_linear(lin, c)
    ref = pack(quantize(lin.weight.detach(), c))
    assert torch.equal(layer.codes, ref["codes"]) and torch.equal(layer.scale_codes, ref["scale_codes"])
    assert torch.equal(layer.scales2.view(torch.float16), ref["scales2"])


def test_a_malformed_packed_dict_is_one_clear_error():
    lin = torch.nn.Linear(16, 16)
    d = pack(quantize(lin.weight.detach(), QuantConfig(4, 8, "fp32", 16, 16)))
    d["codes"] = d["codes"][:-1]
    with pytest.raises(CoaloraError, match="codes should be"):
        PackedLinear(d)


def _eval_json(capsys, argv):
    from coalora.cli import main

    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.integration  # reads the prepared Shakespeare corpus
def test_cli_eval_config_runs_packed_and_agrees_with_the_fake_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("coalora.evaluation.reference.cache_dir", lambda: tmp_path / "reference")
    base = ["eval", "--model", "tiny-llama", "--seqlen", "64", "--windows", "3", "--no-progress", "--json",
            "--preset", "nf3-dq"]
    packed = _eval_json(capsys, base)
    fake = _eval_json(capsys, [*base, "--runtime", "fake"])
    assert packed["runtime"] == "packed" and fake["runtime"] == "fake"
    assert packed["ppl"] == pytest.approx(fake["ppl"], rel=1e-6)
    assert packed["resident_weight_bytes"] < packed["full_precision_bytes"] + packed["packed_bytes"] + 1
    assert packed["packed_bits_per_weight"] < 3.5


def test_cli_rejects_packed_runtime_with_an_adapter(capsys):
    from coalora.cli import main

    assert main(["eval", "--model", "tiny-llama", "--preset", "nf4-dq", "--adapter", "x.safetensors",
                 "--runtime", "packed"]) == 2
    assert "--runtime fake" in capsys.readouterr().err


def test_a_bundle_loads_packed_by_default_and_matches_the_fake_load(tmp_path):
    from coalora.export.bundle import export_bundle, load_bundle
    from coalora.lqlora.sensitivity import weights_fingerprint
    from coalora.models import load_model, target_modules_of

    model, _ = load_model("tiny-llama")
    targets = find_targets(model)
    originals = {n: lin.weight.detach() for n, lin in target_modules_of(model, targets).items()}
    cfg = ModelQuantConfig.uniform("tiny-llama", targets, resolve_preset("nf3-dq"))
    out = export_bundle("tiny-llama", cfg, originals, tmp_path / "b", weights_hash=weights_fingerprint(model, targets))
    packed, fake = load_bundle(out), load_bundle(out, runtime="fake")
    assert isinstance(packed.model.get_submodule(targets[0].name), PackedLinear)
    assert not isinstance(fake.model.get_submodule(targets[0].name), PackedLinear)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(packed.model(input_ids=ids).logits, fake.model(input_ids=ids).logits)
    bf16 = load_bundle(out, dtype="bfloat16")
    assert bf16.model.get_submodule(targets[0].name).compute_dtype == torch.bfloat16
    with pytest.raises(CoaloraError, match="unknown runtime"):
        load_bundle(out, runtime="int4")
