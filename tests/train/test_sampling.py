"""What a step trains on: the data order, the configuration draws and the ``excess`` weights."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import pytest
import torch

from coalora.train.sampling import excess_weights, sample_configs, schedule_rows, with_uniform_share


def test_each_epoch_visits_every_window_once_in_a_fresh_order():
    n, batch = 10, 3  # 3 steps per epoch; the last window of each epoch's permutation is dropped
    epoch0 = torch.cat([schedule_rows(7, s, n, batch) for s in range(3)])
    epoch1 = torch.cat([schedule_rows(7, s, n, batch) for s in range(3, 6)])
    assert len(set(epoch0.tolist())) == 9 and len(set(epoch1.tolist())) == 9
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(schedule_rows(7, 4, n, batch), schedule_rows(7, 4, n, batch))  # a function of (seed, step)
    assert not torch.equal(schedule_rows(8, 0, n, batch), schedule_rows(7, 0, n, batch))


def test_configuration_draws_are_distinct_and_reproducible():
    for step in range(50):
        picks = sample_configs(3, step, 6, 2)
        assert len(set(picks)) == 2 and all(0 <= p < 6 for p in picks)
        assert picks == sample_configs(3, step, 6, 2)
    assert sample_configs(0, 0, 1, 2) == [0]  # k is capped by the training set
    assert sample_configs(0, 0, 3, 3, [0.0, 1.0, 0.0]) == [1]  # only positive weights can be drawn


def test_excess_weights_follow_the_loss_above_the_floor():
    w = excess_weights([3.0, 5.0, None], floor=2.0, power=2.0)
    assert w[:2] == pytest.approx([1.0, 9.0]) and w[2] == pytest.approx(5.0)  # unscored: the mean weight
    assert excess_weights([1.0], floor=2.0, power=1.0) == pytest.approx([1e-3])  # below the floor still drawable
    assert excess_weights([None, None], floor=0.0, power=1.0) == [1.0, 1.0]
    assert excess_weights([3.0, 5.0], floor=2.0, power=0.0) == [1.0, 1.0]  # power 0 is uniform


def test_a_uniform_share_keeps_floored_configurations_in_the_draws():
    w = excess_weights([2.0, 2.0, 12.0, 12.0], floor=2.0, power=1.0)  # two at the unquantized loss
    p = with_uniform_share(w, 0.5)
    assert sum(p) == pytest.approx(1.0) and p[0] == pytest.approx(0.125, rel=1e-3) and p[2] == pytest.approx(0.375, rel=1e-3)
    assert with_uniform_share(w, 0.0) == w and with_uniform_share(w, 1.0) == pytest.approx([0.25] * 4)
    draws = [i for step in range(400) for i in sample_configs(0, step, 4, 1, p)]
    assert 0.15 < sum(i < 2 for i in draws) / len(draws) < 0.35  # without the share: about 1e-4
    from coalora.errors import CoaloraError
    from coalora.train.config import TrainConfig

    for bad in (-0.1, 1.5, True, float("nan")):
        with pytest.raises(CoaloraError, match="sampling_uniform"):
            TrainConfig(sampling="excess", sampling_uniform=bad)


def _field_docs(cls: type) -> set[str]:
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {node.target.id for node, nxt in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)}


def test_every_option_and_state_field_documents_itself():
    """The docstrings are the CLI's help (`coalora train --help`, `coalora compare --help`)."""
    from coalora.train.compare import CompareConfig
    from coalora.train.config import TrainConfig
    from coalora.train.protocol import Arm, ProtocolConfig, Unit
    from coalora.train.state import TrainState

    for cls in (TrainConfig, ProtocolConfig, CompareConfig, TrainState, Unit, Arm):
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in _field_docs(cls)]
        assert not missing, (cls.__name__, missing)
