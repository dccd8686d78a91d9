"""The comparison harness (`coalora compare`): CoA-LoRA against its baselines (method.md 6, spec S7).

Runs, each resumable in ``<out>/runs/<name>`` (a long comparison can run in pieces):

* ``coalora``: one CoA-LoRA run (theta + search) of ``coalora_steps`` steps, K = 2 configs/step;
* ``qlora-<b>``: per evaluation budget, a fresh LoRA (PEFT init) on Q = quant_c(W), ``per_config_steps``;
* ``lqlora-<b>``: per evaluation budget, LQ-LoRA's decomposition as base and init, same steps;
* ``shared``: one plain LoRA over 4 fixed configurations (budgets 2.5, 3.0, 3.5, 4.0), one config
  per step, ``4 * per_config_steps`` steps (the same steps per configuration);
* ``none``: the quantized model alone.

Evaluation configurations: the allocator's solutions at ``eval_budgets`` that are not in CoA-LoRA's
final training set ("unseen"; the per-config baselines train on exactly these), ``seen`` members of
that set nearest to those budgets, and ``ood`` random configurations whose matrices mostly differ
from every training configuration ("out of distribution"). Every method is scored by held-out
perplexity; the hypervolume of each method's (avg bits, log ppl) points is computed against one
fixed reference point (recorded), normalised to [0, 1].
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coalora.errors import CoaloraError
from coalora.paths import RESULTS_DIR
from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig

SHARED_BUDGETS = (2.5, 3.0, 3.5, 4.0)


@dataclass(frozen=True)
class CompareConfig:
    model: str = "smollm2-135m"
    corpus: str = "shakespeare"
    """Training corpus (its train split)."""
    eval_corpus: str = "shakespeare"
    """Evaluation corpus (its eval split: the held-out plays for Shakespeare)."""
    rank: int = 8
    seqlen: int = 128
    batch_size: int = 4
    lr: float = 1e-4
    """AdamW rate of every method's A, B (the paper's 1e-4); CoA-LoRA's theta trains at lr * coalora_theta_lr_scale."""
    per_config_steps: int = 100
    coalora_steps: int = 100
    """K = 2 configs per step: 200 config-passes, a third of the six QLoRA runs' 600, so that with its
    two search rounds CoA-LoRA's wall time stays under half of theirs (the issue's 0.5x target)."""
    search_every: int = 40
    coalora_init: str = "peft"
    """CoA-LoRA's A, B initialisation: ``peft`` (Kaiming A, zero B) or ``lq`` (SVD of the nf3 residual)."""
    coalora_theta_lr_scale: float = 100.0
    """theta's learning rate as a multiple of the shared lr (1 = the paper's single rate)."""
    eval_budgets: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
    seen: int = 6
    ood: int = 20
    eval_windows: int = 8
    eval_seqlen: int = 256
    methods: tuple[str, ...] = ("coalora", "qlora", "lqlora", "shared", "none")
    hv_bits_ref: float = 7.25
    hv_ppl_ref: float = 1000.0
    """Points worse than this perplexity add nothing to the hypervolume."""
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.methods) - {"coalora", "qlora", "lqlora", "shared", "none"}
        if unknown:
            raise CoaloraError(f"unknown comparison method {sorted(unknown)[0]!r}")
        if "coalora" not in self.methods:
            raise CoaloraError("the comparison needs the coalora run (it defines seen/unseen configurations)")
        for name in ("per_config_steps", "coalora_steps", "eval_windows", "eval_seqlen", "seen"):
            if getattr(self, name) < 1:
                raise CoaloraError(f"{name} must be positive")

    def eval_windows_of(self, tokenizer):
        """The held-out evaluation windows ``[eval_windows, eval_seqlen]`` every method is scored on."""
        from coalora import data

        ids = data.tokenize(tokenizer, data.load_corpus(self.eval_corpus, "eval"))
        return data.windows(ids, self.eval_seqlen, self.eval_windows)

    def train_config(self, method: str, budgets: tuple[float, ...] = (), **kw):
        from coalora.train.trainer import TrainConfig

        common = dict(model=self.model, corpus=self.corpus, rank=self.rank, seqlen=self.seqlen, batch_size=self.batch_size,
                      lr=self.lr, seed=self.seed)
        if method == "coalora":
            return TrainConfig(method="coalora", init=self.coalora_init, steps=self.coalora_steps,
                               theta_lr_scale=self.coalora_theta_lr_scale,
                               search_every=self.search_every, **common, **kw)
        if method == "qlora":
            return TrainConfig(method="qlora", init="peft", budgets=budgets, steps=self.per_config_steps, **common, **kw)
        if method == "lqlora":
            return TrainConfig(method="lqlora", init="lq", budgets=budgets, steps=self.per_config_steps, **common, **kw)
        if method == "shared":
            return TrainConfig(method="shared", init="peft", budgets=SHARED_BUDGETS,
                               steps=self.per_config_steps * len(SHARED_BUDGETS), **common, **kw)
        raise CoaloraError(f"no training for method {method!r}")


