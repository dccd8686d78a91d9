"""Eval specs and KL: windows cover every held-out document; KL is exact, cached and paired with NLL."""

from __future__ import annotations

import math

import pytest
import torch

from coalora.data import Corpus
from coalora.errors import CoaloraError
from coalora.evaluation import reference, spec
from coalora.evaluation.perplexity import perplexity
from coalora.models import ByteTokenizer


def _corpus(lengths=(3000, 1000, 2000, 500)):
    docs = tuple((f"play{i}", "".join(chr(97 + (i + j) % 26) for j in range(n))) for i, n in enumerate(lengths))
    return Corpus("local", "eval", docs)


def test_share_is_even_capped_and_spread():
    assert spec.share(8, [10, 10, 10, 10]) == [2, 2, 2, 2]
    assert spec.share(9, [10, 1, 10, 10]) == [3, 1, 3, 2]  # the short document gives its rest away
    assert spec.share(2, [5, 5, 5, 5]) == [1, 0, 1, 0]  # fewer windows than documents: spread out
    assert spec.share(100, [3, 0, 2]) == [3, 0, 2]  # never more than a document holds
    assert spec.grid_positions(10, 2) == [2, 7] and spec.grid_positions(3, 5) == [0, 1, 2]


def test_strided_windows_cover_every_document_and_record_positions(tmp_home):
    c = _corpus()
    ew = spec.select(c, ByteTokenizer(), 100, 8)
    assert ew.documents == ("play0", "play1", "play2", "play3") and ew.n == 8
    ids = {name: torch.tensor(list(text.encode())) for name, text in c.documents}
    for row, (doc, start) in zip(ew.windows, ew.positions):
        assert start % 100 == 0
        assert torch.equal(row, ids[doc][start : start + 100])  # the recorded position is where the window came from
    starts = [s for d, s in ew.positions if d == "play0"]
    assert starts == [700, 2200]  # spread over the document, not its opening
    full = spec.select(c, ByteTokenizer(), 100, None)
    assert full.n == 30 + 10 + 20 + 5  # the full mode reads every window of every document
    assert spec.select(c, ByteTokenizer(), 100, 8).key == ew.key != full.key


def test_prefix_spec_is_the_old_rule_and_unknown_specs_are_refused(tmp_home):
    c = _corpus()
    old = spec.select(c, ByteTokenizer(), 100, 3, spec="prefix-v0")
    assert old.documents == ("<joined>",) and torch.equal(old.windows[0], torch.tensor(list(c.text.encode()[:100])))
    with pytest.raises(CoaloraError, match="unknown eval spec"):
        spec.select(c, ByteTokenizer(), 100, 3, spec="random")
    with pytest.raises(CoaloraError, match="no document"):
        spec.select(c, ByteTokenizer(), 5000, 3)


def test_encoding_round_trip_is_within_half_a_step():
    lp = torch.log_softmax(torch.randn(7, 300) * 4, dim=-1)
    codes, meta = reference.encode(lp)
    back = reference.decode(codes, meta)
    step = (lp.max(-1).values - lp.min(-1).values) / 65535
    assert ((back - lp).abs() <= step[:, None] * 0.5 + 1e-6).all()


def test_kl_is_exact_zero_on_itself_and_matches_a_direct_computation(tmp_home, tiny_model):
    torch.manual_seed(0)
    windows = torch.randint(0, 256, (5, 24))
    ref = reference.build(tiny_model, windows, "k1", batch_size=2)
    assert ref.cached and len(list((tmp_home / "reference").glob("k1.*"))) == 2
    same = perplexity(tiny_model, windows, batch_size=2, progress=False, reference=ref)
    assert abs(same.kld) < 1e-3  # only the uint16 rounding of the cached reference
    with torch.no_grad():
        p_ref = torch.log_softmax(tiny_model(input_ids=windows).logits[:, :-1].float(), -1)
        for p in tiny_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        p_q = torch.log_softmax(tiny_model(input_ids=windows).logits[:, :-1].float(), -1)
    r = perplexity(tiny_model, windows, batch_size=2, progress=False, reference=ref)
    direct = float((p_ref.exp() * (p_ref - p_q)).sum(-1).mean())
    assert r.kld == pytest.approx(direct, rel=2e-3, abs=1e-4) and r.kld > 0.001
    # per-window sums add up to the means, and NLL agrees with the perplexity
    assert len(r.window_nll) == len(r.window_kld) == 5
    assert math.fsum(r.window_kld) / r.tokens == pytest.approx(r.kld)
    assert math.exp(math.fsum(r.window_nll) / r.tokens) == pytest.approx(r.ppl)
    # a second build reads the cache: no forward (the perturbed model would give other numbers)
    again = reference.build(tiny_model, windows, "k1")
    assert torch.allclose(again.logprobs(0, 5), ref.logprobs(0, 5))


def test_a_damaged_reference_is_rebuilt_and_a_mismatched_one_refused(tmp_home, tiny_model):
    windows = torch.randint(0, 256, (2, 16))
    reference.build(tiny_model, windows, "k2")
    (tmp_home / "reference" / "k2.codes.npy").write_bytes(b"not numpy")
    ref = reference.build(tiny_model, windows, "k2")
    assert perplexity(tiny_model, windows, progress=False, reference=ref).kld == pytest.approx(0.0, abs=1e-3)
    other = reference.build(tiny_model, torch.randint(0, 256, (2, 8)), "k3")
    with pytest.raises(CoaloraError, match="reference has shape"):
        perplexity(tiny_model, windows, progress=False, reference=other)


def test_a_reference_over_the_cap_is_computed_in_the_pass(tmp_home, tiny_model):
    windows = torch.randint(0, 256, (3, 16))
    ref = reference.build(tiny_model, windows, "k4", max_cache_bytes=10)
    assert not ref.cached and not (tmp_home / "reference").exists()
    assert perplexity(tiny_model, windows, progress=False, reference=ref).kld == pytest.approx(0.0, abs=1e-5)
