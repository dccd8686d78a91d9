from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coalora.errors import CoaloraError
from coalora.models import model_targets
from coalora.quant.config import (
    ALL_CONFIGS,
    FORMAT,
    MAX_BITS,
    MIN_BITS,
    PRESETS,
    ModelQuantConfig,
    QuantConfig,
    resolve_preset,
)


@pytest.fixture(scope="module")
def targets():
    return model_targets("tiny-llama")


@pytest.mark.parametrize(
    "config, bits",
    [
        (QuantConfig(4, 8, "fp32", 64, 256), 4.126953125),
        (QuantConfig(2, 2, "bf16", 64, 256), 2.0322265625),
        (QuantConfig(8, 8, "fp32", 16, 16), 8.625),
        (QuantConfig(3, 4, "fp16", 32, 64), 3 + 4 / 32 + 16 / (32 * 64)),
    ],
)
def test_bits_formula(config, bits):
    assert config.bits == bits


def test_space_has_432_configs_with_ids_and_indices_round_tripping():
    assert len(ALL_CONFIGS) == 432 and len(set(ALL_CONFIGS)) == 432
    for i, c in enumerate(ALL_CONFIGS):
        assert c.id == i
        assert QuantConfig.from_id(i) == c
        assert QuantConfig.from_index(c.index) == c
        assert QuantConfig.from_dict(c.to_dict()) == c
    assert MIN_BITS == 2.0322265625 and MAX_BITS == 8.625
    assert len({c.bits for c in ALL_CONFIGS}) == 184


def test_presets():
    assert PRESETS["nf4-dq"] == QuantConfig(4, 8, "fp32", 64, 256) and PRESETS["nf4-dq"].bits == 4.126953125
    assert PRESETS["nf3-dq"].bits == 3.126953125 and PRESETS["nf2-dq"].bits == 2.126953125
    assert resolve_preset("uniform:3,4,bf16,32,64") == QuantConfig(3, 4, "bf16", 32, 64)
    with pytest.raises(CoaloraError, match="unknown preset"):
        resolve_preset("uniform:3,4,bf16,32")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"b0": 5, "b1": 8, "b2": "fp32", "B0": 64, "B1": 256}, "b0=5"),
        ({"b0": 4, "b1": 1, "b2": "fp32", "B0": 64, "B1": 256}, "b1=1"),
        ({"b0": 4, "b1": 8, "b2": "fp8", "B0": 64, "B1": 256}, "b2='fp8'"),
        ({"b0": 4, "b1": 8, "b2": "fp32", "B0": 128, "B1": 256}, "B0=128"),
        ({"b0": 4, "b1": 8, "b2": "fp32", "B0": 64, "B1": 32}, "B1=32"),
        ({"b0": True, "b1": 8, "b2": "fp32", "B0": 64, "B1": 256}, "b0=True"),
        ({"b0": "4", "b1": 8, "b2": "fp32", "B0": 64, "B1": 256}, "b0='4'"),
        ({"b0": 4, "b1": 8, "b2": "fp32", "B0": 64}, "missing B1"),
        ({"b0": 4, "b1": 8, "b2": "fp32", "B0": 64, "B1": 256, "b3": 1}, "unknown b3"),
        ([4, 8, "fp32", 64, 256], "expected an object"),
    ],
)
def test_invalid_quant_configs_name_the_field(fields, message):
    with pytest.raises(CoaloraError, match=message.replace("(", r"\(").replace("[", r"\[")):
        QuantConfig.from_dict(fields)


def test_file_round_trip_and_derived_fields(targets, tmp_path):
    ids = [(7 * i) % 432 for i in range(len(targets))]
    cfg = ModelQuantConfig.from_ids("tiny-llama", targets, ids)
    path = cfg.save(tmp_path / "cfg.json")
    obj = json.loads(path.read_text())
    assert obj["format"] == FORMAT and obj["model"] == "tiny-llama"
    assert obj["avg_bits"] == pytest.approx(cfg.avg_bits) and obj["hash"] == cfg.hash
    back = ModelQuantConfig.load(path, targets, model="tiny-llama")
    assert back == cfg and back.hash == cfg.hash
    # derived fields are recomputed, never trusted
    obj["avg_bits"], obj["hash"] = 99.0, "forged"
    assert ModelQuantConfig.from_json(obj, targets).avg_bits == cfg.avg_bits


