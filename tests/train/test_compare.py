"""The comparison harness end to end on the tiny model (minutes of compute become seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coalora.errors import CoaloraError
from coalora.train.compare import CompareConfig, EvalPoint, far_random_configs, hypervolume_normalised, seen_gap


def test_far_random_configs_are_far_and_in_range():
    numels = [100] * 20
    train = np.zeros((3, 20), dtype=int)
    ids = far_random_configs(numels, train, n=5, seed=0)
    assert len(ids) == 5
    for x in ids:
        assert (np.array(x) != 0).mean() >= 0.9


def test_normalised_hypervolume_bounds():
    assert hypervolume_normalised([(2.25, 10.0)], 2.25, 7.25, 1000.0, 10.0) == pytest.approx(1.0)
    assert hypervolume_normalised([(8.0, 10.0)], 2.25, 7.25, 1000.0, 10.0) == 0.0
    assert hypervolume_normalised([(4.75, 100.0)], 2.25, 7.25, 1000.0, 10.0) == pytest.approx(0.25)


def test_seen_gap_compares_at_matching_bits():
    def pt(kind, bits, ppl, method="coalora"):
        return EvalPoint(method, kind, None, bits, "0" * 16, ppl, float(np.log(ppl)), 10)

    # Unseen curve: ppl 100 at 3 bits, 25 at 5 bits; log-linear, so 50 at 4 bits.
    pts = [pt("unseen", 3.0, 100.0), pt("unseen", 5.0, 25.0),
           pt("seen", 4.0, 49.0),   # 2% better than the curve: -0.02
           pt("seen", 3.0, 103.0),  # +0.03 at an end point
           pt("seen", 2.9, 500.0),  # outside the unseen range: listed, not averaged
           pt("seen", 4.0, 1.0, method="shared")]  # another method's point is ignored
    g = seen_gap(pts)
    assert [r["gap"] for r in g["points"]][0] is None
    assert g["points"][1]["gap"] == pytest.approx(0.03) and g["points"][2]["curve"] == pytest.approx(50.0)
    assert g["mean"] == pytest.approx(0.005) and g["mean_abs"] == pytest.approx(0.025)
    assert seen_gap([pt("seen", 4.0, 49.0)])["mean"] is None  # no unseen curve to compare with


def test_compare_config_validation():
    with pytest.raises(CoaloraError, match="unknown comparison method"):
        CompareConfig(methods=("coalora", "dora"))
    with pytest.raises(CoaloraError, match="needs the coalora run"):
        CompareConfig(methods=("qlora",))


@pytest.mark.slow
def test_compare_end_to_end_on_tiny(tmp_path, tmp_home):
    from coalora.train.compare import run_compare

    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(f"line {i} of the play, said the king;" for i in range(2000)))
    cfg = CompareConfig(model="tiny-llama", corpus=str(corpus), eval_corpus=str(corpus), rank=4, seqlen=32, per_config_steps=2,
                        coalora_steps=4, search_every=2, eval_budgets=(3.0, 4.0), seen=2, ood=2,
                        eval_windows=2, eval_seqlen=32)
    res = run_compare(cfg, tmp_path / "cmp", log=lambda m: None, progress=False)
    kinds = {(p.method, p.kind) for p in res.points}
    assert {("coalora", "unseen"), ("coalora", "seen"), ("coalora", "ood"), ("qlora", "own"), ("lqlora", "own"),
            ("shared", "unseen"), ("none", "unseen")} <= kinds
    assert set(res.train_seconds) == {"coalora", "qlora", "lqlora", "shared"}
    assert all(0.0 <= v <= 1.0 for v in res.hypervolume.values())
    body = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert body["hv_reference"]["ppl_ref"] == 1000.0
    import duckdb

    n = duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'cmp' / 'compare.parquet'}'").fetchall()[0][0]
    assert n == len(res.points)
    assert "| hypervolume |" in (tmp_path / "cmp" / "compare.md").read_text()
