"""Downstream accuracy through EleutherAI's lm-evaluation-harness, on any configuration.

The paper reports zero-shot accuracy (its LLM claim: +1.45% average zero-shot accuracy over
LQ-LoRA on Qwen2.5-3B). :func:`run_tasks` runs lm-eval's tasks through its Hugging Face wrapper
(``lm_eval.models.huggingface.HFLM``) on the model *as it is in memory*: with a configuration
applied and the adapter generated for it attached, lm-eval scores exactly what coalora measures.

Tasks are lm-eval task names. Hub tasks (``hellaswag``, ``arc_easy``, ``piqa``, ``winogrande``,
``boolq``) need their datasets, so they work where the Hugging Face hub is reachable; offline,
the local task :data:`coalora.evaluation.nextline.TASK_NAME` (items shipped in ``data/tasks/``) always works.
Each result is one :class:`TaskMetric` per (task, metric) with lm-eval's standard error; the store
keeps them beside perplexity (:meth:`coalora.store.Store.add_task_metrics`).

For the app: :func:`run_for_config` (an :class:`~coalora.explorer.Explorer`, a configuration, task
names, a limit) measures and stores; :func:`stored_for_config` reads what is stored.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from coalora.errors import CoaloraError, short
from coalora.paths import TASKS_DIR

if TYPE_CHECKING:
    from torch import nn

    from coalora.quant.config import ModelQuantConfig

LOCAL_TASKS = TASKS_DIR
"""lm-eval task YAML shipped with coalora (``include_path`` of lm-eval's task manager)."""
HUB_TASKS = ("hellaswag", "arc_easy", "piqa", "winogrande", "boolq")
MAX_LIMIT = 100_000
APP_LIMIT = 100
"""Documents per configuration of the local task in the store's seed and in the app's Quick eval by
default, so that their rows form one group of the task front (rows of different limits never mix)."""


@dataclass(frozen=True)
class TaskMetric:
    """One lm-eval metric of one task on one model state."""

    task: str
    metric: str
    """lm-eval's metric name without the filter suffix, e.g. ``acc`` or ``acc_norm``."""
    value: float
    stderr: float | None
    """lm-eval's standard error of the metric (bootstrap or analytic); None when it reports none."""
    limit: int
    """Documents requested per task (0: all)."""
    samples: int
    """Documents actually scored."""
    lm_eval_version: str
    task_version: str
    """The task's YAML version, and for the local task the hash of its files."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_tasks(spec: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (stripped, without duplicates); one clear error when empty."""
    names = list(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    if not names:
        raise CoaloraError("--tasks needs at least one lm-eval task name, e.g. --tasks shakespeare_nextline")
    bad = [t for t in names if not all(ch.isalnum() or ch in "_-." for ch in t)]
    if bad:
        raise CoaloraError(f"task name {short(bad[0])} is not an lm-eval task name (letters, digits, _ - . only)")
    return names


def check_limit(limit: int | None) -> int:
    """``limit`` as stored (0 = every document); one clear error when out of range."""
    if limit is None:
        return 0
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise CoaloraError(f"--limit must be a whole number of documents in 1..{MAX_LIMIT}, got {short(limit)}")
    return limit


def _task_manager(names: list[str]):
    """lm-eval's task manager over coalora's local tasks, plus lm-eval's own ones unless every
    requested task is local (indexing lm-eval's thousands of YAML files takes seconds)."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=str(LOCAL_TASKS), include_defaults=False)
    if all(n in local.all_tasks for n in names):
        return local
    tm = TaskManager(include_path=str(LOCAL_TASKS))
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise CoaloraError(f"unknown lm-eval task {short(unknown[0])}; use a task lm-eval knows "
                           f"(e.g. {', '.join(HUB_TASKS)}) or the local {', '.join(local.all_tasks)}")
    return tm


def _task_version(task: str, version: Any) -> str:
    from coalora.evaluation import nextline

    v = str(version) if version is not None else "?"
    return f"{v}+{nextline.items_hash()}" if task == nextline.TASK_NAME else v


def run_tasks(model: nn.Module, tokenizer, tasks: list[str], *, limit: int | None = None,
              batch_size: int = 8) -> list[TaskMetric]:
    """Run lm-eval ``tasks`` zero-shot on ``model`` as it is (weights, hooks and adapters included).

    ``tokenizer``: the model's Hugging Face tokenizer (lm-eval's wrapper needs one; the byte
    tokenizer of the tiny test model is not). ``limit``: at most this many documents per task.
    Returns every (task, metric) lm-eval reports, with its standard error.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from transformers import PreTrainedTokenizerBase

    n = check_limit(limit)
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise CoaloraError("lm-eval tasks need a Hugging Face tokenizer; this model has none (use a real model)")
    tm = _task_manager(tasks)
    device = str(next(model.parameters()).device)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    t0 = time.perf_counter()
    try:
        out = lm_eval.simple_evaluate(lm, tasks=tasks, limit=n or None, task_manager=tm, num_fewshot=0,
                                      log_samples=False, bootstrap_iters=1000, verbosity="WARNING")
    except (ConnectionError, OSError) as e:
        raise CoaloraError(f"lm-eval could not load the data of {', '.join(tasks)} ({type(e).__name__}); hub tasks "
                           "need the Hugging Face hub, offline use the local task shakespeare_nextline") from None
    seconds = time.perf_counter() - t0
    return _metrics(out, tasks, n, lm_eval.__version__, seconds)


def _metrics(out: dict[str, Any], tasks: list[str], limit: int, version: str, seconds: float) -> list[TaskMetric]:
    """lm-eval's ``results`` dict as :class:`TaskMetric` rows (``"acc,none"`` -> ``acc``)."""
    rows = []
    for task in tasks:
        res = out["results"].get(task, {})
        samples = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
        tver = _task_version(task, out.get("versions", {}).get(task))
        for key, value in res.items():
            name, _, filt = key.partition(",")
            if "_stderr" in name or name == "sample_len" or filt not in ("none", "") or not isinstance(value, (int, float)):
                continue
            se = res.get(f"{name}_stderr,{filt}")
            se = float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None
            rows.append(TaskMetric(task, name, float(value), se, limit, samples, version, tver, seconds))
    return rows


def run_for_config(explorer, config: ModelQuantConfig, tasks: list[str], *, limit: int | None = None,
                   method: str = "coalora", batch_size: int = 8) -> list[TaskMetric]:
    """The app's call: lm-eval ``tasks`` on ``explorer``'s model under ``config`` (with its generated
    adapter for ``method="coalora"``, the quantized model alone for ``"none"``), stored when the
    store is writable. Holds the explorer's lock for the whole run."""
    import contextlib

    import torch

    explorer._check_method(method)
    if config.model != explorer.model_name:
        raise CoaloraError(f"configuration is for model {short(config.model)}, not {explorer.model_name!r}")
    coa = explorer.coa
    bare = coa.disabled() if method == "none" and coa is not None else contextlib.nullcontext()
    with explorer.lock, torch.no_grad(), bare:
        if method == "coalora":
            coa.set_config(config)
        else:
            explorer.applier.apply(config)
        rows = run_tasks(explorer.model, explorer.tokenizer, tasks, limit=limit, batch_size=batch_size)
    if not explorer.store.read_only:
        explorer.store.add_task_metrics(explorer.model_name, config, explorer.adapter_id if method == "coalora" else "",
                                        method, rows)
    return rows


def current_versions(task: str) -> tuple[str, str | None]:
    """(installed lm-eval version, ``task``'s version suffix that a stored row must end with, or None
    for a task whose version only lm-eval knows): the local task's rows carry the hash of its items."""
    from importlib.metadata import version

    from coalora.evaluation import nextline

    return version("lm-eval"), (f"+{nextline.items_hash()}" if task == nextline.TASK_NAME else None)


def cached_for_config(explorer, config: ModelQuantConfig, task: str, limit: int,
                      method: str = "coalora") -> list[dict[str, Any]]:
    """The stored rows of ``task`` on ``config`` measured with this ``limit`` (documents), the installed
    lm-eval and the task's current items, so measuring again would give the same numbers; else []."""
    lm_version, suffix = current_versions(task)
    rows = explorer.store.task_metrics(model=explorer.model_name, config_hash=config.hash, method=method, task=task,
                                       adapter_id=explorer.adapter_id if method == "coalora" else "",
                                       doc_limit=check_limit(limit))
    return [r for r in rows if r["lm_eval_version"] == lm_version
            and (suffix is None or str(r["task_version"]).endswith(suffix))]


def stored_for_config(explorer, config: ModelQuantConfig, method: str = "coalora") -> list[dict[str, Any]]:
    """Every stored task metric of ``config`` on ``explorer``'s model (and adapter, for ``coalora``): the
    store's rows (:meth:`coalora.store.Store.task_metrics`), oldest first."""
    return explorer.store.task_metrics(model=explorer.model_name, config_hash=config.hash, method=method,
                                       adapter_id=explorer.adapter_id if method == "coalora" else "")


def result_row(r: TaskMetric | dict[str, Any]) -> dict[str, Any]:
    """One task result as the app shows and a bundle records it, from a :class:`TaskMetric` just
    measured or a stored row (:meth:`coalora.store.Store.task_metrics`): ``{"task", "metric", "value",
    "stderr", "documents", "seconds", "lm_eval_version", "task_version"}``."""
    if isinstance(r, TaskMetric):
        r = {**r.to_dict(), "doc_limit": r.limit}
    return {"task": r["task"], "metric": r["metric"], "value": float(r["value"]), "stderr": r["stderr"],
            "documents": int(r["samples"]), "seconds": float(r["seconds"] or 0.0),
            "lm_eval_version": r["lm_eval_version"], "task_version": r["task_version"]}


def newest_for_config(explorer, config: ModelQuantConfig, method: str = "coalora") -> list[dict[str, Any]]:
    """The newest stored row per (task, metric, document limit) of ``config`` (:func:`result_row`),
    by task, most documents first, then metric."""
    newest = {(r["task"], r["metric"], r["doc_limit"]): result_row(r) for r in stored_for_config(explorer, config, method)}
    return sorted(newest.values(), key=lambda r: (r["task"], -r["documents"], r["metric"]))
