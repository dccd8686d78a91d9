from __future__ import annotations

import json

import pytest

from coalora import assets
from coalora.errors import CoaloraError


def _make_asset(directory):
    directory.mkdir(parents=True)
    (directory / "a.txt").write_text("alpha")
    (directory / "b.bin").write_bytes(b"\x00" * 100)
    assets.write_manifest(directory, {"source": "test"})


def test_verify_accepts_intact_asset(tmp_path):
    d = tmp_path / "asset"
    _make_asset(d)
    manifest = assets.verify(d, deep=True)
    assert set(manifest["files"]) == {"a.txt", "b.bin"} and manifest["source"] == "test"


def test_verify_missing_manifest_says_how_to_fix(tmp_path):
    with pytest.raises(CoaloraError, match="not prepared.*coalora prepare"):
        assets.verify(tmp_path)


def test_verify_detects_truncation(tmp_path):
    d = tmp_path / "asset"
    _make_asset(d)
    (d / "b.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(CoaloraError, match="corrupt.*b.bin has 10 bytes, expected 100"):
        assets.verify(d)


def test_verify_deep_detects_altered_bytes(tmp_path):
    d = tmp_path / "asset"
    _make_asset(d)
    (d / "a.txt").write_text("omega")  # same size, other bytes
    assets.verify(d)  # the quick check cannot see it
    with pytest.raises(CoaloraError, match="sha256"):
        assets.verify(d, deep=True)


def test_verify_missing_file_and_bad_manifest(tmp_path):
    d = tmp_path / "asset"
    _make_asset(d)
    (d / "a.txt").unlink()
    with pytest.raises(CoaloraError, match="incomplete.*a.txt is missing"):
        assets.verify(d)
    (d / assets.MANIFEST).write_text("{not json")
    with pytest.raises(CoaloraError, match="cannot read"):
        assets.verify(d)


def test_failed_build_leaves_nothing_behind(tmp_path):
    final = tmp_path / "models" / "x"

    def build(out):
        (out / "partial.safetensors").write_bytes(b"123")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        assets._build_atomically(final, build)
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_missing_default_model_cache_is_a_clear_error(tmp_home):
    from coalora.models import load_model

    with pytest.raises(CoaloraError, match="model smollm2-135m is not prepared.*coalora prepare"):
        load_model("smollm2-135m")


def test_corrupt_default_model_cache_is_a_clear_error(tmp_home):
    """A truncated checkpoint whose manifest still matches (e.g. disk full during a copy)."""
    from coalora.models import load_model

    d = assets.model_dir()
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                               "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
                                               "num_hidden_layers": 1, "num_attention_heads": 2}))
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")  # truncated header
    assets.write_manifest(d)
    with pytest.raises(CoaloraError, match="cannot load smollm2-135m.*coalora prepare --force"):
        load_model("smollm2-135m")
