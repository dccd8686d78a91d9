from __future__ import annotations

import json

import pytest
import torch

from coalora import data
from coalora.errors import CoaloraError
from coalora.models import ByteTokenizer


def test_local_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    c = data.load_corpus(str(tmp_path), "eval")
    assert [t for _, t in c.documents] == ["first document", "second", "third"]
    assert c.text == "first document\n\nsecond\n\nthird"
    assert c.id.startswith(f"{tmp_path}:eval@")


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(CoaloraError, match=r"bad.jsonl:2: .*\"text\""):
        data.load_corpus(str(f))


@pytest.mark.parametrize("content", ["", "   \n\n  "])
def test_empty_corpus_is_rejected(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(CoaloraError, match="has no text"):
        data.load_corpus(str(f))


def test_unknown_source_and_split(tmp_path):
    with pytest.raises(CoaloraError, match="neither"):
        data.load_corpus(str(tmp_path / "nowhere"))
    with pytest.raises(CoaloraError, match="unknown split"):
        data.load_corpus("shakespeare", "test")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CoaloraError, match=".txt or .jsonl"):
        data.load_corpus(str(tmp_path / "x.csv"))


def test_windows_are_non_overlapping_prefixes():
    ids = torch.arange(10)
    w = data.windows(ids, 3)
    assert w.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert data.windows(ids, 3, max_windows=2).tolist() == w[:2].tolist()
    with pytest.raises(CoaloraError, match="fewer than one window"):
        data.windows(ids, 11)
    with pytest.raises(CoaloraError, match="at least 2"):
        data.windows(ids, 1)
    with pytest.raises(CoaloraError, match="at least 1"):
        data.windows(ids, 3, max_windows=0)


def test_tokenize_is_cached_and_deterministic(tmp_home, tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 20)
    c = data.load_corpus(str(tmp_path / "a.txt"))
    tok = ByteTokenizer()
    first = data.tokenize(tok, c)
    assert first.dtype == torch.int64 and first.numel() == len(c.text.encode())
    cached = list((tmp_home / "tokens").glob("*.npy"))
    assert len(cached) == 1
    assert torch.equal(data.tokenize(tok, c), first)
    cached[0].write_bytes(b"garbage")  # a corrupt cache entry is rebuilt
    assert torch.equal(data.tokenize(tok, c), first)


@pytest.mark.integration
def test_shakespeare_split_by_play():
    from coalora import assets

    assets.prepare_corpus(log=lambda m: None)
    train = data.load_corpus("shakespeare", "train")
    ev = data.load_corpus("shakespeare", "eval")
    eval_names = [n for n, _ in ev.documents]
    assert eval_names == list(data.EVAL_WORKS)
    assert {"hamlet", "tempest"} <= set(eval_names)
    assert not set(eval_names) & {n for n, _ in train.documents}
    assert len(train.documents) >= 30
