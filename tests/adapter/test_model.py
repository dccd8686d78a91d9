"""The configuration-aware adapter: theta at init, fused forward vs the generated PEFT adapter."""

from __future__ import annotations

import random

import pytest
import torch

from coalora.adapter.model import AdapterConfig, CoALoRAModel
from coalora.errors import CoaloraError
from coalora.models import find_targets, tiny_llama
from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig


def _random_config(targets, seed):
    rng = random.Random(seed)
    return ModelQuantConfig.from_ids("tiny-llama", targets, [rng.randrange(len(ALL_CONFIGS)) for _ in targets])


def _coa(init="lq", rank=8, seed=0):
    model = tiny_llama(seed=0)
    targets = find_targets(model)
    return CoALoRAModel(model, "tiny-llama", targets, AdapterConfig(rank=rank, init=init), seed=seed), targets


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank"),
        ({"alpha": -1.0}, "alpha"),
        ({"init": "xavier"}, "init"),
        ({"ref_preset": "nf5-dq"}, "preset"),
    ],
)
def test_adapter_config_validation(kwargs, match):
    with pytest.raises(CoaloraError, match=match):
        AdapterConfig(**kwargs)


def test_theta_at_init_is_identity():
    coa, targets = _coa()
    u = coa.u_matrices(_random_config(targets, 1))
    assert u.shape == (len(targets), 8, 8)
    # Last layer N(0, 1e-3), 128 inputs of magnitude ~1 after LayerNorm/SiLU: entries ~1e-2 at most.
    assert (u - torch.eye(8)).abs().max() < 0.05
    assert coa.theta.gamma.item() == 1.0


def test_peft_init_is_exactly_the_quantized_base():
    coa, targets = _coa(init="peft")
    cfg = _random_config(targets, 2)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        fused = coa(input_ids=ids, config=cfg).logits
        coa.set_config(cfg, theta=False)
        base = coa.model(input_ids=ids).logits
    assert torch.equal(fused, base)  # B = 0: the adapter adds nothing at init


def test_lq_init_reduces_the_reference_residual():
    from coalora.quant.config import resolve_preset

    coa, targets = _coa(init="lq", rank=8)
    ref = ModelQuantConfig.uniform("tiny-llama", targets, resolve_preset("nf3-dq"))
    coa.applier.apply(ref)
    for t in targets:
        layer = coa.layers[t.name]
        w = coa.applier.originals[t.name]
        q = layer.base_layer.weight
        delta = layer.scaling * layer.lora_B @ layer.lora_A
        assert torch.linalg.norm(w - q - delta) < torch.linalg.norm(w - q)


@pytest.mark.parametrize("init", ["lq", "peft"])
def test_generated_peft_adapter_matches_fused_forward(tmp_path, init):
    from peft import PeftModel

    from coalora.adapter.apply import ConfigApplier
    from coalora.export.peft import save_peft_adapter

    coa, targets = _coa(init=init)
    # Make theta and B non-trivial so the test can fail if U were dropped or misplaced.
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer in coa.layers.values():
            layer.lora_B.add_(torch.randn_like(layer.lora_B) * 0.02)
    cfg = _random_config(targets, 3)
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        fused = coa(input_ids=ids, config=cfg).logits
    assert (coa.u_matrices(cfg) - torch.eye(8)).abs().max() > 1e-2
    path = save_peft_adapter(coa.lora_for(cfg), tmp_path / "adapter", rank=8, alpha=16.0, base_model="tiny-llama")
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    base = tiny_llama(seed=0)
    ConfigApplier(base, "tiny-llama", find_targets(base)).apply(cfg)
    peft_model = PeftModel.from_pretrained(base, str(path))
    with torch.no_grad():
        ref = peft_model(input_ids=ids).logits
    assert (fused - ref).abs().max() < 1e-4


def test_different_configs_get_different_adapters():
    coa, targets = _coa()
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a = coa.lora_for(_random_config(targets, 4))
    b = coa.lora_for(_random_config(targets, 5))
    name = targets[0].name
    assert not torch.allclose(a[name][0], b[name][0])
    assert torch.equal(a[name][1], b[name][1])  # B is shared; only A' = U A depends on the config


