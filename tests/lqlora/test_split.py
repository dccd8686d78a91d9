"""LQ-LoRA decomposition: Q is exactly representable, and Q + L1 L2 beats plain quantization."""

from __future__ import annotations

import pytest
import torch

from coalora.errors import CoaloraError
from coalora.lqlora.split import lq_decompose
from coalora.quant.config import PRESETS, QuantConfig
from coalora.quant.nf import fake_quantize


@pytest.mark.parametrize("config", [PRESETS["nf2-dq"], PRESETS["nf3-dq"], QuantConfig(4, 4, "bf16", 32, 64)])
def test_lq_beats_plain_quantization_and_q_is_on_the_grid(config):
    g = torch.Generator().manual_seed(0)
    # low-rank structure plus noise, as in real weights
    w = (torch.randn(96, 8, generator=g) @ torch.randn(8, 128, generator=g)) * 0.05 + torch.randn(96, 128, generator=g) * 0.02
    res = lq_decompose(w, config, rank=8, iters=10)
    plain = torch.linalg.norm(w - fake_quantize(w, config))
    lq = torch.linalg.norm(w - res.q - res.l1 @ res.l2)
    assert lq < plain
    assert min(res.errors) == pytest.approx(float(lq), rel=1e-5)  # the best iterate is returned
    # Q is what the quantizer makes of W - L1 L2 (so it is exactly representable under config)
    torch.testing.assert_close(fake_quantize(w - res.l1 @ res.l2, config), res.q)
    assert res.l1.shape == (96, 8) and res.l2.shape == (8, 128)


def test_rank_larger_than_matrix_pads_with_zeros():
    w = torch.randn(4, 6) * 0.1
    res = lq_decompose(w, PRESETS["nf4-dq"], rank=8, iters=2)
    assert res.l1.shape == (4, 8) and (res.l1[:, 4:] == 0).all() and (res.l2[4:] == 0).all()


def test_bad_arguments():
    with pytest.raises(CoaloraError, match="iters >= 1"):
        lq_decompose(torch.randn(4, 4), PRESETS["nf4-dq"], rank=2, iters=0)
