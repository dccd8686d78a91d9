from __future__ import annotations

import pytest
import torch

from coalora.adapter.apply import ConfigApplier, WeightCache
from coalora.errors import CoaloraError
from coalora.models import find_targets
from coalora.quant.config import ALL_CONFIGS, PRESETS, ModelQuantConfig
from coalora.quant.nf import fake_quantize


def test_apply_uses_quantized_weights_and_restore_brings_originals_back(tiny_model):
    applier = ConfigApplier(tiny_model, "tiny-llama")
    orig = {n: lin.weight.detach().clone() for n, lin in applier.linears.items()}
    cfg = applier.uniform(PRESETS["nf3-dq"])
    stats = applier.apply(cfg)
    assert stats.changed == stats.quantized == 14
    for name, lin in applier.linears.items():
        assert torch.equal(lin.weight, fake_quantize(orig[name], PRESETS["nf3-dq"]))
    assert applier.applied == cfg
    applier.restore()
    for name, lin in applier.linears.items():
        assert torch.equal(lin.weight, orig[name])
    assert applier.applied is None


def test_switch_requantizes_only_changed_matrices(tiny_model):
    applier = ConfigApplier(tiny_model, "tiny-llama")
    a = applier.uniform(PRESETS["nf4-dq"])
    applier.apply(a)
    b = a.with_changes({applier.targets[0].name: PRESETS["nf2-dq"], applier.targets[5].name: ALL_CONFIGS[0]})
    s = applier.apply(b)
    assert (s.changed, s.quantized) == (2, 2)
    s = applier.apply(a)  # back: both from the cache
    assert (s.changed, s.quantized) == (2, 0)
    assert applier.apply(a).changed == 0


def test_a_new_original_is_quantized_afresh_not_read_from_the_cache(tiny_model):
    # LQ-LoRA's base quantizes W - L1 L2: after set_original the same configuration must quantize the
    # new weight (its cached quantized weights are stale), and other matrices keep their cache.
    applier = ConfigApplier(tiny_model, "tiny-llama")
    cfg = applier.uniform(PRESETS["nf3-dq"])
    applier.apply(cfg)
    name = applier.targets[0].name
    new = applier.originals[name] * 0.5
    applier.set_original(name, new)
    assert applier.applied is None and torch.equal(applier.linears[name].weight, new)
    s = applier.apply(cfg)
    assert (s.changed, s.quantized) == (1, 1)
    assert torch.equal(applier.linears[name].weight, fake_quantize(new, PRESETS["nf3-dq"]))
    assert applier.cache.bytes == sum(lin.weight.numel() * lin.weight.element_size() for lin in applier.linears.values())


def test_model_output_changes_with_bits(tiny_model):
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_model(input_ids=ids).logits
    applier = ConfigApplier(tiny_model, "tiny-llama")
    errs = []
    for k in (2, 3, 4, 8):
        applier.apply(applier.uniform(PRESETS[f"nf{k}-dq"]))
        with torch.no_grad():
            errs.append(float((tiny_model(input_ids=ids).logits - ref).abs().mean()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] / 10


def test_config_for_another_model_is_rejected(tiny_model):
    applier = ConfigApplier(tiny_model, "tiny-llama")
    other = ModelQuantConfig.uniform("smollm2-135m", find_targets(tiny_model), PRESETS["nf4-dq"])
    with pytest.raises(CoaloraError, match="not 'tiny-llama'"):
        applier.apply(other)


def test_cache_is_bounded_in_bytes():
    cache = WeightCache(max_bytes=3 * 400)
    for i in range(5):
        cache.put(("m", i), torch.zeros(100))  # 400 bytes each
    assert len(cache) == 3 and cache.bytes == 1200
    assert cache.get(("m", 0)) is None and cache.get(("m", 4)) is not None
    cache.put(("big", 0), torch.zeros(1000))  # larger than the whole cache: not stored
    assert len(cache) == 3


def test_zero_byte_cache_still_applies(tiny_model):
    applier = ConfigApplier(tiny_model, "tiny-llama", cache_bytes=0)
    cfg = applier.uniform(PRESETS["nf4-dq"])
    applier.apply(cfg)
    applier.restore()
    assert applier.apply(cfg).quantized == 14


def test_lq_base_is_closer_to_the_original_than_plain_quantization():
    from coalora.adapter.apply import BaseSpec
    from coalora.lqlora.split import fast_split
    from coalora.quant.config import resolve_preset
    from coalora.quant.nf import fake_quantize

    torch.manual_seed(0)
    # a low-rank structure plus outliers: what plain low-bit quantization handles worst
    w = torch.randn(64, 8) @ torch.randn(8, 96) * 0.3 + torch.randn(64, 96) * 0.02
    c = resolve_preset("nf2-dq")
    plain = (w - fake_quantize(w, c)).norm()
    lq = (w - BaseSpec("lq", lq_rank=8, lq_iters=2).weight(w, c)).norm()
    assert lq < 0.5 * plain
    split = fast_split(w, c, 8, 5)
    assert split.l1.shape == (64, 8) and split.l2.shape == (8, 96)
    assert torch.equal(split.q, fake_quantize(w - split.l1 @ split.l2, c))
    # the best iterate: never worse than the first alternation, and the loop stops once it stops improving
    assert (w - split.q - split.l1 @ split.l2).norm() <= split.errors[0] + 1e-6
    assert min(split.errors) == pytest.approx(float((w - split.q - split.l1 @ split.l2).norm()), rel=1e-5)
    again = fast_split(w, c, 8, 5)
    assert torch.equal(split.l1, again.l1)  # seeded: the same configuration always gets the same base
    assert torch.equal(BaseSpec().weight(w, c), fake_quantize(w, c))
    with pytest.raises(CoaloraError, match="unknown base"):
        BaseSpec("gptq")


def test_a_call_can_override_the_base_and_the_switch_back_is_not_skipped(tiny_model):
    """An lq-base adapter's "none" is the plainly quantized model: apply(..., base=BaseSpec())."""
    from coalora.adapter.apply import BaseSpec
    from coalora.quant.nf import fake_quantize

    applier = ConfigApplier(tiny_model, "tiny-llama", base=BaseSpec("lq", lq_rank=4, lq_iters=2))
    cfg = applier.uniform(PRESETS["nf3-dq"])
    name = applier.targets[0].name
    orig = applier.originals[name]
    applier.apply(cfg, base=BaseSpec())
    assert torch.equal(applier.linears[name].weight, fake_quantize(orig.float(), PRESETS["nf3-dq"]).to(orig.dtype))
    assert applier.applied is None  # not this applier's base
    assert applier.apply(cfg).changed == len(applier.targets)  # same ids, other base: every matrix switches
    assert applier.applied == cfg
    lq = BaseSpec("lq", lq_rank=4, lq_iters=2).weight(orig.float(), PRESETS["nf3-dq"]).to(orig.dtype)
    assert torch.equal(applier.linears[name].weight, lq)
    assert applier.apply(cfg, base=BaseSpec()).quantized == 0  # both bases' weights are cached apart