def test_theta_context_tells_one_layer_config_apart_in_two_models():
    """With ``theta_context`` a layer with the same own configuration gets another U when the rest of the
    model is quantized differently (the paper's theta cannot tell them apart); its inputs are the
    parameter-weighted average bits and 2-bit share."""
    from coalora.adapter.theta import config_context

    low, high = ALL_CONFIGS[0], ALL_CONFIGS[-1]
    assert low.b0 == 2 and high.b0 == 8
    model = tiny_llama(seed=0)
    targets = find_targets(model)
    first = targets[0].name
    a = ModelQuantConfig.uniform("tiny-llama", targets, high).with_changes({first: low})
    b = ModelQuantConfig.uniform("tiny-llama", targets, low)
    ctx = config_context(a)
    share = targets[0].numel / sum(t.numel for t in targets)
    assert torch.allclose(ctx, torch.tensor([(a.avg_bits - 4) / 2, share]))
    for context, same in ((False, True), (True, False)):
        coa = CoALoRAModel(tiny_llama(seed=0), "tiny-llama", targets, AdapterConfig(rank=4, theta_context=context))
        with torch.no_grad():
            for p in coa.theta.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ua, ub = coa.u_matrices(a)[0], coa.u_matrices(b)[0]
        assert torch.equal(ua, ub) is same


def test_theta_context_must_be_a_bool():
    with pytest.raises(CoaloraError, match="theta_context must be true or false"):
        AdapterConfig(theta_context="yes")


def test_trainable_state_round_trip_and_mismatch():
    coa, _ = _coa(rank=8)
    state = {k: v.clone() for k, v in coa.trainable_state().items()}
    other, _ = _coa(rank=8, seed=1)
    other.load_trainable_state(state)
    for k, v in other.trainable_state().items():
        assert torch.equal(v, state[k])
    wrong_rank, _ = _coa(rank=4)
    with pytest.raises(CoaloraError, match="shape .*another model or rank"):
        wrong_rank.load_trainable_state(state)
    with pytest.raises(CoaloraError, match="missing"):
        other.load_trainable_state({k: v for k, v in state.items() if "layers.0" not in k})


def test_config_for_another_model_rejected():
    coa, targets = _coa()
    cfg = ModelQuantConfig.uniform("smollm2-135m", targets, ALL_CONFIGS[0])
    with pytest.raises(CoaloraError, match="not 'tiny-llama'"):
        coa.u_matrices(cfg)


def test_only_adapter_parameters_train():
    coa, targets = _coa()
    names = {n for n, p in coa.named_parameters() if p.requires_grad}
    assert names and all(("lora_" in n) or n.startswith("theta.") for n in names)


def test_disabled_runs_the_bare_quantized_model():
    coa, targets = _coa(init="lq")
    cfg = _random_config(targets, 6)
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        with_adapter = coa(input_ids=ids, config=cfg).logits
        with coa.disabled():
            bare = coa.model(input_ids=ids).logits
        again = coa.model(input_ids=ids).logits
    from coalora.adapter.apply import ConfigApplier

    ref_model = tiny_llama(seed=0)
    ConfigApplier(ref_model, "tiny-llama", find_targets(ref_model)).apply(cfg)
    with torch.no_grad():
        ref = ref_model(input_ids=ids).logits
    assert torch.equal(bare, ref)
    assert torch.equal(again, with_adapter) and not torch.equal(bare, with_adapter)


def test_merged_inference_matches_the_lora_path_and_follows_changes():
    """merge(): forwards without autograd use W_C + s B U A; same logits, rebuilt on every change."""
    coa, targets = _coa()
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))

    def logits(merge: bool, cfg) -> torch.Tensor:
        if merge:
            coa.merge()
        else:
            coa.unmerge()
        assert all(layer.merged == merge for layer in coa.layers.values())
        with torch.no_grad():
            coa.set_config(cfg)
            return coa.model(input_ids=ids).logits

    for seed in (1, 2, 1):  # a switch back must not reuse the other configuration's merged weights
        cfg = _random_config(targets, seed)
        ref, merged = logits(False, cfg), logits(True, cfg)
        assert (merged - ref).abs().max() < 1e-4
    with torch.no_grad():  # an in-place update of B (as an optimiser step does) is seen too
        coa.layers[targets[0].name].lora_B.add_(0.1)
    assert (logits(True, cfg) - logits(False, cfg)).abs().max() < 1e-4
    # with autograd on, the merged copy is never used: training sees the LoRA parameters
    coa.merge()
    coa.set_config(cfg)
    loss = coa.model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert coa.layers[targets[0].name].lora_A.grad is not None