@dataclass
class EvalPoint:
    method: str
    kind: str
    """``unseen``, ``seen``, ``ood`` or ``own`` (a per-config baseline on its own configuration)."""
    budget: float | None
    avg_bits: float
    config_hash: str
    ppl: float
    nll: float
    tokens: int


@dataclass
class CompareResult:
    config: dict[str, Any]
    points: list[EvalPoint] = field(default_factory=list)
    train_seconds: dict[str, float] = field(default_factory=dict)
    hypervolume: dict[str, float] = field(default_factory=dict)
    hv_reference: dict[str, Any] = field(default_factory=dict)
    device: str = ""


def far_random_configs(numels: list[int], train_ids: np.ndarray, n: int, seed: int,
                       min_diff: float = 0.9, bits_range: tuple[float, float] = (2.5, 6.0)) -> list[list[int]]:
    """Config ids of ``n`` random configurations ("out of distribution").

    Each draws a mix of weight bits (Dirichlet) so the set spans ``bits_range``, and is kept only if
    at least ``min_diff`` of its matrices differ from every training configuration ``train_ids``
    ``[m, N]``.
    """
    rng = np.random.default_rng(seed)
    b0_idx = np.array([c.index[0] for c in ALL_CONFIGS])
    cbits = np.array([c.bits for c in ALL_CONFIGS])
    w = np.asarray(numels, dtype=np.float64) / np.sum(numels)
    out: list[list[int]] = []
    for _ in range(200 * n):
        if len(out) == n:
            break
        p = rng.dirichlet(np.ones(4) * 0.7)
        ids = np.array([int(rng.choice(np.flatnonzero(b0_idx == rng.choice(4, p=p)))) for _ in numels])
        diff = (train_ids != ids[None]).mean(1).min() if len(train_ids) else 1.0
        if diff >= min_diff and bits_range[0] <= float(cbits[ids] @ w) <= bits_range[1]:
            out.append(ids.tolist())
    return out


def hypervolume_normalised(points: list[tuple[float, float]], bits_lo: float, bits_ref: float,
                           ppl_ref: float, ppl_best: float) -> float:
    """HV of (bits, log ppl) points with reference (bits_ref, log ppl_ref), divided by the box area."""
    from coalora.search.pareto import hypervolume_2d

    pts = [(b, math.log(p)) for b, p in points if math.isfinite(p)]
    area = (bits_ref - bits_lo) * (math.log(ppl_ref) - math.log(ppl_best))
    return hypervolume_2d(pts, (bits_ref, math.log(ppl_ref))) / area if pts else 0.0


def seen_gap(points: list[EvalPoint], method: str = "coalora") -> dict[str, Any]:
    """Seen vs unseen perplexity at matching bits: each seen point against the unseen curve.

    Seen and unseen configurations differ in their bits (2.454 vs 2.5), so their raw means are not
    comparable. The unseen points of ``method`` are interpolated linearly in (bits, log ppl), and each
    seen point inside their bit range is compared with the curve at its own bits: ``gap = ppl_seen /
    ppl_curve - 1`` (negative: the seen configuration scores better, i.e. memorised). Seen points
    outside the range would need extrapolation and are listed but not averaged.

    Returns ``{"mean": float | None, "mean_abs": ..., "points": [{"bits", "ppl", "curve", "gap"}]}``.
    """
    unseen = sorted((p.avg_bits, math.log(p.ppl)) for p in points if p.method == method and p.kind == "unseen")
    rows = []
    for p in sorted((q for q in points if q.method == method and q.kind == "seen"), key=lambda q: q.avg_bits):
        inside = len(unseen) >= 2 and unseen[0][0] <= p.avg_bits <= unseen[-1][0]
        curve = math.exp(float(np.interp(p.avg_bits, *zip(*unseen)))) if inside else None
        rows.append({"bits": p.avg_bits, "ppl": p.ppl, "curve": curve, "gap": p.ppl / curve - 1 if curve else None})
    gaps = [r["gap"] for r in rows if r["gap"] is not None]
    return {"mean": float(np.mean(gaps)) if gaps else None,
            "mean_abs": float(np.mean(np.abs(gaps))) if gaps else None, "points": rows}


