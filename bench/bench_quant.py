"""Quantizer throughput: ``fake_quantize`` (nf4-dq) vs bitsandbytes ``quantize_4bit``, and the error table.

Works on 210 SmolLM2-135M-shaped random matrices (30 blocks x q/k/v/o/gate/up/down, 106,168,320
parameters, std 0.02, seed 0), so it needs no model download. Each quantizer is warmed up once and
timed as the best of 3 passes over all matrices, in the same run on the same weights.

Usage: ``python bench/bench_quant.py [--json out.json] [--exact]``; prints one JSON object.
``--exact`` also times the exact (unsampled) error table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _timing import best_of  # noqa: E402

from coalora.lqlora.allocate import SMOLLM2_SHAPES  # noqa: E402
from coalora.lqlora.error_table import DEFAULT_SAMPLE_FRACTION, error_table  # noqa: E402
from coalora.quant.config import PRESETS  # noqa: E402
from coalora.quant.nf import fake_quantize  # noqa: E402

N_BLOCKS = 30
BLOCK_SHAPES = SMOLLM2_SHAPES  # (out, in) per decoder block: hidden 576, kv width 192, MLP 1536


def smollm2_like(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"layers.{i}.{name}": torch.randn(shape, generator=g) * 0.02
        for i in range(N_BLOCKS)
        for name, shape in BLOCK_SHAPES.items()
    }


def each(fn, weights: list[torch.Tensor]):
    """One call that applies ``fn`` to every weight (what :func:`best_of` times)."""
    return lambda: [fn(w) for w in weights]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--exact", action="store_true", help="also time the exact (unsampled) error table")
    args = parser.parse_args(argv)

    import bitsandbytes.functional as bnbf

    weights = list(smollm2_like().values())
    n_params = sum(w.numel() for w in weights)
    config = PRESETS["nf4-dq"]

    ours = best_of(each(lambda w: fake_quantize(w, config), weights), repeats=3)
    bnb = best_of(each(lambda w: bnbf.quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=True),
                       weights), repeats=3)

    t0 = time.perf_counter()
    error_table(weights, progress=False)
    table_s = time.perf_counter() - t0
    result = {
        "matrices": len(weights),
        "params": n_params,
        "threads": torch.get_num_threads(),
        "config": str(config),
        "fake_quantize_s": ours,
        "fake_quantize_params_per_s": n_params / ours,
        "bnb_quantize_4bit_s": bnb,
        "bnb_quantize_4bit_params_per_s": n_params / bnb,
        "throughput_ratio_vs_bnb": bnb / ours,
        "error_table_s": table_s,
        "error_table_sample_fraction": DEFAULT_SAMPLE_FRACTION,
    }
    if args.exact:
        t0 = time.perf_counter()
        error_table(weights, sample_fraction=1.0, progress=False)
        result["error_table_exact_s"] = time.perf_counter() - t0
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
