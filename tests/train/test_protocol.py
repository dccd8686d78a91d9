"""The comparison protocol: equal compute, honest labels, lr grid on validation, intervals, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from coalora.errors import CoaloraError
from coalora.train import protocol, protocol_intervals, protocol_report
from coalora.train.protocol import ProtocolConfig, Unit
from coalora.train.protocol.units import fmt


def _tiny(tmp_path, **kw):
    for split in ("train", "eval"):
        d = tmp_path / split
        d.mkdir(exist_ok=True)
        rng = np.random.default_rng(0 if split == "train" else 1)
        words = "the king said to his queen that all the night was cold and dark and the fool sang".split()
        for k in range(3):
            (d / f"doc{k}.txt").write_text(" ".join(rng.choice(words, 3000)))
    base = dict(model="tiny-llama", corpus=str(tmp_path / "train"), eval_corpus=str(tmp_path / "eval"),
                budgets=(3.0, 4.0), per_config_steps=2, rank=4, seqlen=32, search_every=2, seeds=(0, 1),
                compute_scales=(0.5,), lr_grid=(1e-3, 3e-3), theta_grid=(10.0, 30.0), grid_budgets=(3.0,),
                validation_windows=4, eval_windows=6, eval_seqlen=32, seen=2, ood=2)
    base.update(kw)
    return ProtocolConfig(**base)


def _fake_grid(cfg, best=1e-3, theta=10.0):
    """Finished grid units (edge extensions included) whose best lr is ``best`` and best theta scale ``theta``."""
    done: dict = {}
    while True:
        pending = [u for u in protocol.schedule(cfg, done) if u.kind in ("grid", "theta-grid") and u.name not in done]
        if not pending:
            return done
        for u in pending:
            if u.kind == "grid":
                # validation loss rises with the distance from the best rate (in log space)
                done[u.name] = {"validation_nll": 1.0 + abs(math.log(u.lr / best)), "lr": u.lr, "theta_lr_scale": 10.0}
            else:
                done[u.name] = {"validation_nll": 0.5 if u.theta_lr_scale == theta else 3.0, "lr": u.lr,
                                "theta_lr_scale": u.theta_lr_scale}
        same = f"grid-coalora-lr{fmt(best)}"
        if theta == 10.0 and same in done:
            done[same]["validation_nll"] = 0.4


def test_every_method_spends_the_headline_compute():
    cfg = ProtocolConfig()
    units = protocol.schedule(cfg, _fake_grid(cfg))
    for seed in cfg.seeds:
        spent = {}
        for u in units:
            if u.kind == "headline" and u.seed == seed:
                tc = protocol.train_config(cfg, u, u.budget)
                spent[u.method] = spent.get(u.method, 0) + tc.token_passes
        assert set(spent) == {"coalora", "coalora-theta-off", "shared", "qlora", "lqlora"}
        assert all(abs(v / cfg.headline_compute - 1) <= 0.02 for v in spent.values()), spent
    scaled = [u for u in units if u.kind == "scale"]
    assert {(u.method, u.scale) for u in scaled} == {(m, s) for m in ("coalora", "shared") for s in cfg.compute_scales}
    for u in scaled:
        assert protocol.train_config(cfg, u).token_passes == pytest.approx(u.scale * cfg.headline_compute, rel=0.02)


def test_the_headline_waits_for_the_grid_and_uses_each_methods_best_rate():
    cfg = ProtocolConfig()
    assert {u.kind for u in protocol.schedule(cfg, {})} == {"grid"}
    done = _fake_grid(cfg)
    del done[protocol.theta_units(cfg, 1e-3)[0].name]
    assert "headline" not in {u.kind for u in protocol.schedule(cfg, done)}  # the theta grid is not finished
    units = protocol.schedule(cfg, _fake_grid(cfg, best=1e-3, theta=3.0))
    heads = [u for u in units if u.kind == "headline"]
    assert {u.lr for u in heads} == {1e-3}
    assert {u.theta_lr_scale for u in heads if u.method == "coalora"} == {3.0}
    tc = protocol.train_config(cfg, next(u for u in heads if u.method == "coalora-theta-off"))
    assert tc.method == "coalora" and not tc.theta and not tc.use_theta and tc.searching  # U = I, same search
    assert tc.validation_windows == cfg.validation_windows


def test_labels_follow_the_runs_own_training_set():
    e = {"hash": "a", "role": "budget"}
    assert protocol.kind_of(e, {"a"}) == "seen" and protocol.kind_of(e, {"b"}) == "unseen"
    assert protocol.kind_of({"hash": "c", "role": "ood"}, set()) == "ood"
    assert protocol.kind_of(e, {"a"}, per_config=True) == "own"


def test_bootstrap_ties_identical_methods_and_separates_shifted_ones():
    rng = np.random.default_rng(0)
    text = rng.normal(3.0, 0.5, size=16) * 255  # how hard each window is: shared by every method and seed
    rows = []
    for m, shift in (("qlora", 0.0), ("coalora", 0.0), ("shared", -0.2 * 255)):
        for s in range(3):
            seed_effect = rng.normal(0, 0.01) * 255
            rows.append({"method": m, "seed": s, "window_nll": list(text + shift + seed_effect + rng.normal(0, 2, 16)),
                         "tokens": 16 * 255, "windows": 16})
    df = pd.DataFrame(rows)
    bs = protocol_intervals.Bootstrap(16, {m: [0, 1, 2] for m in ("qlora", "coalora", "shared")})
    q, c, s = (bs.cell(df[df["method"] == m]) for m in ("qlora", "coalora", "shared"))
    assert q[0] == pytest.approx(float(np.exp(text.mean() / 255)), rel=0.02)
    lo, hi = protocol_intervals.ci(c[1] / q[1])
    assert lo < 1.0 < hi  # same model up to noise: a tie
    lo, hi = protocol_intervals.ci(s[1] / q[1])
    assert hi < 1.0 and lo > 0.75  # exp(-0.2) = 0.82, separated by pairing on windows


def test_a_methods_intervals_do_not_move_when_another_method_joins():
    """Registering an ablation arm must not shift the published intervals of the methods already there."""
    few = protocol_intervals.Bootstrap(16, {"qlora": [0, 1, 2], "coalora": [0, 1, 2]})
    more = protocol_intervals.Bootstrap(16, {"a-arm": [0], "qlora": [0, 1, 2], "b-arm": [0, 1], "coalora": [0, 1, 2]})
    assert np.array_equal(few.windows, more.windows)
    for m in ("qlora", "coalora"):
        assert np.array_equal(few.seeds[m], more.seeds[m])
    assert not np.array_equal(few.seeds["qlora"], few.seeds["coalora"])  # each method its own draws


def test_config_round_trip_and_validation():
    cfg = ProtocolConfig(seeds=(0, 1, 2, 3))
    assert ProtocolConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).hash == cfg.hash != ProtocolConfig().hash
    with pytest.raises(CoaloraError, match="whole number"):
        ProtocolConfig(compute_scales=(0.35,))
    with pytest.raises(CoaloraError, match="increasing"):
        ProtocolConfig(budgets=(3.0, 2.5))


@pytest.mark.slow
def test_protocol_end_to_end_on_tiny(tmp_path, tmp_home):
    import duckdb

    cfg = _tiny(tmp_path)
    out = tmp_path / "protocol"
    protocol.add_arm(out, protocol.Arm("lq", {"base": "lq", "lq_rank": 2}, "an LQ base"))
    done = protocol.run(cfg, out, log=lambda m: None, progress=False)
    assert {u.name for u in protocol.schedule(cfg, done, protocol.load_arms(out))} == set(done)  # everything ran
    text = protocol_report.write(out)
    pts = duckdb.sql(f"SELECT * FROM '{out / 'points.parquet'}'").df()
    runs = duckdb.sql(f"SELECT * FROM '{out / 'runs.parquet'}'").df()
    need = {"method", "seed", "kind", "budget", "avg_bits", "config_hash", "ppl", "nll", "kld", "tokens", "windows",
            "eval_spec", "token_passes"}
    assert need <= set(pts.columns)
    assert {"method", "seed", "budget", "lr", "token_passes", "train_seconds", "train_config_hashes"} <= set(runs.columns)
    assert set(pts["method"]) == {*protocol.METHODS, "coalora+lq"} and set(pts["eval_spec"]) == {"strided-v1"}
    assert "## Ablation arms" in text and '`{"base": "lq", "lq_rank": 2}`' in text
    assert set(pts[pts["method"] != "none"]["seed"]) == {0, 1}
    head = pts[(pts["scale"] == 1.0) & (pts["method"] != "none")]
    assert set(head["token_passes"]) == {cfg.headline_compute}  # equal compute, per seed
    for _, p in pts[pts["kind"] == "unseen"].iterrows():
        trained = runs[(runs["method"] == p["method"]) & (runs["seed"] == p["seed"]) & (runs["scale"] == p["scale"])]
        assert all(p["config_hash"] not in list(h) for h in trained["train_config_hashes"])
    assert (pts["kld"] > 0).all() and np.isfinite(pts["ppl"]).all()
    assert "## Perplexity ratio to QLoRA" in text and " [" in text and "Label check: 0" in text
    rows = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")[1:] for line in text.splitlines()
            if line.startswith("| hypervolume")}
    methods = next(line for line in text.splitlines() if line.startswith("| | coalora")).strip("|").split(" | ")[1:]
    hv = {m: float(c.split(" [")[0]) for m, c in zip(methods, rows["hypervolume (unseen / own points)"]) if c.strip()}
    diff = dict(zip(methods, rows["hypervolume minus QLoRA's (paired; an interval holding 0 is a tie)"]))
    assert diff["qlora"].strip() == "" and len(hv) > 2
    for m in hv.keys() - {"qlora"}:
        assert float(diff[m].split(" [")[0]) == pytest.approx(hv[m] - hv["qlora"], abs=2e-4), m
    diff = dict(zip(methods, rows["hypervolume minus LQ-LoRA's (paired; an interval holding 0 is a tie)"]))
    assert diff["lqlora"].strip() == ""
    for m in hv.keys() - {"lqlora"}:
        assert float(diff[m].split(" [")[0]) == pytest.approx(hv[m] - hv["lqlora"], abs=2e-4), m
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every trained unit's step log is kept beside its result and summarised per run.
    trained = {n for n, b in done.items() if b["unit"]["kind"] in ("headline", "arm", "scale")}
    assert {p.name.removesuffix(".jsonl.gz") for p in (out / "logs").glob("*.jsonl.gz")} == trained
    assert (runs[runs["unit"].isin(trained)]["log_steps"] == runs[runs["unit"].isin(trained)]["steps"]).all()
    assert "## Training stability" in text
    assert runs[runs["method"] == "coalora+lq"]["theta_lr_scale"].notna().all()  # an arm's theta rate is on record
    assert runs[runs["method"] == "coalora-theta-off"]["theta_lr_scale"].isna().all()
    assert protocol_report.load(out)["front_png"] == out / "front.png"
    # Resuming does nothing new; another protocol in the same directory is refused.
    before = sorted(p.stat().st_mtime_ns for p in (out / "units").glob("*.json"))
    protocol.run(cfg, out, log=lambda m: None, progress=False)
    assert sorted(p.stat().st_mtime_ns for p in (out / "units").glob("*.json")) == before
    with pytest.raises(CoaloraError, match="holds protocol"):
        protocol.run(_tiny(tmp_path, seeds=(0,)), out, log=lambda m: None, progress=False)


def test_step_log_stability_counts_clips_and_finds_the_break():
    from coalora.train.protocol.step_logs import stability

    recs = [{"step": 1, "loss": {"a": 4.0, "b": 5.0}, "grad_norm": 0.5, "grad_norm_theta": 0.1, "clipped": False},
            {"step": 2, "loss": {"a": 3.9}, "grad_norm": 3.0, "grad_norm_theta": 2.5, "clipped": True},
            {"step": 3, "loss": {"b": 9.0, "c": 4.0}, "grad_norm": 30.0, "grad_norm_theta": 29.0, "clipped": True},
            {"step": 4, "loss": {"a": 4.1}, "grad_norm": 0.4, "grad_norm_theta": 0.2, "clipped": False}]
    s = stability(recs)
    assert (s["log_steps"], s["clipped_steps"]) == (4, 2)
    assert (s["max_grad_norm"], s["max_grad_norm_step"], s["max_grad_norm_theta"]) == (30.0, 3, 29.0)
    assert s["worst_loss_rise"] == pytest.approx(9.0 / 5.0) and s["worst_loss_rise_step"] == 3  # b's, not a's
    off = stability([{k: v for k, v in r.items() if k != "grad_norm_theta"} for r in recs])
    assert math.isnan(off["max_grad_norm_theta"])
    assert all(math.isnan(v) for v in stability([]).values())


def test_a_kept_step_log_is_never_replaced_and_a_missing_one_is_not_invented(tmp_path):
    import gzip

    from coalora.train.protocol import step_logs

    run = tmp_path / "runs" / "u"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text('{"event": "start"}\n{"step": 1, "loss": {"a": 1.0}, "grad_norm": 2.0}\n')
    out = tmp_path / "out"
    assert step_logs.keep(out, run, "u")
    (run / "log.jsonl").write_text("{}\n")  # the folder moves on; the kept copy stays the finished run's
    assert step_logs.keep(out, run, "u")
    assert len(step_logs.read(step_logs.kept_log(out, "u"))) == 1
    assert gzip.decompress(step_logs.kept_log(out, "u").read_bytes()).startswith(b'{"event"')
    assert not step_logs.keep(out, tmp_path / "runs" / "gone", "gone")
    assert not step_logs.kept_log(out, "gone").exists() and list((out / "logs").iterdir()) == [step_logs.kept_log(out, "u")]


def test_report_of_an_empty_directory_says_what_to_run(tmp_path):
    (tmp_path / "units").mkdir()
    with pytest.raises(CoaloraError, match="coalora compare"):
        protocol_report.write(tmp_path)
    assert protocol_report.load(tmp_path) is None


def test_compare_help_lists_every_protocol_field(capsys):
    from dataclasses import fields

    from coalora.cli import main
    from coalora.cli.options import field_docs

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    docs = field_docs(ProtocolConfig)
    for f in fields(ProtocolConfig):
        assert "--" + f.name.replace("_", "-") in out
        assert f.name in docs  # every field documents itself
    assert "Unit" in dir(protocol) and Unit("x", "grid", "qlora").seed == 0


def test_arms_keep_the_protocols_compute_data_and_seeds(tmp_path):
    cfg = ProtocolConfig()
    arm = protocol.Arm("k4-lq", {"configs_per_step": 4, "base": "lq"}, "more configurations per step")
    protocol.add_arm(tmp_path, arm)
    arms = protocol.load_arms(tmp_path)
    assert arms == [arm]
    units = protocol.schedule(cfg, _fake_grid(cfg), arms)
    mine = [u for u in units if u.kind == "arm"]
    assert [u.seed for u in mine] == list(cfg.seeds) and {u.method for u in mine} == {"coalora+k4-lq"}
    tc = protocol.train_config(cfg, mine[0], arm=arm)
    assert tc.configs_per_step == 4 and tc.base == "lq" and tc.steps == 75
    assert tc.token_passes == cfg.headline_compute and tc.lr == 1e-3 and tc.theta_lr_scale == 10.0
    off = protocol.Arm("k4-lq-off", {"configs_per_step": 4, "base": "lq", "theta": False}, "its theta-off ablation")
    protocol.add_arm(tmp_path, off)
    assert not protocol.train_config(cfg, mine[0], arm=off).use_theta
    screen = protocol.Arm("screen", {"sampling": "excess"}, "one seed first", seeds=(0,))
    protocol.add_arm(tmp_path, screen)
    assert protocol.load_arms(tmp_path)[-1] == screen
    units = protocol.schedule(cfg, _fake_grid(cfg), protocol.load_arms(tmp_path))
    assert [u.seed for u in units if u.method == "coalora+screen"] == [0]
    assert [u.seed for u in units if u.method == "coalora+k4-lq"] == list(cfg.seeds)
    with pytest.raises(CoaloraError, match="seeds must be"):
        protocol.add_arm(tmp_path, protocol.Arm("neg", {}, seeds=(-1,)))
    for bad, match in (({"steps": 10}, "fixed by the protocol"), ({"seed": 3}, "fixed"), ({"colour": 1}, "unknown"),
                       ({"base": "gptq"}, "unknown base")):
        with pytest.raises(CoaloraError, match=match):
            protocol.add_arm(tmp_path, protocol.Arm("x", bad))
    with pytest.raises(CoaloraError, match="arm name"):
        protocol.add_arm(tmp_path, protocol.Arm("../evil", {}))
    (tmp_path / "arms.json").write_text("{broken")
    with pytest.raises(CoaloraError, match="arms.json"):
        protocol.load_arms(tmp_path)


def test_compare_registers_an_arm_at_chosen_seeds_from_the_command_line(tmp_path, capsys):
    from coalora.cli import main

    argv = ["compare", "--out", str(tmp_path), "--report-only", "--arm", "scr", "--arm-options",
            '{"sampling": "excess"}', "--arm-seeds", "0", "2"]
    assert main(argv) == 2  # registered, then no units to report
    assert protocol.load_arms(tmp_path) == [protocol.Arm("scr", {"sampling": "excess"}, "", (0, 2))]
    assert "no finished units" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path), "--report-only", "--arm-seeds", "1"]) == 2
    assert "need --arm NAME" in capsys.readouterr().err


def test_a_grid_whose_best_value_is_on_its_edge_grows_past_it():
    scores = {3e-4: 5.0, 1e-3: 4.5, 3e-3: 4.0}
    assert protocol.extended((3e-4, 1e-3, 3e-3), scores.get) == [3e-4, 1e-3, 3e-3, 0.01]  # best at the top: try more
    scores[0.01] = 4.2
    assert protocol.extended((3e-4, 1e-3, 3e-3), scores.get) == [3e-4, 1e-3, 3e-3, 0.01]  # now interior: stop
    assert protocol.extended((3e-4, 1e-3, 3e-3), {3e-4: 1.0, 1e-3: 2.0, 3e-3: None}.get) == [3e-4, 1e-3, 3e-3]
    low = {1e-4: 0.5, 3e-4: 1.0, 1e-3: 2.0, 3e-3: 3.0}
    assert protocol.extended((3e-4, 1e-3, 3e-3), low.get)[:2] == [3e-5, 1e-4]  # best at the bottom: grows down, twice
    assert protocol.half_decade(10.0, up=True) == 30.0 and protocol.half_decade(3.0, up=False) == 1.0
    assert len(protocol.extended((3e-4, 1e-3, 3e-3), lambda v: -v)) == 3 + protocol.MAX_EXTENSIONS  # bounded
    cfg = ProtocolConfig()
    done = {u.name: {"validation_nll": 1.0 if u.lr == 3e-3 else 2.0, "lr": u.lr, "theta_lr_scale": 10.0}
            for u in protocol.grid_units(cfg)}
    units = protocol.schedule(cfg, done)
    assert "grid-coalora-lr0.01" in {u.name for u in units} and "headline" not in {u.kind for u in units}
    full = _fake_grid(cfg, best=0.01)
    assert {u.lr for u in protocol.schedule(cfg, full) if u.kind == "headline"} == {0.01}


def test_each_recipe_is_paired_with_its_own_theta_off_arm():
    from coalora.train.protocol_report import theta_pairs

    opts = {"coalora+a": {"base": "lq"}, "coalora+a-off": {"base": "lq", "theta": False},
            "coalora+b": {"sampling": "excess"}, "coalora+c-off": {"base": "quant", "theta": False}}
    methods = ["coalora", "coalora+a", "coalora+a-off", "coalora+b", "coalora+c-off", "coalora-theta-off", "qlora"]
    assert theta_pairs(methods, opts) == [("coalora", "coalora-theta-off"), ("coalora+a", "coalora+a-off")]
    assert theta_pairs(["coalora", "qlora"], {}) == []
    # theta's rate does not enter a theta-off run, so a recipe that changes only it shares a's ablation
    opts["coalora+a-t3"] = {"base": "lq", "theta_lr_scale": 3.0}
    assert theta_pairs([*methods, "coalora+a-t3"], opts)[1:] == [("coalora+a", "coalora+a-off"),
                                                                 ("coalora+a-t3", "coalora+a-off")]
    # nor does what theta sees: a recipe whose theta also sees the configuration's context shares it too
    opts["coalora+a-ctx"] = {"base": "lq", "theta_lr_scale": 3.0, "theta_context": True}
    assert theta_pairs([*methods, "coalora+a-ctx"], opts)[-1] == ("coalora+a-ctx", "coalora+a-off")
    opts["coalora+a-err"] = {"base": "lq", "theta_lr_scale": 3.0, "theta_error": True}
    assert theta_pairs([*methods, "coalora+a-err"], opts)[-1] == ("coalora+a-err", "coalora+a-off")
