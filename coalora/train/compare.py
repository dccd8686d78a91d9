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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from coalora.errors import CoaloraError
from coalora.quant.config import ALL_CONFIGS, CONFIG_BITS, ModelQuantConfig
from coalora.train.compare_results import CompareResult, EvalPoint, seen_gap, write_results

__all__ = ["CompareConfig", "CompareResult", "EvalPoint", "allocator_configs", "far_random_configs",
           "hypervolume_normalised", "run_compare", "seen_gap", "write_results"]

HV_BITS_LO = 2.25
"""Lowest bits of the hypervolume's box (the initial training set's lowest budget)."""

SHARED_BUDGETS = (2.5, 3.0, 3.5, 4.0)
"""Shared-LoRA's fixed configurations: the allocator's solutions at these budgets (the official code's four)."""


@dataclass(frozen=True)
class CompareConfig:
    """The short comparison's options (scripts and the harness of :func:`run_compare`); the
    equal-compute protocol of ``coalora compare`` is :class:`~coalora.train.protocol.ProtocolConfig`."""

    model: str = "smollm2-135m"
    """Model to quantize (an offline name from `coalora models`)."""
    corpus: str = "shakespeare"
    """Training corpus (its train split)."""
    eval_corpus: str = "shakespeare"
    """Evaluation corpus (its eval split: the held-out plays for Shakespeare)."""
    rank: int = 8
    """LoRA rank of every method."""
    seqlen: int = 128
    """Training window length in tokens."""
    batch_size: int = 4
    """Training windows per step."""
    lr: float = 1e-4
    """AdamW rate of every method's A, B (the paper's 1e-4); CoA-LoRA's theta trains at lr * coalora_theta_lr_scale."""
    per_config_steps: int = 100
    """Steps of each per-configuration run (Shared-LoRA takes this many per configuration)."""
    coalora_steps: int = 100
    """CoA-LoRA's steps. At K = 2 configs per step: 200 config-passes, a third of the six QLoRA runs' 600,
    so that with its two search rounds CoA-LoRA's wall time stays under half of theirs."""
    search_every: int = 40
    """CoA-LoRA's steps between search rounds."""
    coalora_init: str = "peft"
    """CoA-LoRA's A, B initialisation: ``peft`` (Kaiming A, zero B) or ``lq`` (SVD of the nf3 residual)."""
    coalora_theta_lr_scale: float = 100.0
    """theta's learning rate as a multiple of the shared lr (1 = the paper's single rate)."""
    eval_budgets: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
    """Evaluation budgets: one unseen point each, and one per-configuration run each."""
    seen: int = 6
    """Training-set configurations scored (nearest to the first ``seen`` budgets)."""
    ood: int = 20
    """Random configurations far from the training set."""
    eval_windows: int = 8
    """Held-out windows per scored point."""
    eval_seqlen: int = 256
    """Held-out window length in tokens."""
    methods: tuple[str, ...] = ("coalora", "qlora", "lqlora", "shared", "none")
    """Methods to run (coalora is required: its training set defines seen and unseen)."""
    hv_bits_ref: float = 7.25
    """Hypervolume reference point's bits."""
    hv_ppl_ref: float = 1000.0
    """Points worse than this perplexity add nothing to the hypervolume."""
    seed: int = 0
    """Seed of every run and of the OOD draws."""

    def __post_init__(self) -> None:
        """Refuse unknown methods, a comparison without coalora, and non-positive counts."""
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
        """The :class:`~coalora.train.config.TrainConfig` of ``method``'s run (``budgets``: a
        per-configuration run's one budget); ``kw`` overrides training options."""
        from coalora.train.config import PAPER_RECIPE, TrainConfig

        common = dict(model=self.model, corpus=self.corpus, rank=self.rank, seqlen=self.seqlen, batch_size=self.batch_size,
                      lr=self.lr, seed=self.seed, **PAPER_RECIPE)
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


