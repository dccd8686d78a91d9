from __future__ import annotations

import pytest
import torch

from coalora.errors import CoaloraError
from coalora.models import (
    LLAMA_TARGETS,
    ByteTokenizer,
    describe,
    find_targets,
    get_spec,
    load_model,
    target_modules_of,
)


def test_registry_has_default_tiny_and_hub_models():
    assert get_spec("smollm2-135m").source == "offline"
    assert get_spec("tiny-llama").source == "tiny"
    assert get_spec("Qwen/Qwen2.5-1.5B").hub_id == "Qwen/Qwen2.5-1.5B"


def test_unknown_model_names_the_choices():
    with pytest.raises(CoaloraError, match="unknown model 'gpt-17'.*smollm2-135m"):
        get_spec("gpt-17")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(CoaloraError, match="no config.json"):
        get_spec(str(tmp_path))


def test_tiny_model_targets_in_model_order(tiny_model):
    targets = find_targets(tiny_model)
    assert len(targets) == 2 * 7
    assert [t.module_type for t in targets[:7]] == list(LLAMA_TARGETS)
    assert [t.block for t in targets] == [0] * 7 + [1] * 7
    shapes = {t.module_type: t.shape for t in targets[:7]}
    assert shapes["q_proj"] == (128, 128) and shapes["k_proj"] == (64, 128) and shapes["down_proj"] == (128, 256)
    mods = target_modules_of(tiny_model, targets)
    assert all(isinstance(m, torch.nn.Linear) for m in mods.values())
    # embeddings and lm_head are never targets
    assert not any("embed" in t.name or "lm_head" in t.name for t in targets)


def test_biases_are_kept_for_qwen_style_models():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = Qwen2ForCausalLM(cfg)
    targets = find_targets(model)
    mods = target_modules_of(model, targets)
    assert len(targets) == 7
    assert mods["model.layers.0.self_attn.q_proj"].bias is not None


def test_describe_counts(tiny_model):
    d = describe(tiny_model)
    assert d["targets"] == 14 and d["blocks"] == 2
    assert d["target_parameters"] == 2 * (2 * 128 * 128 + 2 * 64 * 128 + 3 * 256 * 128)


def test_hub_model_offline_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(CoaloraError, match="not available offline"):
        load_model("Qwen/Qwen2.5-0.5B")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("Wherefore art thou?")) == "Wherefore art thou?"


@pytest.mark.integration
def test_default_model_loads_with_210_targets(default_model):
    model, tok = default_model
    targets = find_targets(model)
    assert len(targets) == 210
    assert sum(t.numel for t in targets) == 106_168_320
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"
