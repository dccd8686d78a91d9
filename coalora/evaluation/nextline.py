"""The local lm-eval task ``shakespeare_nextline``: pick a play's true next line among four.

Each item shows the four lines of a held-out play (:data:`coalora.data.EVAL_WORKS`) that come
before a spoken line, and offers four continuations: that line and three other spoken lines drawn
from elsewhere in the same play (so vocabulary, names and style do not give the answer away; only
the flow of the verse and the dialogue does). It is a zero-shot multiple-choice task scored by
log-likelihood, like hellaswag or piqa in lm-evaluation-harness, over the same text that
perplexity is measured on, and it needs no download.

Items are made deterministically (:func:`make_items`): from the first ``ACT`` heading on, a
*spoken line* is a non-empty line of at least :data:`MIN_CHARS` characters that is neither a
stage direction (``[...]``), a speaker heading (``Hor.``, ``MACBETH.``) nor an act or scene
heading. Targets are :data:`PER_PLAY` spoken lines per play at evenly spaced positions;
distractors are drawn with ``random.Random(f"{seed}:{play}:{k}")`` among the play's spoken lines
more than :data:`EXCLUDE_NEAR` lines away from the target, and the answer's position among the
four is drawn from the same generator. Items are interleaved over the plays (Hamlet, Tempest,
Macbeth, Twelfth Night, Hamlet, ...), so the first ``--limit N`` items cover every play.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalora.paths import TASKS_DIR

if TYPE_CHECKING:
    from coalora.data import Corpus

TASK_NAME = "shakespeare_nextline"
TASK_DIR = TASKS_DIR / TASK_NAME
ITEMS_FILE = "items.jsonl"
PER_PLAY = 100
CONTEXT_LINES = 4
MIN_CHARS = 25
EXCLUDE_NEAR = 20
CHOICES = 4
SEED = 0
_HEADING = re.compile(r"^(ACT|SCENE)\b|^[A-Z][A-Za-z' ]{0,30}\.$")


def spoken_lines(text: str) -> list[tuple[int, str]]:
    """``(line index, line)`` of every spoken line of a play (see the module docstring); the index
    counts the play's non-empty lines from its first ``ACT`` heading."""
    lines = [s.strip() for s in text.splitlines()]
    start = next((i for i, s in enumerate(lines) if s.startswith("ACT ")), 0)
    kept = [s for s in lines[start:] if s]
    out = []
    for i, s in enumerate(kept):
        if len(s) >= MIN_CHARS and not s.startswith(("[", "_")) and not _HEADING.match(s) and not s.isupper():
            out.append((i, s))
    return out


def play_items(name: str, text: str, *, per_play: int = PER_PLAY, seed: int = SEED) -> list[dict[str, Any]]:
    """The items of one play: ``{"id", "play", "context", "choices" [4 str], "label" (0..3)}``."""
    from coalora.evaluation.spec import grid_positions

    lines = [s.strip() for s in text.splitlines()]
    start = next((i for i, s in enumerate(lines) if s.startswith("ACT ")), 0)
    kept = [s for s in lines[start:] if s]
    spoken = [(i, s) for i, s in spoken_lines(text) if i >= CONTEXT_LINES]
    items = []
    for k, g in enumerate(grid_positions(len(spoken), per_play)):
        pos, target = spoken[g]
        rng = random.Random(f"{seed}:{name}:{k}")
        pool = sorted({s for i, s in spoken if abs(i - pos) > EXCLUDE_NEAR and s != target})
        choices = rng.sample(pool, CHOICES - 1)
        label = rng.randrange(CHOICES)
        choices.insert(label, target)
        items.append({"id": f"{name}-{k:03d}", "play": name, "context": "\n".join(kept[pos - CONTEXT_LINES:pos]),
                      "choices": choices, "label": label})
    return items


def make_items(corpus: Corpus, *, per_play: int = PER_PLAY, seed: int = SEED) -> list[dict[str, Any]]:
    """Every play's items, interleaved play by play (item k of each play, then item k + 1)."""
    per = [play_items(name, text, per_play=per_play, seed=seed) for name, text in corpus.documents]
    return [p[k] for k in range(max(map(len, per))) for p in per if k < len(p)]


def items_text(items: list[dict[str, Any]]) -> str:
    """The items as JSON lines (the shipped ``items.jsonl``, byte for byte)."""
    return "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)


def write_items(corpus: Corpus, directory: str | Path = TASK_DIR) -> Path:
    """Regenerate ``items.jsonl`` (atomically) from ``corpus``, the held-out Shakespeare split."""
    from coalora.files import write_text_atomic

    return write_text_atomic(Path(directory) / ITEMS_FILE, items_text(make_items(corpus)))


def items_hash(directory: str | Path = TASK_DIR) -> str:
    """sha256 (12 hex digits) of the task's YAML and items: its version in stored results."""
    h = hashlib.sha256()
    for f in sorted(Path(directory).glob("*")):
        if f.suffix in (".yaml", ".jsonl", ".py") and f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]
