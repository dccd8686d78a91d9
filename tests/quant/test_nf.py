"""NF-k double quantization (coalora.quant.nf) against method.md 1.4, bitsandbytes and a naive reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coalora.errors import CoaloraError
from coalora.quant.config import ALL_CONFIGS, PRESETS, SCALE2_FORMAT_BITS, QuantConfig
from coalora.quant.nf import (
    NF_DELTA,
    SCALE2_DTYPES,
    QuantizedTensor,
    fake_quantize,
    nearest_code_index,
    nf_codebook,
    pack,
    packed_nbytes,
    quantize,
    unpack,
    zero_code,
)


def randw(*shape: int, seed: int = 0, std: float = 0.02) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def midpoints(k: int) -> torch.Tensor:
    c = nf_codebook(k)
    return (c[:-1] + c[1:]) / 2


# ------------------------------------------------------------------------------------------ codebook


def test_nf4_equals_bitsandbytes_table():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    theirs = bnbf.get_4bit_type("nf4", device="cpu").float()
    assert torch.allclose(nf_codebook(4), theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_codebook_properties(k):
    c = nf_codebook(k)
    assert c.dtype == torch.float32 and c.shape == (2**k,)
    assert bool((c[1:] > c[:-1]).all()), "strictly ascending"
    assert c[zero_code(k)].item() == 0.0
    assert c.max().item() == 1.0 and c.min().item() == -1.0
    assert int((c < 0).sum()) == 2 ** (k - 1) - 1 and int((c > 0).sum()) == 2 ** (k - 1)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_codebook_matches_scipy_formula(k):
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    half = 2 ** (k - 1)
    levels = np.concatenate([np.linspace(1 - NF_DELTA, 0.5, half), np.linspace(0.5, NF_DELTA, half + 1)[1:]])
    sigma = 1 / scipy_stats.norm.ppf(NF_DELTA)  # so that Phi_sigma^-1(delta) = 1
    expected = torch.tensor(scipy_stats.norm.ppf(levels) * sigma, dtype=torch.float32)
    assert torch.allclose(nf_codebook(k), expected, atol=1e-6)


def test_codebook_is_a_copy():
    nf_codebook(4)[0] = 123.0
    assert nf_codebook(4)[0].item() == -1.0


# ------------------------------------------------------------------------------------------ nearest code


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_nearest_code_equals_bucketize_on_edge_cases(k):
    m = midpoints(k)
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    cells = torch.linspace(-1, 1, 1025)
    y = torch.cat(
        [
            m,
            torch.nextafter(m, up),
            torch.nextafter(m, down),
            cells,
            torch.nextafter(cells, up),
            torch.nextafter(cells, down),
        ]
    )
    y = torch.cat([y, torch.tensor([-1.0, 1.0, 0.0, -3.0, 7.5, 1e-30, -1e-30])])
    assert torch.equal(nearest_code_index(y, k).long(), torch.bucketize(y.clamp(-1, 1), m))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1.5, 1.5, width=32), min_size=1, max_size=200), st.sampled_from([2, 3, 4, 8]))
def test_nearest_code_equals_bucketize(values, k):
    y = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(nearest_code_index(y, k).long(), torch.bucketize(y.clamp(-1, 1), midpoints(k)))


# ------------------------------------------------------------------------------------------ quantize


def reference_fake_quantize(w: torch.Tensor, c: QuantConfig) -> torch.Tensor:
    """method.md 1.4 literally, on ragged blocks/groups (no padding at all), Python loops."""
    flat = w.reshape(-1).float()
    blocks = [flat[i : i + c.B0] for i in range(0, flat.numel(), c.B0)]
    s = torch.stack([b.abs().max() for b in blocks])
    o = s.min()
    levels = 2**c.b1 - 1
    code, mids = nf_codebook(c.b0), midpoints(c.b0)
    out = []
    for g0 in range(0, len(blocks), c.B1):
        sp = s[g0 : g0 + c.B1] - o
        t = sp.max().to(SCALE2_DTYPES[c.b2]).float()
        q = torch.zeros_like(sp) if t == 0 else (sp * (levels / t)).round().clamp(0, levels)
        s_hat = q * (t / levels) + o
        for b, sh in zip(blocks[g0 : g0 + c.B1], s_hat):
            y = b / sh if sh > 0 else b
            out.append(code[torch.bucketize(y.clamp(-1, 1), mids)] * sh)
    return torch.cat(out).view(w.shape)


REF_CONFIGS = [
    PRESETS["nf4-dq"],
    QuantConfig(2, 2, "bf16", 16, 16),
    QuantConfig(3, 3, "fp16", 32, 64),
    QuantConfig(8, 4, "bf16", 64, 16),
]


@pytest.mark.parametrize("shape", [(7, 13), (192, 576), (3, 1000)])
@pytest.mark.parametrize("config", REF_CONFIGS, ids=str)
def test_matches_naive_reference_including_ragged_tail(shape, config):
    # (7, 13) and (3, 1000) are not multiples of any B0*B1: the reference never pads, so this shows
    # that padding changes nothing for the real weights.
    w = randw(*shape, seed=1)
    w.view(-1)[5] = 0.3  # an outlier
    assert torch.equal(fake_quantize(w, config), reference_fake_quantize(w, config))


def test_padding_does_not_pull_offset_to_zero():
    w = randw(192, 576) + 0.05  # no block is near zero, 110592 is not a multiple of 16384
    qt = quantize(w, PRESETS["nf4-dq"])
    assert qt.codes.numel() == 7 * 16384 and qt.numel == 110592
    assert qt.padding_overhead == pytest.approx(7 * 16384 / 110592 - 1)
    real_absmax = w.reshape(-1, 64).abs().amax(1)
    assert qt.offset.item() == real_absmax.min().item() > 0
    assert bool((qt.codes[110592:] == zero_code(4)).all()) and bool((qt.scale_codes[1728:] == 0).all())


@pytest.mark.parametrize("config", ALL_CONFIGS[::5], ids=str)
def test_fake_quantize_is_dequantize_of_quantize(config):
    w = randw(37, 29, seed=config.id)  # 1073 weights: padded under every config
    qt = quantize(w, config)
    assert qt.codes.dtype == torch.uint8 and qt.scale_codes.dtype == torch.uint8
    assert qt.scales2.dtype == SCALE2_DTYPES[config.b2] and qt.offset.dtype == torch.float32 and qt.offset.dim() == 0
    n_padded = qt.codes.numel()
    assert n_padded % (config.B0 * config.B1) == 0
    assert qt.scale_codes.numel() == n_padded // config.B0 and qt.scales2.numel() == n_padded // (
        config.B0 * config.B1
    )
    assert int(qt.codes.max()) < 2**config.b0 and int(qt.scale_codes.max()) < 2**config.b1
    out = fake_quantize(w, config)
    assert out.shape == w.shape and out.dtype == torch.float32
    assert torch.equal(out, qt.dequantize())


@pytest.mark.parametrize(
    "scale_config", [(8, "fp32", 64, 256), (2, "bf16", 16, 16), (4, "fp16", 32, 64), (3, "bf16", 64, 16)]
)
def test_error_falls_as_b0_grows(scale_config):
    w = randw(256, 512, seed=3)
    errors = [((fake_quantize(w, QuantConfig(b0, *scale_config)) - w) ** 2).sum().item() for b0 in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 50


@pytest.mark.parametrize(
    "config",
    [
        PRESETS["nf4-dq"],
        QuantConfig(2, 2, "bf16", 16, 16),
        QuantConfig(3, 3, "fp16", 32, 16),
        QuantConfig(8, 8, "bf16", 16, 64),
    ],
    ids=str,
)
def test_weights_on_the_code_grid_round_trip_exactly(config):
    # Block scales s_j = o + q_j * h with dyadic o and h, and t = (2^b1 - 1) * h exactly representable
    # in every b2 format: the double-quantized scale is then exactly s_j, and code * s_j is recovered.
    g = torch.Generator().manual_seed(config.id)
    levels, n_groups = 2**config.b1 - 1, 3
    n_blocks = n_groups * config.B1
    o, h = 2.0**-6, 2.0**-12
    q = torch.randint(0, levels + 1, (n_blocks,), generator=g)
    q[:: config.B1] = levels  # every group reaches t = levels * h
    q[1] = 0  # some block sits at the offset
    scales = o + q.double() * h
    idx = torch.randint(0, 2**config.b0, (n_blocks, config.B0), generator=g)
    idx[:, 0] = torch.where(torch.rand(n_blocks, generator=g) < 0.5, 0, 2**config.b0 - 1)  # |code| = 1 sets the absmax
    w = (nf_codebook(config.b0)[idx].double() * scales[:, None]).float().reshape(n_groups * 4, -1)
    qt = quantize(w, config)
    assert torch.equal(qt.codes.long().view(n_blocks, config.B0), idx)
    assert torch.equal(qt.scale_codes.long(), q)
    assert torch.equal(qt.dequantize(), w) and torch.equal(fake_quantize(w, config), w)


@pytest.mark.parametrize(
    "w",
    [torch.zeros(8, 64), torch.full((4, 64), 0.5), torch.cat([torch.zeros(16), torch.ones(48)])],
    ids=["all-zero", "constant", "zero-block"],
)
@pytest.mark.parametrize("config", [PRESETS["nf4-dq"], QuantConfig(2, 2, "bf16", 16, 16)], ids=str)
def test_degenerate_scales_give_no_nan(w, config):
    # all-zero blocks (s^ = 0) and groups whose scales all equal the offset (t = 0)
    out = fake_quantize(w, config)
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out, w)  # all these tensors are exactly representable
    assert torch.equal(quantize(w, config).dequantize(), w)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fn", [quantize, fake_quantize])
def test_non_finite_weights_rejected(fn, bad):
    w = randw(16, 64)
    w[3, 5] = bad
    with pytest.raises(CoaloraError, match="NaN or infinite"):
        fn(w, PRESETS["nf4-dq"])


@pytest.mark.parametrize(
    "w, match",
    [
        (torch.ones(4, 4, dtype=torch.int32), "floating-point"),
        (torch.zeros(0, 4), "empty"),
        ([1.0, 2.0], "torch.Tensor"),
    ],
)
def test_bad_inputs_rejected(w, match):
    with pytest.raises(CoaloraError, match=match):
        quantize(w, PRESETS["nf4-dq"])


def test_fp16_scale_overflow_rejected():
    w = torch.zeros(2, 64)
    w[0, 0], w[1, 0] = 1e5, 1.0
    with pytest.raises(CoaloraError, match="fp16"):
        fake_quantize(w, QuantConfig(4, 8, "fp16", 64, 16))


def test_other_float_dtypes_and_shapes_accepted():
    w = randw(4, 6, 64)
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        out = fake_quantize(w.to(dtype), PRESETS["nf4-dq"])
        assert out.dtype == torch.float32 and out.shape == w.shape
    assert fake_quantize(w.transpose(0, 2), PRESETS["nf4-dq"]).shape == (64, 6, 4)


def test_nf4_dq_mean_abs_error_matches_bitsandbytes():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    w = randw(1536, 576)
    q, state = bnbf.quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=True)
    theirs = (bnbf.dequantize_4bit(q, state) - w).abs().mean().item()
    ours = (fake_quantize(w, PRESETS["nf4-dq"]) - w).abs().mean().item()
    assert ours / theirs == pytest.approx(1.0, abs=0.1)  # measured 0.9995


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 90),
    log_std=st.floats(-6, 1),
    config_id=st.integers(0, len(ALL_CONFIGS) - 1),
    seed=st.integers(0, 2**16),
)
def test_property_round_trips(rows, cols, log_std, config_id, seed):
    config = ALL_CONFIGS[config_id]
    w = randw(rows, cols, seed=seed, std=10.0**log_std)
    qt = quantize(w, config)
    out = qt.dequantize()
    assert torch.equal(out, fake_quantize(w, config))
    assert bool(torch.isfinite(out).all())
    # a weight is never reconstructed beyond the largest dequantized scale
    assert out.abs().max() <= qt.scales().max()
    back = unpack(pack(qt))
    assert torch.equal(back.dequantize(), out)


# ------------------------------------------------------------------------------------------ packing


def assert_same(a: QuantizedTensor, b: QuantizedTensor) -> None:
    assert a.shape == b.shape and a.config == b.config
    for name in ("codes", "scale_codes", "scales2", "offset"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=str)
def test_pack_unpack_lossless(config):
    w = randw(5, 37, seed=config.id)  # 185 weights: padded under every config, odd tail for the 3-bit packer
    qt = quantize(w, config)
    packed = pack(qt)
    assert set(packed) == {"codes", "scale_codes", "scales2", "offset", "shape", "config"}
    assert packed["codes"].dtype == torch.uint8 and packed["codes"].numel() == math.ceil(185 / 8) * config.b0
    assert sum(t.numel() * t.element_size() for t in packed.values()) == packed_nbytes(qt)
    assert_same(unpack(packed), qt)


@pytest.mark.parametrize(
    "config", [PRESETS["nf4-dq"], QuantConfig(3, 3, "bf16", 16, 64), QuantConfig(2, 8, "fp16", 32, 16)], ids=str
)
def test_pack_survives_safetensors(tmp_path, config):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    qt = quantize(randw(192, 576), config)
    path = tmp_path / "q.safetensors"
    safetensors_torch.save_file(pack(qt), str(path))
    assert_same(unpack(safetensors_torch.load_file(str(path))), qt)


@pytest.mark.parametrize("shape", [(1536, 576), (192, 576)])
def test_packed_size_close_to_bits(shape):
    # Every config by the exact size formula (checked against real packing for a few): padding is
    # not stored, so even 192x576 (3.7% padding in memory) stays within 2%.
    w = randw(*shape)
    n = w.numel()
    for config in ALL_CONFIGS:
        qt = QuantizedTensor(torch.empty(0), torch.empty(0), torch.empty(0), torch.tensor(0.0), shape, config)
        metadata = 4 + 8 * len(shape) + 8 * 5
        assert packed_nbytes(qt) - metadata == pytest.approx(config.bits * n / 8, rel=0.02)
    for config in (PRESETS["nf4-dq"], PRESETS["nf3-dq"], QuantConfig(2, 3, "bf16", 16, 16)):
        packed = pack(quantize(w, config))
        nbytes = sum(t.numel() * t.element_size() for t in packed.values())
        assert nbytes == packed_nbytes(quantize(w, config))
        assert abs(nbytes - config.bits * n / 8) <= 0.02 * config.bits * n / 8 + 64


def test_bit_layout_is_lsb_first():
    w = torch.tensor([-1.0, 1.0] * 32)  # NF4 codes 0 and 15
    packed = pack(quantize(w, QuantConfig(4, 8, "fp32", 64, 16)))
    assert packed["codes"][:2].tolist() == [0xF0, 0xF0]  # c0 | c1 << 4


@pytest.mark.parametrize("missing", ["codes", "scale_codes", "scales2", "offset", "shape", "config"])
def test_unpack_missing_key(missing):
    packed = pack(quantize(randw(4, 64), PRESETS["nf4-dq"]))
    del packed[missing]
    with pytest.raises(CoaloraError, match=f"missing {missing}"):
        unpack(packed)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("codes", torch.zeros(3, dtype=torch.uint8), "codes should be"),
        ("scales2", torch.zeros(1, dtype=torch.bfloat16), "scales2 should be"),
        ("config", torch.tensor([5, 8, 2, 64, 256]), "b0=5"),
        ("config", torch.tensor([4, 8, 7, 64, 256]), "b2 index"),
        ("config", torch.tensor([4.0, 8, 2, 64, 256]), "config must be int64"),
        ("shape", torch.tensor([4, -64]), "shape must be"),
        ("offset", [0.5], "offset is a list"),
    ],
)
def test_unpack_malformed(key, value, match):
    packed = pack(quantize(randw(4, 64), PRESETS["nf4-dq"]))
    packed[key] = value
    with pytest.raises(CoaloraError, match=match):
        unpack(packed)


def test_pack_rejects_non_canonical_padding():
    qt = quantize(randw(3, 10), PRESETS["nf4-dq"])
    qt.codes[-1] = 0
    with pytest.raises(CoaloraError, match="padding"):
        pack(qt)


def test_b2_formats_store_second_level_scales():
    w = randw(64, 256)
    for b2, dtype in SCALE2_DTYPES.items():
        qt = quantize(w, QuantConfig(4, 8, b2, 64, 16))
        assert qt.scales2.dtype == dtype and qt.scales2.element_size() * 8 == SCALE2_FORMAT_BITS[b2]
