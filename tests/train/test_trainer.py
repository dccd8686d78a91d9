"""Training on the tiny model: loss falls, resume is exact, search keeps a valid set, bad checkpoints fail cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coalora.errors import CoaloraError
from coalora.train.trainer import TrainConfig, Trainer


@pytest.fixture
def corpus(tmp_path):
    """A local text corpus (bytes tokenizer): ~12k tokens, enough for many 32-token windows."""
    p = tmp_path / "corpus.txt"
    lines = [f"the {w} of {v} is {w}{v}; " for w in ("king", "queen", "fool", "ghost") for v in range(40)]
    p.write_text(" ".join(lines * 4))
    return str(p)


def _cfg(corpus, **kw):
    # lr 30x the real recipe's (a tiny model, few steps), so theta keeps the paper's single rate unless a test scales it.
    base = dict(model="tiny-llama", corpus=corpus, rank=4, seqlen=32, batch_size=4, steps=6, lr=3e-3, theta_lr_scale=1.0,
                initial_budgets=6, weighting="none", search_every=0, probe_windows=4, checkpoint_every=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, out):
    return Trainer(cfg, out, progress=False).run()


@pytest.mark.parametrize("theta_lr_scale", [1.0, 10.0])
def test_training_lowers_the_loss_of_every_training_config(corpus, tmp_home, tmp_path, theta_lr_scale):
    cfg = _cfg(corpus, steps=40, theta_lr_scale=theta_lr_scale)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.setup()
    configs = trainer.initial_configs
    before = [trainer.probe_loss(c) for c in configs]
    trainer2 = Trainer(cfg, tmp_path / "run", progress=False)
    trainer2.run()
    after = [trainer2.probe_loss(c) for c in configs]
    assert all(a < b for a, b in zip(after, before)), (before, after)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert len(steps) == 40 and all(len(r["loss"]) == 2 for r in steps)  # K = 2 configs per step
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] >= 0 for r in steps)


@pytest.mark.parametrize("theta_lr_scale", [1.0, 10.0])
def test_resume_reproduces_the_uninterrupted_run(corpus, tmp_home, tmp_path, theta_lr_scale):
    straight = Trainer(_cfg(corpus, steps=6, theta_lr_scale=theta_lr_scale), tmp_path / "a", progress=False)
    straight.run()
    Trainer(_cfg(corpus, steps=3, theta_lr_scale=theta_lr_scale), tmp_path / "b", progress=False).run()  # "interrupted"
    resumed = Trainer(_cfg(corpus, steps=6, theta_lr_scale=theta_lr_scale), tmp_path / "b", progress=False)
    resumed.run()
    sa, sb = straight.coa.trainable_state(), resumed.coa.trainable_state()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if '"step"' in x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines() if '"step"' in x]
    assert la == lb
    # A run that died before its first checkpoint leaves a log and nothing else: a fresh start replaces it.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text((tmp_path / "a" / "log.jsonl").read_text() + '{"step": 7, "lo')
    Trainer(_cfg(corpus, steps=6, theta_lr_scale=theta_lr_scale), tmp_path / "c", progress=False).run()
    recs = [json.loads(x) for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "step" in r] == list(range(1, 7))
    assert sum(r.get("event") == "start" for r in recs) == 1


def test_theta_lr_scale_gives_theta_its_own_rate(corpus, tmp_home, tmp_path):
    """theta (and gamma) train at lr * theta_lr_scale, A and B at lr; scale 1 keeps one group (old checkpoints)."""
    one = Trainer(_cfg(corpus, steps=2), tmp_path / "one", progress=False)
    one.run()
    assert [g["lr"] for g in one.torch_optimizer.param_groups] == [3e-3]
    two = Trainer(_cfg(corpus, steps=2, theta_lr_scale=10.0), tmp_path / "two", progress=False)
    two.run()
    groups = two.torch_optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([3e-3, 3e-2])
    theta = {id(p) for p in two.coa.theta.parameters()}
    assert {id(p) for p in groups[1]["params"]} == theta
    assert not theta & {id(p) for p in groups[0]["params"]}
    # The faster rate moves theta further from its (seeded, identical) initial value in the same steps.
    fresh = Trainer(_cfg(corpus, steps=2), tmp_path / "fresh", progress=False)
    fresh.setup()
    w0 = fresh.coa.theta.mlp[-1].weight
    moved = [float((t.coa.theta.mlp[-1].weight - w0).abs().max()) for t in (one, two)]
    assert moved[1] > 3 * moved[0] > 0, moved
    with pytest.raises(CoaloraError, match="theta_lr_scale=10.0, not 1.0"):
        _run(_cfg(corpus, steps=4, theta_lr_scale=1.0), tmp_path / "two")


def test_a_baseline_resumes_whatever_theta_rate_it_was_saved_with(corpus, tmp_home, tmp_path):
    """QLoRA has no theta, so theta's rate is no reason to refuse its checkpoint (runs shared between comparisons)."""
    _run(_cfg(corpus, steps=2, method="qlora", budgets=(3.0,), theta_lr_scale=30.0), tmp_path / "q")
    state = _run(_cfg(corpus, steps=3, method="qlora", budgets=(3.0,), theta_lr_scale=10.0), tmp_path / "q")
    assert state.step == 3


