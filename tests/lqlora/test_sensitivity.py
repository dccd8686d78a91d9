from __future__ import annotations

import pytest
import torch

from coalora.errors import CoaloraError
from coalora.lqlora.sensitivity import activation_importance, cached_error_table, fisher_importance
from coalora.models import ByteTokenizer, find_targets


def test_activation_importance_is_mean_squared_input(tiny_model):
    targets = find_targets(tiny_model)
    windows = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    imp = activation_importance(tiny_model, targets, windows)
    assert set(imp) == {t.name for t in targets}
    for t in targets:
        assert imp[t.name].shape == (1, t.shape[1]) and bool((imp[t.name] >= 0).all())
    # check one by hand: the input of down_proj is act(gate(x)) * up(x)
    captured = []
    lin = dict(tiny_model.named_modules())[targets[6].name]
    h = lin.register_forward_pre_hook(lambda m, i: captured.append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        for w in windows:
            tiny_model(input_ids=w[None])
    h.remove()
    x = torch.cat(captured)
    torch.testing.assert_close(imp[targets[6].name][0], (x * x).mean(0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weighting", ["none", "activation", "fisher"])
def test_error_table_is_cached(tiny_model, tmp_home, weighting):
    targets = find_targets(tiny_model)
    table = cached_error_table(tiny_model, "tiny-llama", targets, weighting, tokenizer=ByteTokenizer(), progress=False)
    assert table.shape == (14, 432) and table.dtype == torch.float64 and bool((table >= 0).all())
    files = list((tmp_home / "error_tables").glob(f"tiny-llama-{weighting}*-*.safetensors"))
    assert len(files) == 1
    again = cached_error_table(tiny_model, "tiny-llama", targets, weighting, tokenizer=ByteTokenizer(), progress=False)
    assert torch.equal(table, again)
    files[0].write_bytes(b"corrupt")  # recomputed, not trusted
    assert torch.equal(cached_error_table(tiny_model, "tiny-llama", targets, weighting, tokenizer=ByteTokenizer(), progress=False), table)


def test_unknown_weighting(tiny_model):
    with pytest.raises(CoaloraError, match="unknown weighting"):
        cached_error_table(tiny_model, "tiny-llama", find_targets(tiny_model), "hessian")


def test_cli_allocate_writes_a_valid_config_within_budget(tmp_home, tmp_path, capsys):
    import json

    from coalora.cli import main
    from coalora.models import model_targets
    from coalora.quant.config import ModelQuantConfig

    out = tmp_path / "cfg.json"
    for method in ("exact", "fast"):
        assert main(["allocate", "--model", "tiny-llama", "--budget", "3.0", "--method", method,
                     "--out", str(out), "--json", "--no-progress"]) == 0
        res = json.loads(capsys.readouterr().out)
        cfg = ModelQuantConfig.load(out, model_targets("tiny-llama"), model="tiny-llama")
        assert cfg.avg_bits <= 3.0 + 1e-12 and res["avg_bits"] == pytest.approx(cfg.avg_bits)
        assert res["hash"] == cfg.hash and cfg.avg_bits > 2.9  # the budget is used, not wasted


@pytest.mark.parametrize("budget", ["1.9", "8.7", "nan", "inf", "-3"])
def test_cli_allocate_rejects_infeasible_budgets(budget, capsys):
    from coalora.cli import main

    assert main(["allocate", "--model", "tiny-llama", "--budget", budget]) == 2
    assert "outside the feasible range [2.032, 8.625]" in capsys.readouterr().err


def test_fisher_is_the_sum_of_squared_per_window_gradients(tiny_model):
    targets = find_targets(tiny_model)
    windows = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))
    flags = [p.requires_grad for p in tiny_model.parameters()]
    fisher = fisher_importance(tiny_model, targets, windows)
    # the model is left as it was: no gradients, the same trainable flags
    assert all(p.grad is None for p in tiny_model.parameters())
    assert [p.requires_grad for p in tiny_model.parameters()] == flags
    name = targets[3].name
    lin = dict(tiny_model.named_modules())[name]
    expected = torch.zeros_like(lin.weight)
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    for w in windows:
        lin.weight.requires_grad_(True)
        tiny_model.zero_grad(set_to_none=True)
        tiny_model(input_ids=w[None], labels=w[None]).loss.backward()
        expected += lin.weight.grad.square()
        lin.weight.requires_grad_(False)
    torch.testing.assert_close(fisher[name], expected)
    assert fisher[name].shape == lin.weight.shape and bool((fisher[name] > 0).any())
