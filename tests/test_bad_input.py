"""Bad input everywhere a user can give it, on the CLI and in the Python API.

Every case must be ONE :class:`CoaloraError` saying what was wrong (on the CLI: status 2, one line
``error: ...`` on stderr, no traceback) and must leave nothing half-written on disk. The cases here
are the ones the module tests (test_cli, test_config, test_bundle, test_store, test_trained,
test_data, test_models) do not already cover; most are parametrized, and two hypothesis tests fuzz
the configuration parser and the bundle loader (150 examples each; COALORA_FUZZ_EXAMPLES for more).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coalora.cli import main
from coalora.errors import CoaloraError
from coalora.quant.config import ALL_CONFIGS, FIELD_NAMES, FIELD_VALUES, FORMAT, PRESETS, ModelQuantConfig, QuantConfig

CORPUS_TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 200
NF4 = PRESETS["nf4-dq"].to_dict()
FUZZ = settings(max_examples=int(os.environ.get("COALORA_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
"""Examples per property test; COALORA_FUZZ_EXAMPLES=2000 fuzzes deeper."""
_REAL_HOME = os.environ.get("COALORA_HOME")
"""Where the prepared default model lives (the ``env`` fixture points $COALORA_HOME elsewhere)."""


# --------------------------------------------------------------------------------------------
# shared files (built once) and the CLI environment


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private $COALORA_HOME and store, and Explorer on a small local corpus (no prepared assets)."""
    import coalora.explorer as explorer

    root = tmp_path_factory.mktemp("bad_input")
    (root / "corpus.txt").write_text(CORPUS_TEXT)
    mp = pytest.MonkeyPatch()
    mp.setenv("COALORA_HOME", str(root / "home"))
    mp.setenv("COALORA_STORE", str(root / "results.duckdb"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    cls = explorer.Explorer
    # A synthetic error table (smaller with more bits): computing the real one costs 5-20 s of CPU
    # and is not what these tests are about.
    bits = torch.tensor([c.bits for c in ALL_CONFIGS], dtype=torch.float64)
    mp.setattr(cls, "error_table", lambda self: (2.0 ** -bits).repeat(len(self.targets), 1).numpy())
    mp.setattr(explorer, "Explorer", functools.partial(cls, corpus=str(root / "corpus.txt")))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def adapter_file(env):
    """A trained-format CoA-LoRA file for tiny-llama (rank 4, float32)."""
    from coalora.adapter.model import AdapterConfig, CoALoRAModel
    from coalora.adapter.trained import save_trained
    from coalora.models import find_targets, tiny_llama

    model = tiny_llama(seed=0)
    coa = CoALoRAModel(model, "tiny-llama", find_targets(model), AdapterConfig(rank=4, init="peft"))
    return save_trained(coa, env / "tiny.safetensors", dtype=torch.float32)


@pytest.fixture(scope="module")
def bundle(env):
    """A tiny-llama bundle directory with an adapter and a measured perplexity, and its zip."""
    from coalora.export.bundle import export_bundle
    from coalora.lqlora.sensitivity import weights_fingerprint
    from coalora.models import find_targets, target_modules_of, tiny_llama

    model = tiny_llama(seed=0)
    tg = find_targets(model)
    originals = {n: lin.weight.detach().clone() for n, lin in target_modules_of(model, tg).items()}
    cfg = ModelQuantConfig.from_ids("tiny-llama", tg, [(37 * i) % len(ALL_CONFIGS) for i in range(len(tg))])
    g = torch.Generator().manual_seed(0)
    lora = {t.name: (torch.randn(4, t.shape[1], generator=g) * 0.01, torch.randn(t.shape[0], 4, generator=g) * 0.01)
            for t in tg}
    kw = dict(weights_hash=weights_fingerprint(model, tg), lora=lora,
              adapter={"id": "x", "method": "coalora", "rank": 4, "alpha": 8.0},
              measured={"ppl": 123.4, "nll": 4.8, "eval_set": "x:eval@0", "seqlen": 64, "windows": 2, "tokens": 126})
    d = export_bundle("tiny-llama", cfg, originals, env / "bundle", **kw)
    z = export_bundle("tiny-llama", cfg, originals, env / "bundle", make_zip=True, **kw)
    return d, z


def _run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) -> (status, stdout, stderr); argparse's exits count as a status."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _one_error(argv: list[str], match: str) -> str:
    """Run the CLI in-process: status 2, stderr one line ``error: ...`` matching ``match``."""
    rc, _, err = _run([str(a) for a in argv])
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def _leftovers(directory: Path, name: str) -> list[str]:
    """``name`` and any temporary sibling of it (``.name.*``) in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name == name or p.name.startswith(f".{name}."))


# --------------------------------------------------------------------------------------------
# CLI: argument parsing (argparse errors follow the one-line convention too)

ARGPARSE = [
    (["allocate", "--budget", "abc"], "invalid float value: 'abc'"),
    (["allocate"], "required: --budget"),
    (["allocate", "--budget", "3", "--method", "magic"], "invalid choice: 'magic'"),
    (["eval", "--windows", "many"], "invalid int value"),
    (["eval", "--seqlen"], "expected one argument"),
    (["eval", "--split", "test"], "invalid choice: 'test'"),
    (["eval", "--no-such-flag"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["results", "drop"], "invalid choice: 'drop'"),
    (["results", "info", "--table", "users"], "invalid choice: 'users'"),
    (["load"], "required: bundle"),
    (["train"], "required: --out"),
    (["train", "--out", "r", "--lr", "fast"], "invalid float value"),
    (["serve", "--port", "http"], "invalid int value"),
    (["front", "--budget", "three"], "invalid float value"),
    (["front", "--method", "gptq"], "invalid choice: 'gptq'"),
    (["front", "--metric", "loss"], "unknown front metric 'loss'; use ppl"),
    (["eval", "--spec", "random-v9"], "invalid choice: 'random-v9'"),
    (["generate", "--adapter", "a.safetensors"], "required: --out"),
]


@pytest.mark.parametrize("argv, match", ARGPARSE, ids=[" ".join(a) for a, _ in ARGPARSE])
def test_argument_errors_are_one_line(argv, match):
    line = _one_error(argv, match)
    assert "--help" in line  # and it says where to look


EMPTY = [["eval", "--model", ""], ["eval", "--model", "tiny-llama", "--preset", " "],
         ["eval", "--model", "tiny-llama", "--config", ""], ["generate", "--adapter", "", "--preset", "nf4-dq", "--out", "o"],
         ["export", "--model", "tiny-llama", "--config", "", "--out", "o"], ["load", ""]]


@pytest.mark.parametrize("argv", EMPTY, ids=[" ".join(a) for a in EMPTY])
def test_empty_values_are_refused_not_ignored(argv):
    # `--preset ""` used to be read as "no preset" and evaluate the unquantized model instead
    _one_error(argv, "is empty")


# ---- budgets (allocate checks before loading anything; front before building the explorer)

BUDGETS = ["nan", "inf", "-inf", "-1", "0", "1e-300", "2.0", "8.626", "1e308", "-1e308", "NaN"]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("command", ["allocate", "front"])
def test_budgets_outside_the_space(env, command, budget, tmp_path):
    out = tmp_path / "cfg.json"
    argv = [command, "--model", "tiny-llama", f"--budget={budget}"] + (["--out", out] if command == "allocate" else [])
    _one_error(argv, r"budget .* outside the feasible range")
    assert not out.exists()


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), -float("inf"), -1, 0, 2.0, 8.626, 1e308, None, "abc",
                                    "", [], {}, complex(3, 1), True, "nan"])
def test_check_budget(budget):
    from coalora.search.front import check_budget

    with pytest.raises(CoaloraError, match="budget"):
        check_budget(budget)


# ---- eval: windows, seqlen, batch size (tiny-llama's context is 512)

NUMBERS = [
    (["--seqlen", "-5"], "--seqlen must be a positive integer"),
    (["--seqlen", "1"], "seqlen must be at least 2"),
    (["--seqlen", "513"], "exceeds the model's context length 512"),
    (["--seqlen", str(10**9)], "exceeds the model's context length"),
    (["--windows", "-3"], "--windows must be a positive integer"),
    (["--batch-size", "-1"], "--batch-size must be a positive integer"),
    (["--seqlen", "128", "--corpus", "{tiny}"], "has a full window of 128 tokens"),
    (["--seqlen", "128", "--spec", "prefix-v0", "--corpus", "{tiny}"], "fewer than one window"),
]


@pytest.mark.parametrize("extra, match", NUMBERS, ids=[" ".join(e) for e, _ in NUMBERS])
def test_eval_numbers(env, tmp_path, extra, match):
    (tmp_path / "tiny.txt").write_text("too short")
    extra = [e.replace("{tiny}", str(tmp_path / "tiny.txt")) for e in extra]
    _one_error(["eval", "--model", "tiny-llama", "--no-progress", "--corpus", env / "corpus.txt", *extra], match)


def test_a_huge_window_count_means_all_windows(env):
    rc, out, err = _run(["eval", "--model", "tiny-llama", "--corpus", str(env / "corpus.txt"), "--seqlen", "256",
                         "--windows", str(10**15), "--no-progress", "--json"])
    assert rc == 0, err
    assert json.loads(out)["windows"] == len(CORPUS_TEXT) // 256  # byte tokenizer: one token per character


# ---- configuration files (through `coalora eval --config`)


def _cfg_obj(**changes):
    obj = {"format": FORMAT, "model": "tiny-llama", "default": dict(NF4), "modules": {}}
    for k, v in changes.items():
        if k.startswith("default."):
            obj["default"][k.split(".", 1)[1]] = v
        elif v is _DROP:
            obj.pop(k)
        else:
            obj[k] = v
    return json.dumps(obj)


_DROP = object()
_VALID = json.dumps(json.loads(_cfg_obj()), indent=2)

CONFIG_FILES = {
    "empty": ("", "malformed JSON"),
    "whitespace": ("  \n\t ", "malformed JSON"),
    "open brace": ("{", "malformed JSON"),
    "truncated": (_VALID[: len(_VALID) // 2], "malformed JSON"),
    "truncated by one": (_VALID.rstrip()[:-1], "malformed JSON"),
    "trailing garbage": (_VALID + "}", "malformed JSON"),
    "two objects": (_VALID + _VALID, "malformed JSON"),
    "single quotes": (_VALID.replace('"', "'"), "malformed JSON"),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "malformed JSON"),
    "binary": (b"\xff\xfe\x00\x01garbage", "cannot read config file"),
    "null": ("null", "expected a JSON object, got NoneType"),
    "number": ("42", "expected a JSON object, got int"),
    "string": ('"nf4-dq"', "expected a JSON object, got str"),
    "another model": (_cfg_obj(model="smollm2-135m"), "'smollm2-135m' but the model in use is 'tiny-llama'"),
    "model not a string": (_cfg_obj(model=123), "key 'model' must name"),
    "model empty": (_cfg_obj(model=""), "key 'model' must name"),
    "format number": (_cfg_obj(format=1), "key 'format' is 1"),
    "format of a bundle": (_cfg_obj(format="coalora.bundle/1"), "key 'format'"),
    "b0 float": (_cfg_obj(**{"default.b0": 4.0}), r"b0=4\.0 .*an integer, not float"),
    "B0 float": (_cfg_obj(**{"default.B0": 64.0}), r"B0=64\.0 .*an integer, not float"),
    "b0 null": (_cfg_obj(**{"default.b0": None}), "b0=None"),
    "b0 list": (_cfg_obj(**{"default.b0": [4]}), r"b0=\[4\]"),
    "b0 NaN": (_cfg_obj(**{"default.b0": float("nan")}), "b0=nan"),
    "b0 infinite": (_cfg_obj(**{"default.b0": float("inf")}), "b0=inf"),
    "b0 huge": (_cfg_obj(**{"default.b0": 10**100}), "b0=1000"),
    "b1 negative": (_cfg_obj(**{"default.b1": -8}), "b1=-8"),
    "b2 upper case": (_cfg_obj(**{"default.b2": "FP32"}), "b2='FP32'"),
    "b2 as bits": (_cfg_obj(**{"default.b2": 32}), r"b2=32 .*a string, not int"),
    "B1 out of space": (_cfg_obj(**{"default.B1": 128}), "B1=128"),
    "default a preset name": (_cfg_obj(default="nf4-dq"), "key 'default': expected an object"),
    "default a list": (_cfg_obj(default=[4, 8, "fp32", 64, 256]), "key 'default': expected an object"),
    "lm_head": (_cfg_obj(modules={"lm_head": NF4}), "unknown module 'lm_head'"),
    "short module name": (_cfg_obj(modules={"q_proj": NF4}), "unknown module 'q_proj'"),
    "block out of range": (_cfg_obj(modules={"model.layers.2.mlp.up_proj": NF4}), "unknown module"),
    "long module name": (_cfg_obj(modules={"x" * 10_000: NF4}), r"unknown module 'x+\.\.\.x+'"),
    "module config a number": (_cfg_obj(modules={"model.layers.0.mlp.up_proj": 4}), "expected an object"),
    "modules null": (_cfg_obj(modules=None), "key 'modules' must be an object"),
    "extra key": (_cfg_obj(budget=3.0), "unknown key 'budget'"),
    "no default, no modules": (_cfg_obj(default=_DROP), "has no config and there is no 'default'"),
}


@pytest.mark.parametrize("name", list(CONFIG_FILES))
def test_bad_config_files(env, tmp_path, name):
    content, match = CONFIG_FILES[name]
    path = tmp_path / "cfg.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = _one_error(["eval", "--model", "tiny-llama", "--config", path, "--no-progress"], match)
    assert len(line) < 600  # one readable line, whatever the input


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_config_path_that_is_not_a_file(env, tmp_path, what):
    path = tmp_path / "cfg.json"
    if what == "directory":
        path.mkdir()
    _one_error(["eval", "--model", "tiny-llama", "--config", path, "--no-progress"], "config file")


PRESET_NAMES = ["nf5-dq", "NF4-DQ", "uniform:5,8,fp32,64,256", "uniform:4,8,fp64,64,256", "uniform:4,8,fp32,64",
                "uniform:a,b,c,d,e", "uniform:4.0,8,fp32,64,256", "uniform:" + "9," * 10_000]


@pytest.mark.parametrize("preset", PRESET_NAMES, ids=range(len(PRESET_NAMES)))
def test_bad_presets(env, preset):
    line = _one_error(["eval", "--model", "tiny-llama", "--preset", preset, "--no-progress"], "unknown preset|outside the space")
    assert len(line) < 600


@pytest.mark.parametrize("field, value", [("b0", 4.0), ("B1", 256.0), ("b0", None), ("b1", [8]), ("b2", 32),
                                          ("b2", b"fp32"), ("B0", float("nan")), ("B0", -64), ("b0", "4 ")])
def test_quant_config_types(field, value):
    d = dict(NF4, **{field: value})
    with pytest.raises(CoaloraError, match=f"{field}="):
        QuantConfig.from_dict(d)


# ---- corpora


def _corpus(tmp_path, kind):
    if kind == "missing":
        return str(tmp_path / "nope.txt")
    if kind == "hf bad form":
        return "hf:wikitext"
    p = tmp_path / {"csv": "c.csv", "empty": "e.txt", "bad jsonl": "b.jsonl", "jsonl number": "n.jsonl",
                    "empty dir": "d"}[kind]
    if kind == "empty dir":
        p.mkdir()
    else:
        p.write_text({"csv": "a,b\n1,2\n", "empty": "\n\n  \n", "bad jsonl": '{"text": "ok"}\n{"text": \n',
                      "jsonl number": '{"text": 5}\n'}[kind])
    return str(p)


@pytest.mark.parametrize("kind, match", [("missing", "neither"), ("hf bad form", "use hf:"), ("csv", ".txt or .jsonl"),
                                         ("empty", "has no text"), ("bad jsonl", r"b\.jsonl:2"),
                                         ("jsonl number", "string \"text\""), ("empty dir", "no .txt or .jsonl")])
def test_bad_corpora(env, tmp_path, kind, match):
    _one_error(["eval", "--model", "tiny-llama", "--corpus", _corpus(tmp_path, kind), "--no-progress"], match)


# ---- models


def test_models_that_cannot_be_loaded(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    _one_error(["eval", "--model", "Qwen/Qwen2.5-1.5B"], "not available offline.*huggingface-cli download")
    _one_error(["eval", "--model", "no/such-model"], "unknown model 'no/such-model'")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{ this is not json")
    _one_error(["eval", "--model", garbage], "cannot load")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "no-such-architecture"}')
    _one_error(["eval", "--model", foreign], "cannot load")
    from coalora.models import load_model

    with pytest.raises(CoaloraError) as e:  # the library's multi-line message is folded in the API too
        load_model(str(foreign))
    assert "\n" not in str(e.value) and len(str(e.value)) < 600


def test_hub_model_targets_offline(monkeypatch, tmp_path):
    from coalora.models import model_targets

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CoaloraError, match="offline and not cached.*use smollm2-135m"):
        model_targets("Qwen/Qwen2.5-3B")


# ---- trained adapter files (through `coalora eval --preset ... --adapter`)


def _adapter_variant(src: Path, dst: Path, kind: str) -> Path:
    from coalora.adapter.trained import FORMAT as ADAPTER_FORMAT
    from coalora.adapter.trained import read_trained
    from coalora.files import save_tagged

    data = src.read_bytes()
    if kind == "missing":
        return dst
    if kind == "directory":
        dst.mkdir()
        return dst
    if kind.startswith("truncated"):
        dst.write_bytes(data[: int(kind.split()[1])] if kind.split()[1].isdigit() else data[:-1])
        return dst
    if kind == "garbage":
        dst.write_bytes(os.urandom(4096))
        return dst
    if kind == "huge header length":
        dst.write_bytes((2**62).to_bytes(8, "little") + data[8:])
        return dst
    tensors, meta = read_trained(src)
    if kind == "foreign safetensors":
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(2)}, str(dst))
    elif kind == "a checkpoint":
        from coalora.checkpoint import save_checkpoint

        save_checkpoint(dst, tensors, meta)
    elif kind == "meta not json":
        from safetensors.torch import save_file

        save_file(tensors, str(dst), metadata={"format": ADAPTER_FORMAT, "meta": "{not json"})
    elif kind == "meta a list":
        save_tagged(tensors, dst, ADAPTER_FORMAT, [1, 2, 3])
    elif kind == "other model":
        save_tagged(tensors, dst, ADAPTER_FORMAT, {**meta, "model": "smollm2-135m"})
    elif kind == "no adapter description":
        save_tagged(tensors, dst, ADAPTER_FORMAT, {k: v for k, v in meta.items() if k != "adapter"})
    elif kind == "rank edited to 10**6":
        save_tagged(tensors, dst, ADAPTER_FORMAT, {**meta, "adapter": {**meta["adapter"], "rank": 10**6}})
    elif kind == "hidden edited to 10**7":
        save_tagged(tensors, dst, ADAPTER_FORMAT, {**meta, "adapter": {**meta["adapter"], "hidden": 10**7}})
    elif kind == "rank a string":
        save_tagged(tensors, dst, ADAPTER_FORMAT, {**meta, "adapter": {**meta["adapter"], "rank": "4"}})
    elif kind == "a tensor missing":
        drop = next(k for k in tensors if k.endswith("lora_B"))
        save_tagged({k: v for k, v in tensors.items() if k != drop}, dst, ADAPTER_FORMAT, meta)
    elif kind == "a tensor reshaped":
        k = next(k for k in tensors if k.endswith("lora_B"))
        save_tagged({**tensors, k: tensors[k].reshape(-1, 2)}, dst, ADAPTER_FORMAT, meta)
    elif kind == "an extra tensor":
        save_tagged({**tensors, "lora.lm_head.lora_A": torch.zeros(4, 128)}, dst, ADAPTER_FORMAT, meta)
    else:
        raise AssertionError(kind)
    return dst


ADAPTERS = [
    ("missing", "no trained adapter at"),
    ("directory", "no trained adapter at"),
    ("truncated 0", "corrupt or truncated"),
    ("truncated 7", "corrupt or truncated"),
    ("truncated 9", "corrupt or truncated"),
    ("truncated 200", "corrupt or truncated"),
    ("truncated 5000", "corrupt or truncated"),
    ("truncated -1", "corrupt or truncated"),
    ("garbage", "corrupt or truncated"),
    ("huge header length", "corrupt or truncated"),
    ("foreign safetensors", "not a coalora adapter"),
    ("a checkpoint", "not a coalora adapter"),
    ("meta not json", "unreadable metadata"),
    ("meta a list", "unreadable metadata"),
    ("other model", "trained for model 'smollm2-135m', not 'tiny-llama'"),
    ("no adapter description", "invalid adapter description"),
    ("rank edited to 10**6", r"rank 1000000.* does not match its tensors"),
    ("hidden edited to 10**7", r"hidden 10000000.* does not match its tensors"),
    ("rank a string", "rank must be a positive integer"),
    ("a tensor missing", "missing 'lora"),
    ("a tensor reshaped", "has shape"),
    ("an extra tensor", "unexpected 'lora.lm_head"),
]


@pytest.mark.parametrize("kind, match", ADAPTERS, ids=[k for k, _ in ADAPTERS])
def test_bad_trained_adapter_files(env, adapter_file, tmp_path, kind, match):
    path = _adapter_variant(adapter_file, tmp_path / "a.safetensors", kind)
    _one_error(["eval", "--model", "tiny-llama", "--preset", "nf3-dq", "--adapter", path, "--no-progress"], match)


def test_generate_with_bad_input_writes_nothing(env, adapter_file, tmp_path):
    out = tmp_path / "peft"
    (tmp_path / "cfg.json").write_text(_cfg_obj(model="smollm2-135m"))
    _one_error(["generate", "--adapter", adapter_file, "--model", "tiny-llama", "--config", tmp_path / "cfg.json",
                "--out", out], "model in use")
    bad = _adapter_variant(adapter_file, tmp_path / "cut.safetensors", "truncated 5000")
    _one_error(["generate", "--adapter", bad, "--model", "tiny-llama", "--preset", "nf4-dq", "--out", out], "truncated")
    (tmp_path / "file").write_text("x")
    _one_error(["generate", "--adapter", adapter_file, "--model", "tiny-llama", "--preset", "nf4-dq",
                "--out", tmp_path / "file" / "peft"], "is a file, not a directory")
    assert _leftovers(tmp_path, "peft") == [] and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- training checkpoints (`coalora export-trained`) and training options


@pytest.mark.parametrize("kind, match", [
    ("no run", "no checkpoint at"), ("truncated", "corrupt or truncated.*delete it"), ("garbage", "corrupt or truncated"),
    ("an adapter file", "not a coalora checkpoint"), ("empty meta", "not a complete training checkpoint"),
    ("state not an object", "not a complete training checkpoint"), ("targets not names", "not a complete"),
    ("meta a string", "unreadable metadata"),
])
def test_bad_checkpoints(env, adapter_file, tmp_path, kind, match):
    from coalora.adapter.trained import read_trained
    from coalora.checkpoint import save_checkpoint
    from coalora.files import save_tagged

    run = tmp_path / "run"
    ck = run / "checkpoint.safetensors"
    tensors, meta = read_trained(adapter_file)
    full = {"state": {"step": 1, "seconds": 1.0, "search_seconds": 0.0, "tokens": 1, "searches": 0, "train_set": []},
            "train_config": {"model": "tiny-llama"}, "adapter": meta["adapter"], "targets": ["a"]}
    if kind != "no run":
        run.mkdir()
    if kind in ("truncated", "garbage"):
        save_checkpoint(ck, tensors, full)
        ck.write_bytes(ck.read_bytes()[:3000] if kind == "truncated" else os.urandom(3000))
    elif kind == "an adapter file":
        shutil.copy(adapter_file, ck)
    elif kind == "empty meta":
        save_checkpoint(ck, tensors, {})
    elif kind == "state not an object":
        save_checkpoint(ck, tensors, {**full, "state": 5})
    elif kind == "targets not names":
        save_checkpoint(ck, tensors, {**full, "targets": [1, 2]})
    elif kind == "meta a string":
        save_tagged(tensors, ck, "coalora.checkpoint/1", "state")
    out = tmp_path / "out.safetensors"
    _one_error(["export-trained", "--run", run, "--out", out], match)
    assert _leftovers(tmp_path, "out.safetensors") == []


@pytest.mark.parametrize("flags, match", [
    (["--steps", "-1"], "steps must be a positive integer"), (["--rank", "-8"], "rank must be a positive"),
    (["--alpha", "nan"], "alpha must be a positive number"), (["--alpha=-inf"], "alpha must be a positive number"),
    (["--cache-gib", "0"], "cache_gib"), (["--weight-decay", "nan"], "weight_decay"),
    (["--budgets", "nan"], "outside the feasible range"), (["--budgets", "3", "99"], "outside the feasible range"),
    (["--batch-size", "0"], "batch_size"), (["--ref-preset", "nf9-dq"], "unknown preset"),
    (["--seqlen", "0"], "seqlen must be a positive"), (["--search-every", "-5"], "search_every"),
])
def test_bad_training_options(env, tmp_path, flags, match):
    # the recipe is validated before anything is loaded or written
    _one_error(["train", "--out", tmp_path / "run", "--model", "tiny-llama", *flags], match)
    assert not (tmp_path / "run").exists()


# ---- front, search, export, serve


@pytest.mark.parametrize("flags, match", [
    (["--validate", "--folds", "0"], "--folds must be at least 2"), (["--validate", "--folds", "1"], "--folds"),
    (["--validate", "--folds", "-3"], "--folds"), (["--validate", "--fold-seed", "-1"], "--fold-seed must be a non-neg"),
    (["--seqlen", "1"], r"--seqlen must be in \[2, 512\]"),
    (["--seqlen", "100000"], r"--seqlen must be in \[2, 512\]"), (["--windows", str(10**6)], "--windows must be in"),
    (["--windows", "0"], "--windows must be a positive"), (["--adapter", "missing.safetensors"], "no trained adapter"),
])
def test_bad_front_options(env, flags, match):
    adapter = [] if "--adapter" in flags else ["--adapter", "none"]
    _one_error(["front", "--model", "tiny-llama", *adapter, *flags], match)


@pytest.mark.parametrize("flags, match", [
    (["--rounds", "0"], "--rounds must be a positive"), (["--evaluate", "-1"], "--evaluate must be a positive"),
    (["--seqlen", "4096"], r"--seqlen must be in \[2, 512\]"), (["--windows", "5000"], "--windows must be in"),
])
def test_bad_search_options(env, flags, match):
    _one_error(["search", "--model", "tiny-llama", "--adapter", "none", "--method", "none", *flags], match)


def _export_error(env, tmp_path, flags, match):
    out = tmp_path / "b"
    _one_error(["export", "--model", "tiny-llama", "--adapter", "none", "--no-eval", "--out", out, *flags], match)
    assert _leftovers(tmp_path, "b") == [] and _leftovers(tmp_path, "b.zip") == []


@pytest.mark.parametrize("flags, match", [
    (["--budget=nan"], "outside the feasible range"), (["--budget=-1"], "outside the feasible range"),
    (["--hash", "0123456789abcdef"], "unknown configuration"), (["--hash", "'; DROP TABLE configs; --"], "unknown configuration"),
    (["--config", "{cfg}"], "model in use is 'tiny-llama'"), (["--preset", "nf4-dq", "--budget", "3"], "exactly one of"),
    (["--preset", "nf4-dq", "--seqlen", "9999"], r"--seqlen must be in"), (["--preset", "nf4-dq", "--zip", "--windows", "-2"],
                                                                          "--windows must be a positive"),
])
def test_failed_exports_leave_nothing(env, tmp_path, flags, match):
    (tmp_path / "cfg.json").write_text(_cfg_obj(model="smollm2-135m"))
    _export_error(env, tmp_path, [f.replace("{cfg}", str(tmp_path / "cfg.json")) for f in flags], match)


def test_export_to_an_impossible_place(env, tmp_path):
    (tmp_path / "file").write_text("x")
    for flags in ([], ["--zip"]):
        _one_error(["export", "--model", "tiny-llama", "--adapter", "none", "--no-eval", "--preset", "nf4-dq",
                    "--out", tmp_path / "file" / "b", *flags], "is a file, not a directory")
    (tmp_path / "b").mkdir()
    _one_error(["export", "--model", "tiny-llama", "--adapter", "none", "--no-eval", "--preset", "nf4-dq",
                "--out", tmp_path / "b"], "already exists.*--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "file"] and list((tmp_path / "b").iterdir()) == []


@pytest.mark.parametrize("port", ["-1", "65536", "99999999"])
def test_serve_port_out_of_range(port):
    _one_error(["serve", f"--port={port}"], "--port must be in 0..65535")


# --------------------------------------------------------------------------------------------
# bundles


def _edit_meta(d: Path, edit) -> None:
    p = d / "coalora_config.json"
    meta = json.loads(p.read_text())
    edit(meta)
    p.write_text(json.dumps(meta))


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


META_EDITS = {
    **{f"no {k}": (_drop(k), k) for k in ("model", "weights_hash", "config", "adapter", "measured", "avg_bits",
                                          "packed_bytes", "bits_bytes", "files", "format")},
    "model a number": (_set("model", 5), "'model'"),
    "adapter a number": (_set("adapter", 1), "'adapter'"),
    "adapter without method": (lambda m: m["adapter"].pop("method"), "'adapter'"),
    "adapter rank 0": (lambda m: m["adapter"].update(rank=0), "'adapter'"),
    "adapter rank a float": (lambda m: m["adapter"].update(rank=4.5), "'adapter'"),
    "adapter alpha NaN": (lambda m: m["adapter"].update(alpha=float("nan")), "'adapter'"),
    "measured a number": (_set("measured", 5), "'measured'"),
    "measured without eval_set": (lambda m: m["measured"].pop("eval_set"), "'measured'"),
    "measured ppl negative": (lambda m: m["measured"].update(ppl=-1.0), "'measured'"),
    "measured ppl infinite": (lambda m: m["measured"].update(ppl=float("inf")), "'measured'"),
    "measured seqlen 1": (lambda m: m["measured"].update(seqlen=1), "'measured'"),
    "measured windows a string": (lambda m: m["measured"].update(windows="2"), "'measured'"),
    "avg_bits negative": (_set("avg_bits", -3), "'avg_bits'"),
    "files a list": (_set("files", ["quantized_weights.safetensors"]), "file list"),
    "files without the weights": (lambda m: m["files"].pop("quantized_weights.safetensors"), "file list"),
    "files without the adapter": (lambda m: m["files"].pop("adapter/adapter_model.safetensors"),
                                  "lacks adapter/adapter_model.safetensors"),
    "files with an absolute path": (lambda m: m["files"].update({"/etc/hostname": "0" * 64}), "unsafe path '/etc/hostname'"),
    "files escaping the bundle": (lambda m: m["files"].update({"../bundle.zip": "0" * 64}), "unsafe path"),
    "files with a wrong hash": (lambda m: m["files"].update({"README.md": "0" * 64}), "README.md was altered"),
    "files with a hash of another type": (lambda m: m["files"].update({"README.md": 5}), "README.md was altered"),
    "files naming a directory": (lambda m: m["files"].update({"adapter": "0" * 64}), "file adapter is missing"),
    "format of a config": (_set("format", FORMAT), "format is 'coalora.quant_config/1'"),
}


@pytest.mark.parametrize("name", list(META_EDITS))
def test_edited_bundle_metadata(bundle, tmp_path, name):
    from coalora.export.bundle import read_bundle_meta

    edit, match = META_EDITS[name]
    d = tmp_path / "b"
    shutil.copytree(bundle[0], d)
    _edit_meta(d, edit)
    with pytest.raises(CoaloraError, match=re.escape(match)) as e:
        read_bundle_meta(d)
    assert "\n" not in str(e.value)


CONFIG_TEXTS = {"truncated": lambda t: t[: len(t) // 2], "empty": lambda t: "", "binary": lambda t: "\udcff",
                "deeply nested": lambda t: "[" * 100_000, "a list": lambda t: "[]", "null": lambda t: "null"}


@pytest.mark.parametrize("name", list(CONFIG_TEXTS))
def test_damaged_bundle_config_text(bundle, tmp_path, name):
    from coalora.export.bundle import read_bundle_meta

    d = tmp_path / "b"
    shutil.copytree(bundle[0], d)
    p = d / "coalora_config.json"
    text = CONFIG_TEXTS[name](p.read_text())
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CoaloraError, match="malformed JSON|format is"):
        read_bundle_meta(d)


FILE_DAMAGE = ["delete README.md", "truncate weights", "empty weights", "append to gptq_dynamic.json",
               "replace adapter config", "weights become a directory"]


@pytest.mark.parametrize("damage", FILE_DAMAGE)
def test_damaged_bundle_files(bundle, tmp_path, damage):
    from coalora.export.bundle import read_bundle_meta

    d = tmp_path / "b"
    shutil.copytree(bundle[0], d)
    w = d / "quantized_weights.safetensors"
    if damage == "delete README.md":
        (d / "README.md").unlink()
    elif damage == "truncate weights":
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "empty weights":
        w.write_bytes(b"")
    elif damage == "append to gptq_dynamic.json":
        with open(d / "gptq_dynamic.json", "a") as f:
            f.write(" ")
    elif damage == "replace adapter config":
        (d / "adapter" / "adapter_config.json").write_text("{}")
    else:
        w.unlink()
        w.mkdir()
    with pytest.raises(CoaloraError, match="re-export the bundle"):
        read_bundle_meta(d)


ZIP_DAMAGE = ["not a zip", "truncated", "flipped byte in the weights", "flipped byte in the config",
              "member escaping", "absolute member", "no config", "empty zip"]


def _damaged_zip(src: Path, dst: Path, damage: str) -> None:
    data = bytearray(src.read_bytes())
    if damage == "not a zip":
        dst.write_bytes(b"PK\x03\x04 but not really a zip")
        return
    if damage == "truncated":
        dst.write_bytes(bytes(data[: len(data) // 2]))
        return
    if damage.startswith("flipped byte"):
        base = "quantized_weights.safetensors" if "weights" in damage else "coalora_config.json"
        with zipfile.ZipFile(src) as z:  # members sit in the bundle's top-level folder
            member = next(n for n in z.namelist() if n.rsplit("/", 1)[-1] == base and n.count("/") == 1)
            info = z.getinfo(member)
        data[info.header_offset + 30 + len(member) + info.compress_size // 2] ^= 0xFF  # inside the member's data
        dst.write_bytes(bytes(data))
        return
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if damage == "no config" and info.filename.endswith("/coalora_config.json") and info.filename.count("/") == 1:
                continue
            if damage != "empty zip":
                zout.writestr(info, zin.read(info))
        if damage == "member escaping":
            zout.writestr("../evil.txt", "x")
        elif damage == "absolute member":
            zout.writestr("/tmp/evil.txt", "x")


@pytest.mark.parametrize("damage", ZIP_DAMAGE)
def test_damaged_bundle_zips(bundle, tmp_path, monkeypatch, damage):
    from coalora.export.bundle import read_bundle_meta

    z = tmp_path / "b.zip"
    _damaged_zip(bundle[1], z, damage)
    private = tmp_path / "tmp"  # where the zip is unpacked (a private one: other processes share /tmp)
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with pytest.raises(CoaloraError) as e:
        read_bundle_meta(z)
    assert "\n" not in str(e.value)
    # nothing unpacked is left behind, and nothing escaped the bundle
    assert list(private.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("edit, match", [
    (_drop("measured"), "'measured'"), (_set("adapter", {"rank": 4}), "'adapter'"),
    (_set("model", "no-such-model"), "unknown model 'no-such-model'"),
    (_set("config", {**json.loads(_cfg_obj()), "model": "smollm2-135m"}), "model in use is 'tiny-llama'"),
    (_set("weights_hash", "0" * 16), "made from other weights"),
])
def test_cli_load_of_edited_bundles(env, bundle, tmp_path, edit, match):
    d = tmp_path / "b"
    shutil.copytree(bundle[0], d)
    _edit_meta(d, edit)
    _one_error(["load", d], match)


def test_cli_load_of_damaged_zip_and_plain_file(env, bundle, tmp_path):
    _damaged_zip(bundle[1], tmp_path / "b.zip", "flipped byte in the weights")
    _one_error(["load", tmp_path / "b.zip"], "damaged zip file|was altered")
    (tmp_path / "notes.txt").write_text("hello")
    _one_error(["load", tmp_path / "notes.txt"], "neither a bundle directory nor a zip file")
    _one_error(["load", tmp_path], "coalora_config.json is missing")


def test_the_intact_bundle_still_loads(bundle):
    from coalora.export.bundle import load_bundle, read_bundle_meta

    for b in bundle:
        d, meta = read_bundle_meta(b)
        assert meta["adapter"]["rank"] == 4 and meta["measured"]["seqlen"] == 64
        if d != b:
            shutil.rmtree(d)  # the zip's unpacked copy
    assert load_bundle(bundle[0]).config.avg_bits == pytest.approx(read_bundle_meta(bundle[0])[1]["avg_bits"])


# --------------------------------------------------------------------------------------------
# the results store (a locked store is covered in test_store)


def _store_file(tmp_path, kind) -> Path:
    from coalora.store import Evaluation, Store

    p = tmp_path / "results.duckdb"
    if kind == "zero bytes":
        p.write_bytes(b"")
    elif kind == "a directory":
        p.mkdir()
    elif kind == "a text file":
        p.write_text("model,ppl\nx,1\n")
    elif kind in ("damaged log", "damaged header"):
        s = Store(p, seed_dir=None)
        s._cursor().execute("CHECKPOINT")
        for i in range(20):
            s.add_evaluation(Evaluation("m", f"{i:016d}", "none", "", "e", 8, 1, 8, 1.0 + i, 0.0, 3.0))
        # a copy taken while the store is open has its write-ahead log, as after a crash
        shutil.copy(p, tmp_path / "copy.duckdb")
        shutil.copy(f"{p}.wal", tmp_path / "copy.duckdb.wal")
        s.close()
        p.unlink()
        (tmp_path / "copy.duckdb").rename(p)
        (tmp_path / "copy.duckdb.wal").rename(f"{p}.wal")
        target = Path(f"{p}.wal") if kind == "damaged log" else p
        data = bytearray(target.read_bytes())
        data[300 if kind == "damaged log" else 10] ^= 0xFF
        target.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("kind, match", [("zero bytes", "not a valid DuckDB|damaged"), ("a directory", "damaged"),
                                         ("a text file", "damaged or not a DuckDB file"),
                                         ("damaged log", r"write-ahead log .*\.wal is damaged"),
                                         ("damaged header", "damaged")])
def test_damaged_store_files(tmp_path, monkeypatch, kind, match):
    p = _store_file(tmp_path, kind)
    monkeypatch.setenv("COALORA_STORE", str(p))
    line = _one_error(["results", "info"], match)
    assert "mv " in line  # says how to get going again
    if kind == "damaged log":  # following the advice recovers the checkpointed part
        os.rename(f"{p}.wal", f"{p}.wal.bad")
        rc, out, err = _run(["results", "info", "--json"])
        assert rc == 0, err


@pytest.mark.parametrize("kind, match", [("garbage.parquet", "cannot import"), ("truncated.parquet", "cannot import"),
                                         ("wrong columns.csv", "lacks column"), ("empty.csv", "cannot import|lacks column"),
                                         ("binary.csv", "cannot import|lacks column")])
def test_bad_import_files(tmp_path, monkeypatch, kind, match):
    from coalora.store import Store

    monkeypatch.setenv("COALORA_STORE", str(tmp_path / "r.duckdb"))
    with Store(seed_dir=None) as s:
        good = s.export_table("evaluations", tmp_path / "good.parquet")
        before = s.count("evaluations")
    f = tmp_path / kind
    f.write_bytes({"garbage.parquet": os.urandom(2000), "truncated.parquet": good.read_bytes()[:100],
                   "wrong columns.csv": b"a,b\n1,2\n", "empty.csv": b"",
                   "binary.csv": bytes(range(256)) * 8}[kind])
    _one_error(["results", "import", "--table", "evaluations", "--file", f], match)
    with Store(seed_dir=None) as s:
        assert s.count("evaluations") == before


def test_results_export_to_an_impossible_place(tmp_path, monkeypatch):
    monkeypatch.setenv("COALORA_STORE", str(tmp_path / "r.duckdb"))
    (tmp_path / "file").write_text("x")
    _one_error(["results", "export", "--file", tmp_path / "file" / "ev.parquet"], "is a file, not a directory")
    (tmp_path / "dir.csv").mkdir()
    _one_error(["results", "export", "--file", tmp_path / "dir.csv"], "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------------------------
# a real process: no traceback reaches the user


SUBPROCESS = [
    (["allocate", "--budget", "x"], "invalid float value"),
    (["eval", "--model", "tiny-llama", "--config", "{cfg}"], "malformed JSON"),
    (["eval", "--model", "Qwen/Qwen2.5-0.5B"], "not available offline"),
    (["load", "{cfg}"], "neither a bundle directory nor a zip file"),
]


@pytest.mark.parametrize("argv, match", SUBPROCESS, ids=[a[0] for a, _ in SUBPROCESS])
def test_in_a_real_process(tmp_path, argv, match):
    (tmp_path / "cfg.json").write_text('{"format": ')
    argv = [a.replace("{cfg}", str(tmp_path / "cfg.json")) for a in argv]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), COALORA_STORE=str(tmp_path / "r.duckdb"))
    proc = subprocess.run([sys.executable, "-m", "coalora", *argv], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# property tests: the configuration parser and the bundle loader never fail any other way

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from(["fp32", "bf16", "nf4-dq", FORMAT, "tiny-llama", "default", "modules"]),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
    max_leaves=12,
)


# every allowed field value, and the look-alikes a hand-written file has: 4.0, "4", true, "FP32"
_NEAR_VALUES = st.sampled_from([x for v in (2, 3, 4, 8, 16, 32, 64, 256) for x in (v, float(v), str(v))]  # a list:
                               + ["bf16", "fp16", "fp32", "FP32", "fp8", True, False, None])  # a set merges 4 and 4.0


@functools.cache
def _tiny_targets():
    from coalora.models import model_targets

    return tuple(model_targets("tiny-llama"))


@st.composite
def _config_objects(draw):
    """Mostly near-valid files (a valid one with a few random edits), sometimes anything at all."""
    names = [t.name for t in _tiny_targets()]
    if draw(st.integers(0, 9)) == 0:
        return draw(_json)
    obj = {"format": FORMAT, "model": "tiny-llama",
           "default": ALL_CONFIGS[draw(st.integers(0, len(ALL_CONFIGS) - 1))].to_dict(),
           "modules": {n: ALL_CONFIGS[draw(st.integers(0, len(ALL_CONFIGS) - 1))].to_dict()
                       for n in draw(st.lists(st.sampled_from(names), max_size=4, unique=True))}}
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["field", "field", "field", "top", "default", "module", "drop", "rename"]))
        value = draw(_json | _NEAR_VALUES)
        if where == "field":  # one field of one matrix's config: the commonest hand edit
            modules = obj.get("modules") if isinstance(obj.get("modules"), dict) else {}
            configs = [c for c in [obj.get("default"), *modules.values()] if isinstance(c, dict)]
            if configs:
                c = draw(st.sampled_from(configs))
                f = draw(st.sampled_from(range(5)))
                allowed = FIELD_VALUES[f]  # a look-alike of an allowed value (4.0, "4", True), or any near value
                twins = [y for v in allowed for y in ((v, v.upper(), f" {v}") if isinstance(v, str) else (v, float(v), str(v)))]
                c[FIELD_NAMES[f]] = draw(st.sampled_from(twins + [True, None]) | _NEAR_VALUES)
        elif where == "top":
            obj[draw(st.sampled_from(["format", "model", "default", "modules", "avg_bits", "hash", "extra"]))] = value
        elif where == "default" and isinstance(obj.get("default"), dict):
            obj["default"][draw(st.sampled_from(["b0", "b1", "b2", "B0", "B1", "b3"]))] = value
        elif where == "module" and isinstance(obj.get("modules"), dict):
            key = draw(st.sampled_from(names + ["lm_head", "model.layers.7.mlp.up_proj", ""]))
            obj["modules"][key] = value if draw(st.booleans()) else dict(NF4, **{draw(st.sampled_from(list(NF4))): value})
        elif where == "drop" and obj:
            obj.pop(draw(st.sampled_from(sorted(obj, key=str))))
        elif where == "rename" and isinstance(obj.get("modules"), dict) and obj["modules"]:
            k = draw(st.sampled_from(sorted(obj["modules"])))
            obj["modules"][k.replace("layers", "layer")] = obj["modules"].pop(k)
    return obj


@FUZZ
@given(_config_objects(), st.booleans())
def test_fuzzed_config_files_parse_or_give_one_error(obj, via_file):
    targets = _tiny_targets()
    try:
        if via_file:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / "c.json"
                p.write_text(json.dumps(obj))
                cfg = ModelQuantConfig.load(p, targets, model="tiny-llama")
        else:
            cfg = ModelQuantConfig.from_json(obj, targets, model="tiny-llama")
    except CoaloraError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000
        return
    # accepted: a complete, valid configuration that survives its own round trip
    assert len(cfg.configs) == len(targets) and all(c in ALL_CONFIGS for c in cfg.configs)
    assert all(type(getattr(c, f)) is type(getattr(ALL_CONFIGS[0], f)) for c in cfg.configs for f in FIELD_NAMES)
    assert math.isfinite(cfg.avg_bits)
    assert ModelQuantConfig.from_json(json.loads(json.dumps(cfg.to_json())), targets) == cfg


_BUNDLE_FILES = ["coalora_config.json", "quantized_weights.safetensors", "README.md", "gptq_dynamic.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]


@st.composite
def _bundle_damage(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "json value", "zip truncate", "zip flip"]))
    return kind, draw(st.sampled_from(_BUNDLE_FILES)), draw(st.floats(0, 1)), draw(st.integers(0, 255)), draw(_json)


@FUZZ
@given(_bundle_damage())
def test_fuzzed_bundles_load_or_give_one_error(bundle, damage):
    from coalora.export.bundle import read_bundle_meta

    kind, rel, where, byte, value = damage
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "b"
        if kind.startswith("zip"):
            data = bytearray(bundle[1].read_bytes())
            i = min(int(where * len(data)), len(data) - 1)
            if kind == "zip truncate":
                data = data[:i]
            else:
                data[i] ^= byte or 1
            target = Path(tmp) / "b.zip"
            target.write_bytes(bytes(data))
        else:
            shutil.copytree(bundle[0], d)
            f = d / rel
            data = bytearray(f.read_bytes())
            i = min(int(where * len(data)), max(len(data) - 1, 0))
            if kind == "truncate":
                f.write_bytes(bytes(data[:i]))
            elif kind == "flip":
                data[i] ^= byte or 1
                f.write_bytes(bytes(data))
            elif kind == "insert":
                f.write_bytes(bytes(data[:i]) + bytes([byte]) + bytes(data[i:]))
            elif kind == "delete":
                f.unlink()
            else:  # a random JSON value at a random top-level key of the metadata
                meta = json.loads((d / "coalora_config.json").read_text())
                keys = sorted(meta)
                meta[keys[int(where * (len(keys) - 1))]] = value
                (d / "coalora_config.json").write_text(json.dumps(meta))
            target = d
        try:
            p, meta = read_bundle_meta(target)
        except CoaloraError as e:
            assert "\n" not in str(e)
            return
        if target.suffix == ".zip":
            shutil.rmtree(p)  # the unpacked copy
        # accepted: everything the loader reads is there with the right type
        assert isinstance(meta["model"], str) and isinstance(meta["config"], dict)
        assert meta["adapter"] is None or meta["adapter"]["rank"] >= 1


# --------------------------------------------------------------------------------------------
# the real default model


@pytest.fixture
def real_home(tmp_path, monkeypatch):
    """The prepared $COALORA_HOME (whatever ``env`` set), with a private store."""
    monkeypatch.setenv("COALORA_STORE", str(tmp_path / "r.duckdb"))
    if _REAL_HOME is None:
        monkeypatch.delenv("COALORA_HOME", raising=False)
    else:
        monkeypatch.setenv("COALORA_HOME", _REAL_HOME)


@pytest.mark.integration
def test_smollm2_refuses_a_tiny_config_and_a_too_long_window(real_home, tmp_path):
    (tmp_path / "cfg.json").write_text(_cfg_obj())
    _one_error(["eval", "--model", "smollm2-135m", "--config", tmp_path / "cfg.json", "--no-progress"],
               "'tiny-llama' but the model in use is 'smollm2-135m'")
    _one_error(["eval", "--model", "smollm2-135m", "--seqlen", "9000", "--windows", "1", "--no-progress"],
               "exceeds the model's context length 8192")


@pytest.mark.integration
def test_smollm2_refuses_a_tiny_bundle_and_adapter(real_home, bundle, adapter_file, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundle[0], d)
    _edit_meta(d, _set("model", "smollm2-135m"))
    _one_error(["load", d], "made from other weights of smollm2-135m")
    _one_error(["generate", "--adapter", adapter_file, "--model", "smollm2-135m", "--preset", "nf4-dq",
                "--out", tmp_path / "peft"], "trained for model 'tiny-llama', not 'smollm2-135m'")
    assert not (tmp_path / "peft").exists()
