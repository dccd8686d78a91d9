"""A synthetic allocation instance with SmolLM2-135M's matrix sizes, for tests and benchmarks (method.md 2.3)."""

from __future__ import annotations

import math

import numpy as np

SMOLLM2_SHAPES: dict[str, tuple[int, int]] = {
    "q_proj": (576, 576),
    "k_proj": (192, 576),
    "v_proj": (192, 576),
    "o_proj": (576, 576),
    "gate_proj": (1536, 576),
    "up_proj": (1536, 576),
    "down_proj": (576, 1536),
}  # SmolLM2-135M: 30 blocks of these 7 projections, N = 210


def synthetic_instance(seed: int = 0, blocks: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A realistic stand-in for measured LQ-LoRA costs, for tests and benchmarks.

    Returns ``(costs N x 432, numels N, bits 432)`` over :data:`coalora.quant.config.ALL_CONFIGS` with
    SmolLM2-135M's matrix sizes. Error falls ~4x per weight bit (``2^-2 b0``), grows with the block
    size B0 (outliers dominate larger blocks) and with coarse first-level scales (few b1 bits), and
    barely depends on B1 and the second-level format; each matrix has a log-normal sensitivity and
    each entry 5% log-normal noise.
    """
    from coalora.quant.config import ALL_CONFIGS, CONFIG_BITS

    rng = np.random.default_rng(seed)
    numels = np.array([o * i for _ in range(blocks) for o, i in SMOLLM2_SHAPES.values()], dtype=np.int64)
    bits = np.array(CONFIG_BITS)
    rel = np.array(
        [
            2.0 ** (-2 * c.b0)
            * (1 + 0.35 * math.log2(c.B0 / 16))
            * (1 + 8 * 4.0 ** (-c.b1))
            * (1 + 0.01 * math.log2(c.B1 / 16))
            * (1 + {"bf16": 2e-3, "fp16": 1e-3, "fp32": 0.0}[c.b2])
            for c in ALL_CONFIGS
        ]
    )
    sensitivity = rng.lognormal(0.0, 1.0, size=len(numels))
    noise = rng.lognormal(0.0, 0.05, size=(len(numels), len(rel)))
    costs = numels[:, None] * sensitivity[:, None] * rel[None, :] * noise
    return costs, numels, bits