def far_random_configs(numels: list[int], train_ids: np.ndarray, n: int, seed: int,
                       min_diff: float = 0.9, bits_range: tuple[float, float] = (2.5, 6.0)) -> list[list[int]]:
    """Config ids of ``n`` random configurations ("out of distribution").

    Each draws a mix of weight bits (Dirichlet) so the set spans ``bits_range``, and is kept only if
    at least ``min_diff`` of its matrices differ from every training configuration ``train_ids``
    ``[m, N]``.
    """
    rng = np.random.default_rng(seed)
    b0_idx = np.array([c.index[0] for c in ALL_CONFIGS])
    cbits = np.array(CONFIG_BITS)
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


def allocator_configs(trainer, budgets) -> dict[float, ModelQuantConfig]:
    """The fast allocator's configuration at each budget for ``trainer``'s model (the comparison's
    evaluation configurations), from the error table of the original weights (restore them first)."""
    from coalora.lqlora.allocate import allocate_many
    from coalora.lqlora.sensitivity import cached_error_table

    t = trainer
    table = cached_error_table(t.model_raw, t.cfg.model, t.targets, t.cfg.weighting, tokenizer=t.tok, progress=False)
    numels, bits = [x.numel for x in t.targets], list(CONFIG_BITS)
    return {b: ModelQuantConfig.from_ids(t.cfg.model, t.targets,
                                         list(allocate_many(table.numpy(), numels, bits, [b], method="fast")[0].choice))
            for b in budgets}


def run_compare(cfg: CompareConfig, out: str | os.PathLike, log=print, progress: bool = True) -> CompareResult:
    """Train every method of ``cfg`` (each run resumable under ``<out>/runs``), score each on the
    evaluation configurations and write ``<out>/compare.{json,parquet,md}``."""
    from coalora.train.trainer import Trainer

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    res = CompareResult(config={**asdict(cfg), "eval_budgets": list(cfg.eval_budgets), "methods": list(cfg.methods)})
    # CoA-LoRA first: its final training set decides what is "seen".
    coa_tr = Trainer(cfg.train_config("coalora"), out / "runs" / "coalora", log=log, progress=progress)
    res.train_seconds["coalora"] = coa_tr.run().seconds
    res.device = str(coa_tr.acc.device)
    unseen, groups = evaluation_configs(cfg, coa_tr, log)
    score = _Scorer(res, cfg.eval_windows_of(coa_tr.tok), log)
    _score_coalora_and_none(cfg, coa_tr.coa, groups, score)
    del coa_tr
    _score_baselines(cfg, out, unseen, groups, score, log, progress)
    _hypervolumes(res, cfg)
    write_results(res, out)
    return res


def evaluation_configs(cfg: CompareConfig, coa_tr, log=print) -> tuple[dict[float, ModelQuantConfig], list[tuple]]:
    """The evaluation configurations of the trained CoA-LoRA run ``coa_tr`` (a :class:`Trainer`).

    Returns (unseen configurations by budget, every group ``(kind, budget | None, configuration)``):
    the allocator's solution at each budget that is not in the final training set (``unseen``), the
    training-set members nearest to the first ``seen`` budgets (``seen``), and ``ood`` random
    configurations whose matrices mostly differ from every training configuration.
    """
    pool = coa_tr.training_configs()
    train_hashes = {c.hash for c in pool}
    coa_tr.coa.applier.restore()  # the table is of the original weights (and cached by their fingerprint)
    unseen: dict[float, ModelQuantConfig] = {}
    for b, c in allocator_configs(coa_tr, cfg.eval_budgets).items():
        if c.hash in train_hashes:
            log(f"note: the allocator's {b}-bit configuration is in the training set; it counts as seen, not unseen")
            continue
        unseen[b] = c
    seen: list[ModelQuantConfig] = []
    for b in cfg.eval_budgets[: cfg.seen]:
        best = min(pool, key=lambda c: abs(c.avg_bits - b))
        if best not in seen:
            seen.append(best)
    numels = [t.numel for t in coa_tr.targets]
    ood = [coa_tr.config(ids) for ids in far_random_configs(numels, np.array(coa_tr.state.train_set), cfg.ood, cfg.seed)]
    groups = ([("unseen", b, c) for b, c in unseen.items()] + [("seen", None, c) for c in seen]
              + [("ood", None, c) for c in ood])
    return unseen, groups