def allocator_configs(trainer, budgets) -> dict[float, ModelQuantConfig]:
    """The fast allocator's configuration at each budget for ``trainer``'s model (the comparison's
    evaluation configurations), from the error table of the original weights (restore them first)."""
    from coalora.lqlora.allocate import allocate_many
    from coalora.lqlora.sensitivity import model_error_table

    t = trainer
    table = model_error_table(t.model_raw, t.cfg.model, t.targets, t.cfg.weighting, tokenizer=t.tok, progress=False)
    numels, bits = [x.numel for x in t.targets], [c.bits for c in ALL_CONFIGS]
    return {b: ModelQuantConfig.from_ids(t.cfg.model, t.targets,
                                         list(allocate_many(table.numpy(), numels, bits, [b], method="fast")[0].choice))
            for b in budgets}


def run_compare(cfg: CompareConfig, out: str | os.PathLike, log=print, progress: bool = True) -> CompareResult:
    import torch

    from coalora.evaluation.perplexity import perplexity
    from coalora.train.trainer import Trainer

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    res = CompareResult(config={**asdict(cfg), "eval_budgets": list(cfg.eval_budgets), "methods": list(cfg.methods)})

    # 1. CoA-LoRA first: its final training set decides what is "seen".
    coa_tr = Trainer(cfg.train_config("coalora"), out / "runs" / "coalora", log=log, progress=progress)
    coa_state = coa_tr.run()
    res.train_seconds["coalora"] = coa_state.seconds
    res.device = str(coa_tr.acc.device)
    targets = coa_tr.targets
    train_ids = np.array(coa_state.train_set)
    train_hashes = {coa_tr._config(list(ids)).hash for ids in coa_state.train_set}

    # 2. Evaluation configurations.
    coa_tr.coa.applier.restore()  # the table is of the original weights (and cached by their fingerprint)
    numels = [t.numel for t in targets]
    unseen: dict[float, ModelQuantConfig] = {}
    for b, c in allocator_configs(coa_tr, cfg.eval_budgets).items():
        if c.hash in train_hashes:
            log(f"note: the allocator's {b}-bit configuration is in the training set; it counts as seen, not unseen")
            continue
        unseen[b] = c
    pool = [coa_tr._config(list(ids)) for ids in coa_state.train_set]
    seen = []
    for b in cfg.eval_budgets[: cfg.seen]:
        best = min(pool, key=lambda c: abs(c.avg_bits - b))
        if best not in seen:
            seen.append(best)
    ood = [ModelQuantConfig.from_ids(cfg.model, targets, ids)
           for ids in far_random_configs(numels, train_ids, cfg.ood, cfg.seed)]
    eval_windows = cfg.eval_windows_of(coa_tr.tok)

    def score(method: str, kind: str, budget: float | None, qc: ModelQuantConfig, model) -> None:
        r = perplexity(model, eval_windows, batch_size=4, progress=False)
        res.points.append(EvalPoint(method, kind, budget, qc.avg_bits, qc.hash, r.ppl, r.nll, r.tokens))
        log(f"{method:8s} {kind:6s} {qc.avg_bits:.3f} bits: ppl {r.ppl:.3f}")

    groups = [("unseen", b, c) for b, c in unseen.items()] + [("seen", None, c) for c in seen] + [("ood", None, c) for c in ood]

    # 3. CoA-LoRA and the bare quantized model on every evaluation configuration.
    coa = coa_tr.coa
    coa.eval()
    for kind, b, qc in groups:
        with torch.no_grad():
            coa.set_config(qc)
        score("coalora", kind, b, qc, coa.model)
    if "none" in cfg.methods:
        with torch.no_grad(), coa.disabled():
            for kind, b, qc in groups:
                coa.applier.apply(qc)
                score("none", kind, b, qc, coa.model)
    del coa_tr, coa

    # 4. Baselines (each in its own resumable run).
    for method in ("qlora", "lqlora"):
        if method not in cfg.methods:
            continue
        total = 0.0
        for b, qc in unseen.items():
            tr = Trainer(cfg.train_config(method, (b,)), out / "runs" / f"{method}-{b}", log=log, progress=progress)
            st = tr.run()
            total += st.seconds
            (own,) = tr._initial if tr._initial is not None else [qc]
            tr.coa.eval()
            with torch.no_grad():
                tr.coa.applier.apply(own)
            score(method, "own", b, own, tr.coa.model)
            del tr
        res.train_seconds[method] = total
    if "shared" in cfg.methods:
        tr = Trainer(cfg.train_config("shared"), out / "runs" / "shared", log=log, progress=progress)
        st = tr.run()
        res.train_seconds["shared"] = st.seconds
        tr.coa.eval()
        for kind, b, qc in groups:
            with torch.no_grad():
                tr.coa.applier.apply(qc)
            score("shared", kind, b, qc, tr.coa.model)
        del tr

    # 5. Hypervolume per method over its points at the unseen budgets (own configs for per-config methods).
    ppl_best = min(p.ppl for p in res.points)
    res.hv_reference = {"bits_lo": 2.25, "bits_ref": cfg.hv_bits_ref, "ppl_ref": cfg.hv_ppl_ref,
                        "ppl_best": ppl_best, "space": "(avg bits, log ppl), both minimised; HV / box area"}
    for m in {p.method for p in res.points}:
        pts = [(p.avg_bits, p.ppl) for p in res.points if p.method == m and p.kind in ("unseen", "own")]
        res.hypervolume[m] = hypervolume_normalised(pts, 2.25, cfg.hv_bits_ref, cfg.hv_ppl_ref, ppl_best)
    write_results(res, out)
    return res


