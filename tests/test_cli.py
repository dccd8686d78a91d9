from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coalora.cli import COMMANDS as TABLE
from coalora.cli import build_parser, main

COMMANDS = sorted(c.name for c in TABLE)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 100


def test_user_mistake_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "coalora", "eval", "--model", "no-such-model"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--windows", "--seqlen", "--batch-size"])
def test_non_positive_numbers_are_rejected(flag, capsys):
    assert main(["eval", "--model", "tiny-llama", flag, "0"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err


@pytest.mark.integration  # reads the prepared Shakespeare corpus
def test_eval_json_reports_kl_and_the_spec(tmp_home_store, capsys):
    import json
    import math

    base = ["eval", "--model", "tiny-llama", "--seqlen", "64", "--windows", "6", "--no-progress", "--json"]
    assert main([*base, "--preset", "nf2-dq"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["eval_spec"] == "strided-v1" and q["positions"] == q["windows"] == 6
    assert len(q["documents"]) == 4  # spread over the four held-out plays, not the opening of Hamlet
    assert q["kld"] is not None and math.isfinite(q["kld"]) and q["kld"] > 0
    assert len(q["window_kld"]) == 6 and sum(q["window_kld"]) / q["tokens"] == pytest.approx(q["kld"])
    assert main([*base, "--preset", "nf8-dq"]) == 0  # 8 bits: much closer to the unquantized model
    assert 0 <= json.loads(capsys.readouterr().out)["kld"] < q["kld"]
    assert main(base) == 0  # unquantized: no KL
    dense = json.loads(capsys.readouterr().out)
    assert dense["kld"] is None and dense["config_hash"] is None  # (a random tiny model: ppl says little)
    assert main([*base, "--spec", "prefix-v0"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert old["eval_spec"] == "prefix-v0" and old["documents"] == ["<joined>"] and old["ppl"] != dense["ppl"]
    assert main([*base[:-1], "--preset", "nf3-dq"]) == 0
    assert "KL to the unquantized model" in capsys.readouterr().out


@pytest.fixture
def tmp_home_store(tmp_path, monkeypatch):
    """A private results store and KL-reference cache; the prepared corpus and models stay where they are."""
    monkeypatch.setenv("COALORA_STORE", str(tmp_path / "results.duckdb"))
    monkeypatch.setattr("coalora.evaluation.reference.cache_dir", lambda: tmp_path / "reference")
    return tmp_path


def test_full_mode_kl_from_a_second_model_copy_matches_the_cached_reference(tmp_path, monkeypatch, capsys):
    """--full with a reference too large to cache: a second, unquantized copy computes it batch by batch."""
    import functools
    import json

    from coalora.evaluation import reference

    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 20
    (tmp_path / "c.txt").write_text(text)
    monkeypatch.setattr(reference, "cache_dir", lambda: tmp_path / "ref")
    argv = ["eval", "--model", "tiny-llama", "--corpus", str(tmp_path / "c.txt"), "--seqlen", "64", "--windows", "2",
            "--full", "--preset", "nf3-dq", "--no-progress", "--json"]
    assert main(argv) == 0
    cached = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(reference, "build", functools.partial(reference.build, max_cache_bytes=0))
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lazy = json.loads(out)
    assert "second, unquantized copy" in err
    assert lazy["windows"] == cached["windows"] == len(text) // 64  # every window, not --windows 2
    assert lazy["kld"] > 0 and lazy["kld"] == pytest.approx(cached["kld"], rel=1e-2)
    assert lazy["ppl"] == pytest.approx(cached["ppl"], rel=1e-9)


def test_unquantized_model_has_no_kl_to_itself(tmp_path):
    """The reference path itself: KL of the unquantized model against its own cached log-probs ~ 0."""
    import torch

    from coalora.evaluation import reference
    from coalora.evaluation.perplexity import perplexity
    from coalora.models import tiny_llama

    model = tiny_llama(seed=0)
    windows = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    ref = reference.build(model, windows, "self-test", directory=tmp_path)
    assert ref.cached
    r = perplexity(model, windows, progress=False, reference=ref)
    assert abs(r.kld) < 1e-4 and all(abs(k) < 1e-2 for k in r.window_kld)


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "tiny-llama" in out


# ---- store, front, search, export, load (tiny-llama with a trained-format adapter; a private store)


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    import torch

    from coalora.adapter.model import AdapterConfig, CoALoRAModel
    from coalora.adapter.trained import save_trained
    from coalora.models import find_targets, tiny_llama

    monkeypatch.setenv("COALORA_STORE", str(tmp_path / "results.duckdb"))
    model = tiny_llama(seed=0)
    coa = CoALoRAModel(model, "tiny-llama", find_targets(model), AdapterConfig(rank=4))
    adapter = save_trained(coa, tmp_path / "tiny.safetensors", dtype=torch.float32)
    return tmp_path, ["--model", "tiny-llama", "--adapter", str(adapter)]


@pytest.mark.integration  # reads the prepared Shakespeare corpus
def test_search_front_export_load_results_end_to_end(tiny_setup, capsys):
    import json

    tmp, model_args = tiny_setup
    assert main(["results", "info", "--json"]) == 0  # creates the store (seeded from data/seed)
    seeded = json.loads(capsys.readouterr().out)["rows"]["evaluations"]
    assert main(["search", *model_args, "--rounds", "2", "--evaluate", "3", "--seqlen", "64", "--windows", "2",
                 "--json", "--no-progress"]) == 0
    rounds = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["measured"] >= 6

    assert main(["front", *model_args, "--seqlen", "64", "--windows", "2", "--budget", "4.0", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert len(front["measured"]) == rounds[1]["measured"] and front["front"]
    assert front["best"]["avg_bits"] <= 4.0

    # the KL front: the same stored evaluations, their KL to the unquantized model as the objective
    assert main(["front", *model_args, "--seqlen", "64", "--windows", "2", "--metric", "kld", "--json"]) == 0
    kl = json.loads(capsys.readouterr().out)
    from coalora.store import Store

    with Store() as st:
        stored = {e.config_hash: e.kld for e in st.evaluations(model="tiny-llama", eval_spec="strided-v1")}
    assert kl["metric"] == "kld" and kl["query"]["eval_spec"] == "strided-v1" and kl["front"]
    assert {p["config_hash"]: p["ppl"] for p in kl["measured"]} == pytest.approx(stored)
    assert all(v is not None and v >= 0 for v in stored.values())
    assert main(["front", *model_args, "--seqlen", "64", "--windows", "2", "--metric", "kld"]) == 0
    assert "KL" in capsys.readouterr().out

    # the GP's held-out accuracy: k-fold with a chosen fold assignment, and leave-one-out
    n = rounds[1]["measured"]
    assert main(["front", *model_args, "--seqlen", "64", "--windows", "2", "--validate", "--fold-seed", "3",
                 "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert (v["n"], v["folds"], v["fold_seed"]) == (n, 5, 3) and 0.0 <= v["coverage_2sigma"] <= 1.0
    assert main(["front", *model_args, "--seqlen", "64", "--windows", "2", "--validate", "--folds", str(n)]) == 0
    assert f"GP on {n} stored coalora evaluations (leave-one-out, strided-v1)" in capsys.readouterr().out

    assert main(["front", *model_args, "--seqlen", "64", "--windows", "2", "--budget", "1.0"]) == 2
    assert "outside the feasible range" in capsys.readouterr().err

    out = tmp / "bundle"
    assert main(["export", *model_args, "--hash", front["best"]["config_hash"], "--out", str(out), "--seqlen", "64",
                 "--windows", "2", "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert exp["measured"]["seqlen"] == 64 and exp["config_hash"] == front["best"]["config_hash"]

    assert main(["load", str(out), "--eval", "--json", "--no-progress"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["reproduced"]["relative_diff"] < 1e-3

    assert main(["results", "export", "--table", "evaluations", "--file", str(tmp / "ev.csv")]) == 0
    assert main(["results", "import", "--table", "evaluations", "--file", str(tmp / "ev.csv")]) == 0
    assert "added 0 new rows" in capsys.readouterr().out
    assert main(["results", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # the export measured its configuration unless the front's best was already a measured one
    assert info["rows"]["evaluations"] == seeded + rounds[1]["measured"] + (front["best"]["ppl"] is None)


def test_export_needs_exactly_one_configuration(tiny_setup, capsys):
    tmp, model_args = tiny_setup
    assert main(["export", *model_args, "--out", str(tmp / "b"), "--budget", "3", "--preset", "nf4-dq"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_load_of_a_missing_bundle_is_one_line(tmp_path, capsys):
    assert main(["load", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no bundle at {tmp_path / 'nothing'}"


def test_results_import_needs_a_file(tiny_setup, capsys):
    assert main(["results", "import"]) == 2
    assert "needs --file" in capsys.readouterr().err


def test_train_help_lists_every_training_option_with_its_docstring(capsys):
    import re
    from dataclasses import fields

    from coalora.cli import main
    from coalora.cli.options import field_docs
    from coalora.train.trainer import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    docs = field_docs(TrainConfig)
    for f in fields(TrainConfig):
        assert f.name in docs, f"TrainConfig.{f.name} has no docstring"
        assert "--" + f.name.replace("_", "-") in out
        first = re.sub(r"\s+", " ", docs[f.name]).split(". ")[0][:40]
        assert first in out, f.name


def test_tuple_options_parse_to_their_element_type():
    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x", "--budgets", "3.0", "2.5"])
    assert args.budgets == [3.0, 2.5]  # an empty default does not make them strings
    args = parser.parse_args(["compare", "--out", "x", "--seeds", "0", "1"])
    assert args.seeds == [0, 1]


@pytest.mark.integration
@pytest.mark.slow
def test_export_gguf_bundle_carries_the_llama_cpp_perplexity(tmp_home_store, capsys):
    """``coalora export --gguf``: the bundle holds model.gguf, scored by llama.cpp on the very windows of
    the bundle's measured perplexity, and its README puts the two numbers side by side."""
    out = tmp_home_store / "b4"
    assert main(["export", "--budget", "4.0", "--out", str(out), "--gguf", "--seqlen", "64", "--windows", "2",
                 "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    meta = json.loads((out / "coalora_config.json").read_text())
    g = meta["gguf"]
    assert (out / g["file"]).stat().st_size == g["file_bytes"]
    ll, measured = g["llama_cpp"], body["measured"]
    assert (ll["seqlen"], ll["windows"], ll["eval_spec"]) == (64, 2, measured["eval_spec"])
    assert 1 / 1.5 < ll["ppl"] / measured["ppl"] < 1.5  # same windows, ggml types vs NF-k: close, not equal
    assert f"{ll['ppl']:.3f}" in (out / "README.md").read_text()