def test_one_default_per_concept():
    """The trainer's adapter fields take their defaults from AdapterConfig; the base is the method's own."""
    from coalora.train.config import TrainConfig

    assert TrainConfig().adapter == AdapterConfig(base="lq")
    assert TrainConfig(method="shared").adapter == AdapterConfig()


def test_set_u_and_set_config_without_theta():
    coa, targets = _coa(init="lq")
    cfg = _random_config(targets, 7)
    coa.set_config(cfg)
    assert all(layer.U is not None for layer in coa.layers.values())
    coa.set_config(cfg, theta=False)
    assert all(layer.U is None for layer in coa.layers.values())
    us = coa.u_matrices(cfg)
    coa.set_u(us)
    assert torch.equal(coa.layers[targets[1].name].U, us[1])
    with pytest.raises(CoaloraError, match="U matrices for"):
        coa.set_u(us[:-1])
    with pytest.raises(CoaloraError, match="U must have shape"):
        coa.layers[targets[0].name].set_u(torch.eye(3))


def test_load_lora_and_load_split():
    coa, targets = _coa(init="peft", rank=4)
    layer = coa.layers[targets[0].name]
    d_out, d_in = layer.lora_B.shape[0], layer.lora_A.shape[1]
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(d_out, 4, generator=g), torch.randn(4, d_in, generator=g)
    layer.load_split_(l1, l2)
    assert torch.allclose(layer.scaling * layer.lora_B @ layer.lora_A, l1 @ l2, atol=1e-5)
    layer.load_lora_(l2, l1)
    assert torch.equal(layer.lora_A, l2) and torch.equal(layer.lora_B, l1)
    with pytest.raises(CoaloraError, match="LoRA A must have shape"):
        layer.load_lora_(l1, l1)


def test_unmerge_keeps_or_drops_the_merged_weight():
    coa, targets = _coa(init="lq", rank=4)
    layer = coa.layers[targets[0].name]
    coa.set_config(_random_config(targets, 8))
    coa.merge()
    built = layer.merged_weight()
    coa.unmerge(keep_weights=True)
    assert not layer.merged
    coa.merge()
    assert layer.merged_weight() is built  # nothing changed: the kept copy is reused
    coa.unmerge()
    assert layer._merged is None
    with pytest.raises(CoaloraError, match="merge is a method"):
        layer.merge = True


def test_default_weight_cache_is_the_appliers(monkeypatch):
    """cache_bytes None means what it means for ConfigApplier: sized from the free memory."""
    monkeypatch.setattr("coalora.adapter.apply.free_memory_bytes", lambda device="cpu": 1 << 30)
    coa, _ = _coa(init="peft", rank=4)
    assert coa.applier.cache.max_bytes == (1 << 30) // 4


def test_theta_error_feeds_each_layer_its_standardized_quantization_error(tmp_home):
    """With ``theta_error`` theta's extra input is log(relative quantization error), standardized over
    the [N, 432] table: higher for the lowest-bit configuration than the highest in every layer,
    deterministic, and U moves when only that input moves."""
    from coalora.adapter.theta import error_features
    from coalora.lqlora.error_table import error_table

    model = tiny_llama(seed=0)
    targets = find_targets(model)
    coa = CoALoRAModel(model, "tiny-llama", targets, AdapterConfig(rank=4, theta_error=True))
    table = coa._error
    assert table.shape == (len(targets), len(ALL_CONFIGS))
    assert abs(float(table.mean())) < 1e-4 and abs(float(table.std()) - 1) < 1e-4
    low = min(ALL_CONFIGS, key=lambda c: c.bits)
    high = max(ALL_CONFIGS, key=lambda c: c.bits)
    assert bool((table[:, low.id] > table[:, high.id]).all())
    originals = [coa.applier.originals[t.name] for t in targets]
    assert torch.equal(error_features(error_table(originals, progress=False), originals), table)
    cfg = ModelQuantConfig.uniform("tiny-llama", targets, low)
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        u = coa.u_matrices(cfg)
        assert u.shape == (len(targets), 4, 4)
        feats = coa.features(cfg)
        assert not torch.allclose(coa.theta(feats, None, table[:, low.id] + 1.0), u)
        with pytest.raises(ValueError, match="layer errors"):
            coa.theta(feats)
