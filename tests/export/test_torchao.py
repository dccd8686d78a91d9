"""The bundle's torchao map: torchao applies it on the CPU, the model runs, and its perplexity on
coalora's windows lands next to coalora's simulated one."""

from __future__ import annotations

import math

import pytest
import torch

from coalora.export.bundle import map_bits
from coalora.export.torchao import apply_torchao, fqn_to_config, load_fqn_config, torchao_bits, torchao_json
from coalora.models import find_targets, tiny_llama
from coalora.quant.config import ModelQuantConfig, resolve_preset


def _mixed(targets, model_name):
    cfg = ModelQuantConfig.uniform(model_name, targets, resolve_preset("nf4-dq"))
    return cfg.with_changes({targets[0].name: resolve_preset("nf2-dq"), targets[-1].name: resolve_preset("nf8-dq"),
                             targets[3].name: resolve_preset("uniform:3,8,fp32,32,256")})


def test_torchao_applies_the_map_per_module_and_runs(tmp_path):
    import json

    model = tiny_llama(seed=0)
    targets = find_targets(model)
    cfg = _mixed(targets, "tiny-llama")
    (tmp_path / "ao.json").write_text(json.dumps(torchao_json(cfg)))
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        apply_torchao(model, load_fqn_config(tmp_path / "ao.json"))
        quant = model(input_ids=ids).logits
    modules = dict(model.named_modules())
    for t, c in zip(targets, cfg.configs):
        w = modules[t.name].weight
        assert str(w.target_dtype) == f"torch.int{c.b0}" and tuple(w.block_size) == (1, c.B0)
    assert type(modules["lm_head"].weight) is torch.nn.Parameter  # non-targets are left alone
    assert torch.isfinite(quant).all() and 0 < (quant - dense).abs().max() < dense.abs().max()
    assert torchao_bits(model, [t.name for t in targets]) == pytest.approx(map_bits(cfg)["torchao"])


@pytest.mark.integration
def test_torchao_perplexity_of_smollm2_lands_next_to_coalora(default_model, capsys):
    from coalora.adapter.apply import ConfigApplier
    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.models import load_model

    model, tok = load_model("smollm2-135m")  # a private copy: torchao replaces its weights
    targets = find_targets(model)
    cfg = ModelQuantConfig.uniform("smollm2-135m", targets, resolve_preset("nf4-dq"))
    ew = eval_windows(tok, seqlen=128, windows=4)
    with torch.no_grad():
        apply_torchao(model, fqn_to_config(cfg))
        ao = perplexity(model, ew.windows, progress=False).ppl
        ref, _ = default_model
        applier = ConfigApplier(ref, "smollm2-135m", targets)
        applier.apply(cfg)
        sim = perplexity(ref, ew.windows, progress=False).ppl
        applier.restore()
    with capsys.disabled():
        print(f"\nnf4-dq on {ew.n} x {ew.seqlen} ({ew.spec}): torchao ppl {ao:.3f}, coalora simulated ppl {sim:.3f}")
    assert math.isfinite(ao) and 0.8 * sim < ao < 1.5 * sim
