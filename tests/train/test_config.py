"""TrainConfig's defaults: each method gets its own recipe and rate, and the stored recipe is concrete."""

from __future__ import annotations

import re

import pytest

from coalora.errors import CoaloraError
from coalora.train.config import AUTO, DEFAULT_LR, METHODS, PAPER_RECIPE, RECIPE, TrainConfig


def _budgets(method):
    return {"qlora": (3.0,), "lqlora": (3.0,)}.get(method, ())


@pytest.mark.parametrize("method", METHODS)
def test_each_method_gets_its_own_recipe_and_rate(method):
    tc = TrainConfig(method=method, budgets=_budgets(method))
    own = RECIPE if method == "coalora" else PAPER_RECIPE
    assert {k: getattr(tc, k) for k in ("base", "sampling", "loss_balance")} == \
        {k: own[k] for k in ("base", "sampling", "loss_balance")}
    assert tc.lr == DEFAULT_LR[method]
    d = tc.to_dict()  # what a checkpoint stores, so a resume compares concrete values
    assert AUTO not in d.values() and d["lr"] is not None
    assert TrainConfig.from_dict(d) == tc


def test_explicit_options_win_over_the_methods_defaults():
    tc = TrainConfig(**PAPER_RECIPE, lr=1e-4)
    assert (tc.base, tc.sampling, tc.loss_balance, tc.lr) == ("quant", "uniform", "sum", 1e-4)
    assert TrainConfig(method="shared", base="lq").base == "lq"
    assert TrainConfig(base=AUTO, sampling=AUTO, loss_balance=AUTO) == TrainConfig()
    with pytest.raises(CoaloraError, match="lr must be a positive number"):
        TrainConfig(lr=0.0)
    with pytest.raises(CoaloraError, match="unknown method"):
        TrainConfig(method="qlora2")


def test_the_help_quotes_the_rates_it_defaults_to(capsys):
    from coalora.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    lr_help = text[text.index("--lr LR AdamW"):text.index("--theta-lr-scale THETA_LR_SCALE theta")]
    quoted = {}
    for rate, first, second in re.findall(r"(\d[\d.e-]*) for (\w+)(?: and (\w+))?", lr_help):
        quoted.update({m: float(rate) for m in (first, second) if m})
    assert quoted == DEFAULT_LR