def write_results(res: CompareResult, out: Path) -> None:
    """``compare.json``, ``compare.parquet`` (via DuckDB) and ``compare.md``, each written atomically."""
    import duckdb
    import pandas as pd

    from coalora.files import atomic_file, write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    body = {"config": res.config, "device": res.device, "train_seconds": res.train_seconds,
            "hypervolume": res.hypervolume, "hv_reference": res.hv_reference, "seen_gap": seen_gap(res.points),
            "points": [asdict(p) for p in res.points], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(out / "compare.json", body)
    con = duckdb.connect()
    try:
        con.register("points", pd.DataFrame([asdict(p) for p in res.points]))
        with atomic_file(out / "compare.parquet") as tmp:
            con.execute(f"COPY points TO '{tmp}' (FORMAT PARQUET)")
    finally:
        con.close()
    write_text_atomic(out / "compare.md", markdown_table(res))


SHIPPED_RESULTS = RESULTS_DIR
"""Where the shipped comparison lives (``compare.json``, ``.parquet``, ``.md``; data/README.md)."""


def load_results(directory: str | os.PathLike = SHIPPED_RESULTS) -> dict[str, Any] | None:
    """A written comparison (``compare.json`` plus ``compare.md``'s table as ``"markdown"``), or None if absent."""
    import json

    d = Path(directory)
    if not (d / "compare.json").is_file():
        return None
    try:
        body = json.loads((d / "compare.json").read_text())
        if not isinstance(body, dict) or not isinstance(body.get("points"), list):
            raise ValueError("no points")
    except (OSError, ValueError) as e:
        raise CoaloraError(f"{d / 'compare.json'} is not a coalora comparison ({e}); rerun `coalora compare`") from None
    md = d / "compare.md"
    body["markdown"] = md.read_text() if md.is_file() else ""
    return body


def markdown_table(res: CompareResult) -> str:
    methods = sorted({p.method for p in res.points}, key=["coalora", "qlora", "lqlora", "shared", "none"].index)
    budgets = sorted({p.budget for p in res.points if p.budget is not None})
    lines = ["| budget | bits | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for b in budgets:
        row = [f"{b}"]
        pts = {p.method: p for p in res.points if p.budget == b}
        row.append(f"{next(iter(pts.values())).avg_bits:.3f}")
        row += [f"{pts[m].ppl:.2f}" if m in pts else "" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    for kind in ("seen", "ood"):
        row = [f"mean {kind}", ""]
        for m in methods:
            v = [p.ppl for p in res.points if p.method == m and p.kind == kind]
            row.append(f"{float(np.exp(np.mean(np.log(v)))):.2f}" if v else "")
        lines.append("| " + " | ".join(row) + " |")
    gaps = {m: seen_gap(res.points, m)["mean"] for m in methods}
    lines.append("| seen vs unseen gap, same bits | | "
                 + " | ".join(f"{100 * gaps[m]:+.2f}%" if gaps[m] is not None else "" for m in methods) + " |")
    lines.append("| hypervolume | | " + " | ".join(f"{res.hypervolume.get(m, float('nan')):.4f}" for m in methods) + " |")
    lines.append("| train seconds | | " + " | ".join(f"{res.train_seconds.get(m, 0.0):.0f}" for m in methods) + " |")
    return "\n".join(lines) + "\n"