class _Scorer:
    """Scores a model on the held-out windows ``[eval_windows, eval_seqlen]`` into ``res.points``."""

    def __init__(self, res: CompareResult, windows, log):
        self.res, self.windows, self.log = res, windows, log

    def __call__(self, method: str, kind: str, budget: float | None, qc: ModelQuantConfig, model) -> None:
        from coalora.evaluation.perplexity import perplexity

        r = perplexity(model, self.windows, batch_size=4, progress=False)
        self.res.points.append(EvalPoint(method, kind, budget, qc.avg_bits, qc.hash, r.ppl, r.nll, r.tokens))
        self.log(f"{method:8s} {kind:6s} {qc.avg_bits:.3f} bits: ppl {r.ppl:.3f}")


def _score_coalora_and_none(cfg: CompareConfig, coa, groups: list[tuple], score: _Scorer) -> None:
    """CoA-LoRA (theta's U per configuration) and the bare quantized model on every evaluation configuration."""
    import torch

    coa.eval()
    for kind, b, qc in groups:
        with torch.no_grad():
            coa.set_config(qc)
        score("coalora", kind, b, qc, coa.model)
    if "none" in cfg.methods:
        with torch.no_grad(), coa.disabled():
            for kind, b, qc in groups:
                coa.set_config(qc, theta=False)
                score("none", kind, b, qc, coa.model)


def _score_baselines(cfg: CompareConfig, out: Path, unseen: dict[float, ModelQuantConfig], groups: list[tuple],
                     score: _Scorer, log, progress: bool) -> None:
    """Train and score the baselines, each in its own resumable run: QLoRA / LQ-LoRA per unseen
    budget on their own configuration, Shared-LoRA on every evaluation configuration."""
    import torch

    from coalora.train.trainer import Trainer

    res = score.res
    for method in ("qlora", "lqlora"):
        if method not in cfg.methods:
            continue
        total = 0.0
        for b in unseen:
            tr = Trainer(cfg.train_config(method, (b,)), out / "runs" / f"{method}-{b}", log=log, progress=progress)
            total += tr.run().seconds
            (own,) = tr.training_configs()
            tr.coa.eval()
            with torch.no_grad():
                tr.coa.set_config(own, theta=False)
            score(method, "own", b, own, tr.coa.model)
            del tr
        res.train_seconds[method] = total
    if "shared" in cfg.methods:
        tr = Trainer(cfg.train_config("shared"), out / "runs" / "shared", log=log, progress=progress)
        res.train_seconds["shared"] = tr.run().seconds
        tr.coa.eval()
        for kind, b, qc in groups:
            with torch.no_grad():
                tr.coa.set_config(qc, theta=False)
            score("shared", kind, b, qc, tr.coa.model)
        del tr


def _hypervolumes(res: CompareResult, cfg: CompareConfig) -> None:
    """Each method's normalised hypervolume over its points at the unseen budgets (own configurations
    for the per-configuration methods), against one fixed reference point."""
    ppl_best = min(p.ppl for p in res.points)
    res.hv_reference = {"bits_lo": HV_BITS_LO, "bits_ref": cfg.hv_bits_ref, "ppl_ref": cfg.hv_ppl_ref,
                        "ppl_best": ppl_best, "space": "(avg bits, log ppl), both minimised; HV / box area"}
    for m in {p.method for p in res.points}:
        pts = [(p.avg_bits, p.ppl) for p in res.points if p.method == m and p.kind in ("unseen", "own")]
        res.hypervolume[m] = hypervolume_normalised(pts, HV_BITS_LO, cfg.hv_bits_ref, cfg.hv_ppl_ref, ppl_best)
