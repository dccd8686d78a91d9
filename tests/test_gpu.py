"""The CUDA path: the same packing, evaluation, training step and bundle round trip on a GPU.

Marked ``gpu`` and skipped where no CUDA device is visible (CI and the 2-core dev machine); run
them on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cfg(model, preset: str = "nf3-dq"):
    from coalora.models import find_targets
    from coalora.quant.config import ModelQuantConfig, resolve_preset

    return ModelQuantConfig.uniform("tiny-llama", find_targets(model), resolve_preset(preset))


def test_packed_layers_live_and_decode_on_the_gpu():
    from coalora.quant.config import ALL_CONFIGS
    from coalora.quant.nf import fake_quantize
    from coalora.quant.packed import PackedLinear

    lin = torch.nn.Linear(100, 64).cuda()
    for c in ALL_CONFIGS[::5]:
        layer = PackedLinear.from_linear(lin, c)
        assert layer.codes.is_cuda and layer.dequantize().is_cuda
        assert torch.equal(layer.dequantize().cpu(), fake_quantize(lin.weight.detach().cpu(), c))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_and_fake_quantized_models_agree_on_the_gpu(dtype):
    from coalora.adapter.apply import ConfigApplier
    from coalora.models import tiny_llama
    from coalora.quant.packed import pack_model

    fake, packed = tiny_llama().to("cuda", dtype), tiny_llama().to("cuda", dtype)
    cfg = _cfg(fake)
    ConfigApplier(fake, "tiny-llama", cache_bytes=0).apply(cfg)
    pack_model(packed, cfg)
    ids = torch.randint(0, 256, (2, 32), device="cuda")
    with torch.no_grad():
        a, b = fake(input_ids=ids).logits, packed(input_ids=ids).logits
    assert (a.float() - b.float()).abs().max() <= 1e-3 * a.float().abs().max()


def test_perplexity_runs_on_the_device_of_the_model():
    from coalora.evaluation.perplexity import perplexity
    from coalora.models import tiny_llama
    from coalora.quant.packed import pack_model

    model = tiny_llama().cuda()
    pack_model(model, _cfg(model))
    windows = torch.randint(0, 256, (4, 33))  # on the host: perplexity moves each batch
    r = perplexity(model, windows, progress=False)
    assert r.ppl > 1 and r.windows == 4


def test_a_coalora_training_step_stays_on_the_gpu():
    from coalora.adapter.model import AdapterConfig, CoALoRAModel
    from coalora.models import find_targets, tiny_llama

    model = tiny_llama().cuda()
    targets = find_targets(model)
    coa = CoALoRAModel(model, "tiny-llama", targets, AdapterConfig(rank=4), cache_bytes=1 << 28)
    coa.set_config(_cfg(model, "nf4-dq"))
    ids = torch.randint(0, 256, (2, 32), device="cuda")
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in coa.trainable_parameters() if p.grad is not None]
    assert grads and all(g.is_cuda for g in grads)


def test_bundle_round_trip_loads_packed_on_the_gpu(tmp_path):
    from coalora.export.bundle import export_bundle, load_bundle
    from coalora.lqlora.sensitivity import weights_fingerprint
    from coalora.models import find_targets, load_model, target_modules_of
    from coalora.quant.packed import PackedLinear

    model, _ = load_model("tiny-llama")
    targets = find_targets(model)
    originals = {n: lin.weight.detach() for n, lin in target_modules_of(model, targets).items()}
    out = export_bundle("tiny-llama", _cfg(model), originals, tmp_path / "b",
                        weights_hash=weights_fingerprint(model, targets))
    b = load_bundle(out, device="cuda", dtype="bfloat16")
    layer = b.model.get_submodule(targets[0].name)
    assert isinstance(layer, PackedLinear) and layer.codes.is_cuda and layer.compute_dtype == torch.bfloat16
    with torch.no_grad():
        assert b.model(input_ids=torch.randint(0, 256, (1, 16), device="cuda")).logits.is_cuda