def test_search_rounds_keep_a_valid_training_set(corpus, tmp_home, tmp_path):
    cfg = _cfg(corpus, steps=4, search_every=2, search_candidates=2, search_steps=3, segments=10)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    state = trainer.run()
    assert state.searches == 1  # after step 2 (none after the last step)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    search = [r for r in log if r.get("event") == "search"][0]
    from coalora.search.encoding import ENCODING

    assert search["encoding"] == ENCODING and set(search["loo_rmse"]) == {ENCODING}
    assert search["hypervolume"] > 0
    for ids in state.train_set:
        c = trainer.config(ids)
        assert cfg.budget_lo <= c.avg_bits <= cfg.budget_hi
    assert len(state.train_set) >= cfg.configs_per_step


def test_resume_refuses_other_options_and_corrupt_files(corpus, tmp_home, tmp_path):
    run = tmp_path / "run"
    _run(_cfg(corpus, steps=3), run)
    with pytest.raises(CoaloraError, match="rank=4, not 8"):
        _run(_cfg(corpus, steps=6, rank=8), run)
    ck = run / "checkpoint.safetensors"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])  # truncated
    with pytest.raises(CoaloraError, match="corrupt or truncated"):
        _run(_cfg(corpus, steps=6), run)
    ck.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CoaloraError, match="corrupt or truncated"):
        _run(_cfg(corpus, steps=6), run)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"method": "dora"}, "unknown method"),
        ({"rank": 0}, "rank must be a positive integer"),
        ({"budget_lo": 1.0}, "budget range"),
        ({"method": "qlora"}, "exactly one budget"),
        ({"budgets": (9.0,)}, "outside the feasible range"),
        ({"search_every": -1}, "search_every"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"theta_lr_scale": 0}, "theta_lr_scale must be a positive number"),
    ],
)
def test_train_config_validation(corpus, kw, match):
    with pytest.raises(CoaloraError, match=match):
        _cfg(corpus, **kw)


def test_cli_train_reports_errors_without_traceback(corpus, tmp_home, tmp_path, capsys):
    from coalora.cli import main

    assert main(["train", "--out", str(tmp_path / "r"), "--model", "tiny-llama", "--rank", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: rank must be a positive integer") and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [[], ["--base", "quant", "--sampling", "uniform", "--loss-balance", "sum"]],
                         ids=["default", "paper"])
def test_two_gloo_processes_match_one_process_with_the_combined_batch(corpus, tmp_path, recipe):
    """`accelerate launch --multi_gpu --num_processes 2` (no GPU: MULTI_CPU, gloo) gives the loss curve of 1 process x batch 4."""
    env = {**os.environ, "COALORA_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    common = ["--model", "tiny-llama", "--corpus", corpus, "--rank", "4", "--seqlen", "32", "--batch-size", "4",
              "--steps", "5", "--lr", "3e-3", "--initial-budgets", "6", "--weighting", "none", "--search-every", "0",
              "--no-progress", *recipe]
    one = subprocess.run([sys.executable, "-m", "coalora", "train", "--out", str(tmp_path / "one"), *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "coalora", "train", "--out", str(tmp_path / "two"), *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]

    def curve(d):
        recs = [json.loads(x) for x in (Path(d) / "log.jsonl").read_text().splitlines()]
        return [sum(r["loss"].values()) for r in recs if "step" in r]

    start = json.loads((tmp_path / "two" / "log.jsonl").read_text().splitlines()[0])
    assert start["processes"] == 2
    c1, c2 = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(c1) == len(c2) == 5
    assert max(abs(a - b) for a, b in zip(c1, c2)) < 1e-4, (c1, c2)


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "qlora", "budgets": (3.0,), "init": "peft"},
        {"method": "lqlora", "budgets": (3.0,)},
        {"method": "shared", "budgets": (2.5, 3.0, 3.5, 4.0), "init": "peft"},
    ],
)
def test_baselines_train_through_the_same_loop(corpus, tmp_home, tmp_path, kw):
    cfg = _cfg(corpus, steps=12, **kw)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.setup()
    configs = trainer.initial_configs
    assert len(configs) == len(kw["budgets"])
    before = [trainer.probe_loss(c) for c in configs]
    theta_before = {k: v.clone() for k, v in trainer.coa.theta.state_dict().items()}
    state = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert state.step == 12
    after_trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert after_trainer.resume()
    after = [after_trainer.probe_loss(c) for c in configs]
    assert sum(after) < sum(before), (before, after)
    # baselines are plain LoRA: theta is never trained and U is never used
    for k, v in after_trainer.coa.theta.state_dict().items():
        assert torch.equal(v, theta_before[k])
    assert all(layer.U is None for layer in after_trainer.coa.layers.values())


