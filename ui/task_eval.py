"""lm-eval task accuracy in the app: Quick eval's option to score the local task on the selection,
and the selection's stored accuracies.

Quick eval scores :data:`ui.inputs.APP_TASK` (``shakespeare_nextline``: pick a play's true next line
among four, zero-shot, through lm-evaluation-harness; :mod:`coalora.evaluation.tasks`) on the first
*documents* items when that setting is above 0, or, when the front's y axis is that task's error
rate, on as many as the front's points were measured on (:data:`DEFAULT_DOCS` for a first point).
Results are stored beside perplexity (the store's ``task_metrics``) and a repeat with the same
documents, lm-eval and items is read back instead of measured again.
"""

from __future__ import annotations

from typing import Any

from coalora.evaluation.tasks import APP_LIMIT
from ui.figures import is_task
from ui.inputs import APP_TASK

DEFAULT_DOCS = APP_LIMIT
"""Documents scored when the y axis is the task's error rate, the documents setting is 0 and the task
front has no rows yet: the seed's count (about 40 s on 2 free CPU cores; lm-eval's stderr of an
accuracy near 0.5 is then 0.05)."""


def front_docs(ex: Any, method: str, cv: Any, metric: str) -> int | None:
    """The document limit of the rows the task front of ``metric`` is fitted on (None: no rows)."""
    rows = ex.front_service().task_group(ex.query(method, cv.seqlen, cv.windows, cv.corpus, metric))
    return rows[0]["doc_limit"] if rows else None


def docs_for(docs: int, metric: str, shown: int | None = None) -> int:
    """Documents Quick eval scores: the setting; when it is 0 and the task is on the y axis, the
    front's own limit ``shown`` (so the new point joins that front), else :data:`DEFAULT_DOCS`."""
    if docs or not is_task(metric):
        return docs
    return shown or DEFAULT_DOCS


def off_front_md(docs: int, shown: int | None) -> str:
    """Why a task result measured on ``docs`` documents is not on a task front of ``shown`` documents."""
    if shown is None or shown == docs:
        return ""
    return (f" The task front shows the results measured on {shown} documents; this {docs}-document result is "
            f"stored but not on it (set lm-eval task documents to {shown}, or 0, to add a point to it).")


def measure(ex: Any, cfg: Any, method: str, docs: int) -> tuple[list[dict[str, Any]], bool]:
    """(rows, cached): :data:`APP_TASK` on ``cfg`` under ``method`` over ``docs`` documents, read
    back when stored (:func:`coalora.evaluation.tasks.cached_for_config`), else measured and stored;
    rows as :func:`coalora.evaluation.tasks.result_row` makes them."""
    from coalora.evaluation import tasks

    hit = tasks.cached_for_config(ex, cfg, APP_TASK, docs, method)
    if hit:
        return [tasks.result_row(r) for r in hit], True
    return [tasks.result_row(m) for m in tasks.run_for_config(ex, cfg, [APP_TASK], limit=docs, method=method)], False


def accuracy_text(rows: list[dict[str, Any]]) -> str:
    """``acc 0.700 +- 0.073, acc_norm 0.425 +- 0.079`` per task and document count, ``; ``-joined."""
    groups: dict[tuple[str, int], list[str]] = {}
    for r in rows:
        se = f" +- {r['stderr']:.3f}" if r["stderr"] is not None else ""
        groups.setdefault((r["task"], r["documents"]), []).append(f"{r['metric']} **{r['value']:.3f}**{se}")
    return "; ".join(f"{task} ({n} documents): {', '.join(parts)}" for (task, n), parts in groups.items())


def result_md(rows: list[dict[str, Any]], cached: bool) -> str:
    """Quick eval's task line: the accuracies with lm-eval's stderr, and whether they were measured now."""
    if not rows:
        return ""
    how = "cached result" if cached else f"measured in {max(r['seconds'] for r in rows):.1f} s and stored"
    return (f"lm-eval, zero-shot: {accuracy_text(rows)} (chance 0.25; stderr is lm-eval's standard error), {how}.")
