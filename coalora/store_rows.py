"""Rows of the results store: :class:`Evaluation` and the helpers that turn rows into SQL values."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from coalora import __version__
from coalora.errors import CoaloraError
from coalora.evaluation.spec import DEFAULT_SPEC


@dataclass(frozen=True)
class Evaluation:
    """One measured perplexity and KL divergence (token-level, non-overlapping windows picked by an
    eval spec: :mod:`coalora.evaluation.perplexity`)."""

    model: str
    config_hash: str
    method: str
    """``coalora``, ``qlora``, ``lqlora``, ``shared`` or ``none`` (the quantized model alone)."""
    adapter_id: str
    """Which adapter (file hash or run name); ``""`` for no adapter."""
    eval_set: str
    """Dataset id with its content hash, e.g. ``shakespeare:eval@3f2a9c1b``."""
    seqlen: int
    windows: int
    tokens: int
    ppl: float
    nll: float
    avg_bits: float
    seconds: float = 0.0
    version: str = __version__
    eval_spec: str = DEFAULT_SPEC
    """The rule that picked the windows (:mod:`coalora.evaluation.spec`); part of the key."""
    kld: float | None = None
    """Mean per-token KL(p_unquantized || p_model) in nats; None when not measured (old rows)."""
    window_nll: tuple[float, ...] = ()
    """Summed token NLL per window, in window order (for intervals over windows); () when not kept."""
    window_kld: tuple[float, ...] = ()
    """Summed token KL per window; () without KL."""

    def __post_init__(self) -> None:
        for name in ("ppl", "nll", "avg_bits", "seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v):
                raise CoaloraError(f"evaluation {name} must be a number, got {v!r}")
        if self.seqlen < 1 or self.windows < 1 or self.tokens < 1:
            raise CoaloraError("evaluation seqlen, windows and tokens must be positive")
        if not isinstance(self.eval_spec, str) or not self.eval_spec:
            raise CoaloraError(f"evaluation eval_spec must name an eval spec, got {self.eval_spec!r}")
        if self.kld is not None and (not isinstance(self.kld, (int, float)) or not math.isfinite(self.kld)):
            raise CoaloraError(f"evaluation kld must be a finite number or None, got {self.kld!r}")
        for name in ("window_nll", "window_kld"):
            v = getattr(self, name)
            if isinstance(v, str):  # a JSON list, as the store keeps it
                v = json.loads(v) if v else ()
            v = tuple(float(x) for x in (v or ()))
            if v and len(v) != self.windows:
                raise CoaloraError(f"evaluation {name} has {len(v)} entries for {self.windows} windows")
            object.__setattr__(self, name, v)

    @property
    def key(self) -> tuple:
        """The evaluation's key (:data:`coalora.store_schema.EVAL_KEY` order)."""
        return (self.model, self.config_hash, self.adapter_id, self.method, self.eval_set, self.seqlen, self.windows,
                self.eval_spec)


def eval_row(ev: Evaluation) -> dict[str, Any]:
    """``ev`` as the table's column values (the per-window sums as JSON lists, None when empty)."""
    row = asdict(ev)
    for name in ("window_nll", "window_kld"):
        row[name] = json.dumps(list(row[name])) if row[name] else None
    return row


def insert_config(cur, config) -> None:
    """Insert a :class:`~coalora.quant.config.ModelQuantConfig` into ``configs`` (a stored hash is kept)."""
    cur.execute("INSERT INTO configs (config_hash, model, avg_bits, ids) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [config.hash, config.model, config.avg_bits, json.dumps(list(config.ids))])


def where_clause(**filters) -> tuple[str, list]:
    """A ``WHERE`` clause (``""`` when every filter is None) and its arguments: one ``col = ?`` per given filter."""
    used = {k: v for k, v in filters.items() if v is not None}
    if not used:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in used), list(used.values())