def test_lqlora_base_is_the_lq_quantized_part(corpus, tmp_home, tmp_path):
    from coalora.lqlora.split import lq_decompose

    trainer = Trainer(_cfg(corpus, method="lqlora", budgets=(3.0,)), tmp_path / "run", progress=False)
    trainer.setup()
    (qc,) = trainer.initial_configs
    trainer.coa.applier.apply(qc)
    t = trainer.targets[0]
    w = trainer.coa.applier.model.get_submodule(t.name).base_layer.weight
    from coalora.models import tiny_llama

    original = tiny_llama(seed=0).get_submodule(t.name).weight.detach()  # what load_model("tiny-llama") builds
    res = lq_decompose(original, qc[t.name], 4)
    torch.testing.assert_close(w, res.q)


def test_lq_base_trains_and_resumes_with_its_base(corpus, tmp_home, tmp_path):
    from coalora.adapter.apply import BaseSpec

    cfg = _cfg(corpus, base="lq", lq_rank=2, steps=4)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    state = tr.run()
    assert state.step == 4 and tr.coa.applier.base == BaseSpec("lq", 2, TrainConfig.lq_iters)
    qc = tr.config(state.train_set[0])
    t = tr.targets[0]
    w, _ = tr.coa.applier.quantized_weight(t.name, qc[t.name])
    assert torch.allclose(w, BaseSpec("lq", 2, TrainConfig.lq_iters).weight(tr.coa.applier.originals[t.name].float(), qc[t.name]))
    with pytest.raises(CoaloraError, match="base"):
        Trainer(_cfg(corpus, base="quant", lq_rank=2, steps=6), tmp_path / "run", progress=False).run()


def test_token_passes_and_trained_hashes_are_counted(corpus, tmp_home, tmp_path):
    cfg = _cfg(corpus, steps=5, configs_per_step=2, validation_windows=3)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    state = tr.run()
    assert state.tokens == cfg.token_passes == 5 * 4 * 32 * 2
    logged = set()
    for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines():
        logged |= set(json.loads(line).get("loss", {}))
    assert set(state.trained_on) == logged  # every configuration a step took a gradient on, and only those
    assert len(tr.validation) == 3
    from coalora import data

    every = data.windows(data.tokenize(tr.tok, data.load_corpus(corpus, "train")), 32)
    # training windows, then the validation split, then the probe: disjoint slices of the stream
    assert torch.equal(torch.cat([tr.train_windows, tr.validation, tr.probe]), every)
    shared = TrainConfig(model="tiny-llama", method="shared", steps=3)
    assert shared.configs_each_step == 1 and shared.token_passes == 3 * 4 * 128


def test_excess_sampling_draws_where_quantization_hurts_and_resumes_exactly(corpus, tmp_home, tmp_path):
    from coalora.train.sampling import sample_configs

    counts = np.bincount([i for s in range(2000) for i in sample_configs(0, s, 3, 1, [1.0, 1.0, 8.0])], minlength=3)
    assert counts[2] > 5 * counts[0]  # proportional to the weights (8:1)
    cfg = _cfg(corpus, steps=6, sampling="excess", sampling_power=2.0, loss_balance="equal", checkpoint_every=3)
    tr = Trainer(cfg, tmp_path / "a", progress=False)
    full = tr.run()
    assert full.ref_probe is not None and len(full.scores) == len(full.train_set)
    w = tr.sampling_weights()
    worst = max(range(len(w)), key=lambda i: full.scores[tr.config(full.train_set[i]).hash])
    assert w[worst] == max(w)  # the highest probe loss gets the largest weight
    Trainer(_cfg(corpus, steps=3, sampling="excess", sampling_power=2.0, loss_balance="equal", checkpoint_every=3),
            tmp_path / "b", progress=False).run()
    resumed = Trainer(cfg, tmp_path / "b", progress=False).run()
    assert resumed.trained_on == full.trained_on
    logs = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if '"step"' in x]
    assert all("grad_norm_lora" in r and "clipped" in r for r in logs)
    with pytest.raises(CoaloraError, match="unknown sampling"):
        _cfg(corpus, sampling="loss")


def test_setup_gives_the_initial_set_and_resume_the_checkpoint_without_training(corpus, tmp_home, tmp_path):
    """The public seams the comparison and the scripts use: setup(), resume(), config(), training_configs()."""
    cfg = _cfg(corpus, steps=3)
    fresh = Trainer(cfg, tmp_path / "run", progress=False)
    fresh.setup()
    model = fresh.coa
    fresh.setup()  # once: a second call changes nothing
    assert fresh.coa is model
    assert fresh.training_configs() == fresh.initial_configs and len(fresh.initial_configs) >= 2
    assert fresh.config(list(fresh.initial_configs[0].ids)) == fresh.initial_configs[0]
    assert not fresh.resume() and fresh.state.step == 0  # no checkpoint yet
    trained = Trainer(cfg, tmp_path / "run", progress=False)
    state = trained.run()
    again = Trainer(cfg, tmp_path / "run", progress=False)
    assert again.resume() and again.state.step == 3 and again.initial_configs is None  # nothing rebuilt
    assert [c.hash for c in again.training_configs()] == [trained.config(ids).hash for ids in state.train_set]
    for k, v in trained.coa.trainable_state().items():
        assert torch.equal(again.coa.trainable_state()[k], v), k
