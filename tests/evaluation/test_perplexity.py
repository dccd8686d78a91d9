from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from coalora.errors import CoaloraError
from coalora.evaluation.perplexity import CONVENTION, perplexity


def test_matches_a_direct_computation(tiny_model):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 256, (3, 16), generator=g)
    r = perplexity(tiny_model, w, batch_size=2, progress=False)
    with torch.no_grad():
        logits = tiny_model(input_ids=w).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 256), w[:, 1:].reshape(-1))
    assert r.tokens == 3 * 15 and r.windows == 3 and r.seqlen == 16
    assert r.nll == pytest.approx(float(nll), rel=1e-5)
    assert r.ppl == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert r.convention == CONVENTION


def test_batch_size_does_not_change_the_result(tiny_model):
    w = torch.randint(0, 256, (5, 12), generator=torch.Generator().manual_seed(1))
    a = perplexity(tiny_model, w, batch_size=1, progress=False)
    b = perplexity(tiny_model, w, batch_size=5, progress=False)
    assert a.nll == pytest.approx(b.nll, rel=1e-5)


class Uniform(torch.nn.Module):
    """Uniform logits over V tokens: perplexity must be exactly V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        class Out:
            logits = torch.zeros(*input_ids.shape, self.vocab)
        return Out()


def test_uniform_model_has_perplexity_vocab():
    w = torch.randint(0, 50, (2, 10))
    assert perplexity(Uniform(50), w, progress=False).ppl == pytest.approx(50.0, rel=1e-6)


def test_seqlen_beyond_context_is_rejected(tiny_model):
    w = torch.zeros(1, 600, dtype=torch.long)
    with pytest.raises(CoaloraError, match="exceeds the model's context length 512"):
        perplexity(tiny_model, w, progress=False)


def test_bad_windows_shape(tiny_model):
    with pytest.raises(CoaloraError, match="seqlen>=2"):
        perplexity(tiny_model, torch.zeros(4, dtype=torch.long), progress=False)


@pytest.mark.integration
def test_default_model_perplexity_on_held_out_plays(default_model):
    from coalora.evaluation.perplexity import evaluate_corpus

    model, tok = default_model
    r = evaluate_corpus(model, tok, seqlen=128, windows=2, progress=False)
    assert 5 < r.ppl < 200
    assert r.tokens == 2 * 127 and r.dataset.startswith("shakespeare:eval@")


@pytest.mark.integration
def test_cli_eval_json_offline():
    proc = subprocess.run(
        [sys.executable, "-m", "coalora", "eval", "--model", "smollm2-135m", "--windows", "2", "--seqlen", "64",
         "--json", "--no-progress"],
        capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"ppl", "tokens", "seqlen"} <= out.keys() and out["seqlen"] == 64 and out["tokens"] == 2 * 63
