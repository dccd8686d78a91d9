"""The quantization core on the real default model: whole-model packing, allocation and the CLI path."""

from __future__ import annotations

import json
import random

import pytest

from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig

pytestmark = pytest.mark.integration


def test_whole_model_packed_size_matches_avg_bits(default_model, tmp_path):
    """A mixed configuration over all 210 matrices packs to avg_bits * params / 8 (+ small metadata)."""
    from safetensors.torch import load_file, save_file

    from coalora.models import find_targets, target_modules_of
    from coalora.quant.nf import pack, quantize, unpack

    model, _ = default_model
    targets = find_targets(model)
    rng = random.Random(0)
    cfg = ModelQuantConfig.from_ids("smollm2-135m", targets, [rng.randrange(len(ALL_CONFIGS)) for _ in targets])
    linears = target_modules_of(model, targets)
    tensors, total = {}, 0
    for t, c in zip(targets, cfg.configs):
        packed = pack(quantize(linears[t.name].weight.detach(), c))
        total += sum(v.numel() * v.element_size() for v in packed.values())
        tensors.update({f"{t.name}.{k}": v for k, v in packed.items()})
    params = sum(t.numel for t in targets)
    ideal = cfg.avg_bits * params / 8
    # Per matrix: byte rounding of two bit streams, ragged groups, and ~60 bytes of metadata.
    assert abs(total - ideal) / ideal < 0.02, (total, ideal)
    # What an export ships must be loadable and exact: spot-check one round trip through a file.
    name = targets[5].name
    path = tmp_path / "q.safetensors"
    save_file({k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}, str(path))
    back = unpack(load_file(str(path)))
    ref = quantize(linears[name].weight.detach(), cfg[name])
    assert (back.dequantize() == ref.dequantize()).all()


def test_cli_allocate_then_eval_perplexity_falls_with_bits(default_model, tmp_path, capsys):
    """`coalora allocate` writes valid configs; `coalora eval --config` reports their bits and ppl."""
    from coalora.cli import main

    results = {}
    for budget in (2.5, 4.0):
        out = tmp_path / f"cfg-{budget}.json"
        assert main(["allocate", "--budget", str(budget), "--out", str(out), "--json", "--no-progress"]) == 0
        alloc = json.loads(capsys.readouterr().out)
        assert alloc["avg_bits"] <= budget + 1e-9 and alloc["avg_bits"] > budget - 0.05
        assert json.loads(out.read_text())["format"] == "coalora.quant_config/1"
        assert main(["eval", "--config", str(out), "--windows", "2", "--seqlen", "128", "--json", "--no-progress"]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev["avg_bits"] == pytest.approx(alloc["avg_bits"]) and ev["config_hash"] == alloc["hash"]
        results[budget] = ev["ppl"]
    assert main(["eval", "--preset", "nf2-dq", "--windows", "2", "--seqlen", "128", "--json", "--no-progress"]) == 0
    nf2 = json.loads(capsys.readouterr().out)
    # 4 bits is near-lossless, 2.5 allocated bits clearly worse, uniform ~2.1 bits worse still.
    assert results[4.0] < results[2.5] < nf2["ppl"], (results, nf2["ppl"])


def test_cli_allocate_rejects_infeasible_budget(capsys):
    from coalora.cli import main

    assert main(["allocate", "--budget", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "outside the feasible range [2.032, 8.625]" in err and "Traceback" not in err