def test_default_with_overrides(targets):
    name = targets[3].name
    obj = {"format": FORMAT, "model": "tiny-llama", "default": PRESETS["nf4-dq"].to_dict(),
           "modules": {name: PRESETS["nf2-dq"].to_dict()}}
    cfg = ModelQuantConfig.from_json(obj, targets)
    assert cfg[name] == PRESETS["nf2-dq"]
    assert sum(c == PRESETS["nf4-dq"] for c in cfg.configs) == len(targets) - 1
    numels = [t.numel for t in targets]
    expected = (sum(numels) * 4.126953125 - numels[3] * 2.0) / sum(numels)
    assert cfg.avg_bits == pytest.approx(expected)


def test_uniform_avg_bits_equals_config_bits(targets):
    for c in ALL_CONFIGS[::37]:
        assert ModelQuantConfig.uniform("tiny-llama", targets, c).avg_bits == pytest.approx(c.bits)


def _base(targets):
    return {"format": FORMAT, "model": "tiny-llama", "default": PRESETS["nf4-dq"].to_dict(), "modules": {}}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.update(modules={"model.layers.9.self_attn.q_proj": PRESETS["nf4-dq"].to_dict()}), "unknown module 'model.layers.9.self_attn.q_proj'"),
        (lambda o: o.update(modules={"model.layers.0.self_attn.q_proj": {"b0": 4}}), r"modules\['model.layers.0.self_attn.q_proj'\]: missing b1"),
        (lambda o: o.update(default={"b0": 9, "b1": 8, "b2": "fp32", "B0": 64, "B1": 256}), "key 'default': .*b0=9"),
        (lambda o: o.pop("default"), "has no config and there is no 'default'"),
        (lambda o: o.update(model="smollm2-135m"), "model in use is 'tiny-llama'"),
        (lambda o: o.update(format="coalora.quant_config/0"), "key 'format'"),
        (lambda o: o.pop("format"), "key 'format' is None"),
        (lambda o: o.update(modules=[1, 2]), "key 'modules' must be an object"),
        (lambda o: o.update(extra=1), "unknown key 'extra'"),
        (lambda o: o.pop("model"), "key 'model' must name"),
    ],
)
def test_invalid_files_are_rejected_naming_the_key(targets, mutate, message):
    obj = _base(targets)
    mutate(obj)
    with pytest.raises(CoaloraError, match=message):
        ModelQuantConfig.from_json(obj, targets, model="tiny-llama")


@pytest.mark.parametrize("text, message", [("{", "malformed JSON"), ("[]", "expected a JSON object"), ("", "malformed JSON")])
def test_malformed_files(targets, tmp_path, text, message):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(CoaloraError, match=message):
        ModelQuantConfig.load(p, targets)


def test_missing_file(targets, tmp_path):
    with pytest.raises(CoaloraError, match="does not exist"):
        ModelQuantConfig.load(tmp_path / "nope.json", targets)


def test_hash_depends_on_content_only(targets):
    a = ModelQuantConfig.uniform("tiny-llama", targets, PRESETS["nf4-dq"])
    b = ModelQuantConfig.uniform("tiny-llama", targets, PRESETS["nf4-dq"])
    c = a.with_changes({targets[0].name: PRESETS["nf3-dq"]})
    assert a.hash == b.hash != c.hash and len(a.hash) == 16


def test_encodings(targets):
    cfg = ModelQuantConfig.from_ids("tiny-llama", targets, list(range(len(targets))))
    x = cfg.index_features()
    assert x.shape == (5 * len(targets),) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert cfg.bits_features().tolist() == [c.bits for c in cfg.configs]
    assert cfg.index_matrix().shape == (len(targets), 5)


@given(st.lists(st.integers(0, 431), min_size=14, max_size=14))
def test_any_choice_round_trips_through_json(ids):
    targets = model_targets("tiny-llama")
    cfg = ModelQuantConfig.from_ids("tiny-llama", targets, ids)
    assert ModelQuantConfig.from_json(json.loads(json.dumps(cfg.to_json())), targets) == cfg


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=6), ch, max_size=4), max_leaves=10))
def test_fuzzed_json_never_crashes_the_parser(obj):
    targets = model_targets("tiny-llama")
    try:
        ModelQuantConfig.from_json(obj, targets)
    except CoaloraError:
        pass
