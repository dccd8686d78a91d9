"""CoA-LoRA training (method.md section 4, spec S4) with the Pareto-based search (S5) between rounds.

Each step takes one mini-batch, samples K configurations from the current training set, and
accumulates the gradients of their losses on that same batch (the sum, as the official code) into
the shared A, B and theta; then gradient clipping at 1.0 and a constant-LR AdamW step.

Written with ``accelerate``: ``accelerate launch --num_processes P -m coalora train ...`` runs it
data-parallel unchanged (each process takes 1/P of every batch; the data order and configuration
samples are functions of (seed, step), so P processes and one process with the combined batch see
the same data). The search runs on the main process and its result is broadcast.

Everything needed to resume exactly lives in one safetensors checkpoint (adapter, optimiser, RNG,
training set, search state, counters); a JSONL log records every step and search round.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coalora.adapter import AdapterConfig, CoALoRAModel
from coalora.config import MAX_BITS, MIN_BITS, ModelQuantConfig, QuantConfig
from coalora.errors import CoaloraError
from coalora.files import write_text_atomic

METHODS = ("coalora", "qlora", "lqlora", "shared")
SAMPLINGS = ("uniform", "excess")
BALANCES = ("sum", "equal")
CHECKPOINT = "checkpoint.safetensors"
LOG = "log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. Defaults are the CPU recipe for SmolLM2-135M (README, data/README.md)."""

    model: str = "smollm2-135m"
    """Registry name (`coalora models`) or a local Hugging Face checkpoint directory."""
    method: str = "coalora"
    """``coalora`` (theta + search); baselines: ``qlora`` (one config, Q = quant(W), plain LoRA),
    ``lqlora`` (one config, LQ-LoRA's decomposition W ~ Q + L1 L2 as base and init), ``shared`` (one
    plain LoRA over a fixed set of configs, one per step)."""
    rank: int = 8
    """LoRA rank: 8 is SmolLM2's hidden size (576) over 64, the paper's r/d for LLaMA-2-7B (64/4096)."""
    alpha: float = 16.0
    """LoRA scaling numerator: the LoRA term is scaled by alpha / rank."""
    init: str = "peft"
    """A, B initialisation: ``peft`` (Kaiming A, zero B) or ``lq`` (SVD of the residual at ``ref_preset``).
    peft did better in every 100-step comparison run (data/results/archive/ablations)."""
    ref_preset: str = "nf3-dq"
    """Reference configuration of the ``lq`` init (a preset or ``uniform:b0,b1,b2,B0,B1``)."""
    base: str = "quant"
    """What the adapter sits on: ``quant`` (Q_c(W)) or ``lq`` (LQ-LoRA's split Q_c(W - L1 L2) + L1 L2,
    computed per configuration when it is applied; coalora.apply.BaseSpec)."""
    lq_rank: int = 8
    """Rank of the ``lq`` base's low-rank term."""
    lq_iters: int = 1
    """Alternations of the ``lq`` base's split."""
    corpus: str = "shakespeare"
    """Training corpus (its train split): ``shakespeare``, a .txt/.jsonl file or directory, or ``hf:...``."""
    seqlen: int = 128
    """Tokens per training window."""
    batch_size: int = 4
    """Windows per step, summed over processes."""
    steps: int = 300
    """Optimizer steps (a resumed run may raise or lower it)."""
    lr: float = 1e-3
    """AdamW rate of A, B. The paper's is 1e-4; for a few hundred CPU steps 1e-3 does better for
    CoA-LoRA and for QLoRA alike (data/results/archive/ablations/lr-1e-3, data/results/archive/qlora-lr)."""
    theta_lr_scale: float = 10.0
    """theta's learning rate as a multiple of ``lr`` (A, B keep ``lr``); 1 is the paper's single rate.
    At 1e-4 theta barely moves in a few hundred steps and U stays near I (a plain shared LoRA); at a
    rate of 1e-2, U grows into a large per-layer gain that depends partly on the layer's configuration
    (data/results/archive/ablations, data/README.md)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm over all trained parameters (the log flags clipped steps)."""
    configs_per_step: int = 2
    """K, the configurations whose gradients each ``coalora`` step sums (``shared`` takes one per step)."""
    theta: bool = True
    """``coalora`` only: False fixes U = I (theta off, everything else the same): the ablation that isolates theta."""
    theta_context: bool = False
    """``coalora`` only: theta also sees the whole configuration (average bits, parameter share of
    2-bit matrices) beside each layer's own fields."""
    theta_error: bool = False
    """``coalora`` only: theta also sees each layer's quantization error under its configuration
    (log relative error from the error table, standardized) beside the layer's own fields."""
    sampling: str = "uniform"
    """How each step draws its K configurations from the training set: ``uniform``, or ``excess``
    (probability proportional to (probe loss - unquantized probe loss) ** sampling_power, refreshed at
    every search round: more steps where quantization hurts)."""
    sampling_power: float = 1.0
    """Exponent of the ``excess`` sampling weights (0 is uniform)."""
    sampling_uniform: float = 0.0
    """``excess`` only: the share of each draw's probability spread evenly over the training set,
    p = (1 - u) * excess / sum(excess) + u / N (0: excess alone, which starves configurations whose
    probe loss the adapter has brought to the unquantized model's)."""
    loss_balance: str = "sum"
    """How the K losses combine: ``sum`` (the official code) or ``equal`` (each configuration's loss
    divided by its own detached value, so a 10-nat 2-bit loss does not drown a 3-nat 6-bit one)."""
    budget_lo: float = 2.25
    """Lowest budget (average bits) of the initial training set and of the search's Pareto segments."""
    budget_hi: float = 7.25
    """Highest budget of the initial training set and of the search's segments."""
    initial_budgets: int = 50
    """Size of the initial training set: allocator solutions at evenly spaced budgets."""
    budgets: tuple[float, ...] = ()
    """Explicit budgets instead (baselines: one for ``qlora``, four for ``shared``)."""
    weighting: str = "fisher"
    """Error weighting of the allocator that builds the training set."""
    search_every: int = 100
    """Steps between search rounds; 0 freezes the training set (the paper's ablation)."""
    search_candidates: int = 5
    """Configurations each search round proposes (EHVI) and scores."""
    search_steps: int = 20
    """Coordinate-ascent steps of each proposal's acquisition optimisation."""
    segments: int = 40
    """Segments of the bit range in the segment-wise Pareto filter."""
    probe_windows: int = 4
    """Training-text windows held out to score configurations in the search (its f1)."""
    validation_windows: int = 0
    """Training windows held out before the probe windows (never trained on): the validation split
    that learning rates are tuned on (``coalora compare``'s grid), carved from the training text."""
    checkpoint_every: int = 50
    """Steps between checkpoints (one is always written at the end)."""
    cache_gib: float = 4.0
    """Size of the per-(matrix, config) cache of quantized weights, GiB."""
    seed: int = 0
    """Seed of the data order, configuration draws and LoRA initialisation."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CoaloraError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(self.validation_windows, int) or self.validation_windows < 0:
            raise CoaloraError(f"validation_windows must be a non-negative integer, got {self.validation_windows!r}")
        for name in ("rank", "seqlen", "batch_size", "steps", "configs_per_step", "initial_budgets",
                     "search_candidates", "search_steps", "segments", "probe_windows", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CoaloraError(f"{name} must be a positive integer, got {v!r}")
        if self.sampling not in SAMPLINGS:
            raise CoaloraError(f"unknown sampling {self.sampling!r}; use one of {', '.join(SAMPLINGS)}")
        if self.loss_balance not in BALANCES:
            raise CoaloraError(f"unknown loss_balance {self.loss_balance!r}; use one of {', '.join(BALANCES)}")
        if not (isinstance(self.sampling_power, (int, float)) and math.isfinite(self.sampling_power)
                and self.sampling_power >= 0):
            raise CoaloraError(f"sampling_power must be a non-negative number, got {self.sampling_power!r}")
        if not (isinstance(self.sampling_uniform, (int, float)) and 0 <= self.sampling_uniform <= 1):
            raise CoaloraError(f"sampling_uniform must be a number in [0, 1], got {self.sampling_uniform!r}")
        if self.search_every < 0:
            raise CoaloraError(f"search_every must be >= 0 (0 freezes the training set), got {self.search_every}")
        for name in ("lr", "theta_lr_scale", "alpha", "max_grad_norm", "cache_gib"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise CoaloraError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise CoaloraError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not MIN_BITS <= self.budget_lo < self.budget_hi <= MAX_BITS:
            raise CoaloraError(f"budget range [{self.budget_lo}, {self.budget_hi}] must lie inside "
                               f"{MIN_BITS:.4f}..{MAX_BITS:.4f} with lo < hi")
        for b in self.budgets:
            if not MIN_BITS <= b <= MAX_BITS:
                raise CoaloraError(f"budget {b} is outside the feasible range {MIN_BITS:.4f}..{MAX_BITS:.4f}")
        if self.method in ("qlora", "lqlora") and len(self.budgets) != 1:
            raise CoaloraError(f"method {self.method} trains one adapter for one configuration: give exactly one budget")
        if self.method == "shared" and len(self.budgets) == 1:
            raise CoaloraError("method shared trains one LoRA over several fixed configurations: give 2+ budgets "
                               "(or none: the initial training set of `initial_budgets` allocator solutions)")
        _ = self.adapter  # validates the adapter fields

    @property
    def adapter(self) -> AdapterConfig:
        return AdapterConfig(self.rank, self.alpha, self.init, self.ref_preset, base=self.base, lq_rank=self.lq_rank,
                             lq_iters=self.lq_iters, theta_context=self.theta_context,
                             theta_error=self.theta_error)

    @property
    def use_theta(self) -> bool:
        return self.method == "coalora" and self.theta

    @property
    def configs_each_step(self) -> int:
        """Configurations per step: K for ``coalora``, 1 for ``shared`` and the per-configuration baselines."""
        return self.configs_per_step if self.method == "coalora" else 1

    @property
    def token_passes(self) -> int:
        """Training compute of the whole run: forward + backward passes over training tokens,
        summed over configurations (steps * batch * seqlen * configurations per step)."""
        return self.steps * self.batch_size * self.seqlen * self.configs_each_step

    @property
    def searching(self) -> bool:
        return self.method == "coalora" and self.search_every > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["budgets"] = list(self.budgets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CoaloraError(f"unknown training option {unknown[0]!r}")
        d = dict(d)
        if "budgets" in d:
            d["budgets"] = tuple(float(b) for b in d["budgets"])
        return cls(**d)


@dataclass
class TrainState:
    """What changes during training (all of it is checkpointed)."""

    step: int = 0
    train_set: list[list[int]] = field(default_factory=list)
    """Config ids per matrix of every configuration in the current training set."""
    scores: dict[str, float] = field(default_factory=dict)
    """Probe loss by configuration hash, from the latest search round."""
    seconds: float = 0.0
    """Training wall time so far (search included), summed over resumed runs."""
    search_seconds: float = 0.0
    tokens: int = 0
    """Training token-passes so far (forward + backward, summed over configurations)."""
    probe_tokens: int = 0
    """Forward-only tokens the search spent scoring configurations on the probe windows."""
    trained_on: list[str] = field(default_factory=list)
    """Hashes of every configuration a training step has taken gradients on, in first-use order."""
    ref_probe: float | None = None
    """The unquantized model's probe loss (``excess`` sampling's floor)."""
    hv_ref: list[float] | None = None
    searches: int = 0


def _schedule_rows(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    """Global window indices ``[batch]`` of ``step``: a fresh permutation per epoch, a function of (seed, step)."""
    per_epoch = n // batch
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[j * batch : (j + 1) * batch]


def _sample_configs(seed: int, step: int, size: int, k: int, weights: list[float] | None = None) -> list[int]:
    """Indices of ``k`` distinct training configurations for ``step`` (uniform, or proportional to
    ``weights``): a function of (seed, step, weights), so a resumed run draws the same."""
    rng = np.random.default_rng([seed, step])
    if weights is None:
        return rng.choice(size, size=min(k, size), replace=False).tolist()
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    return rng.choice(size, size=min(k, int((p > 0).sum())), replace=False, p=p).tolist()


class Trainer:
    """Train (or resume) one run in ``out_dir``.

    Example:
        >>> Trainer(TrainConfig(steps=600), "runs/default").run()
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, accelerator=None,
                 log: Callable[[str], None] | None = None, progress: bool = True):
        from accelerate import Accelerator

        self.cfg = cfg
        self.out = Path(out_dir)
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        if cfg.batch_size % self.acc.num_processes:
            raise CoaloraError(f"batch_size {cfg.batch_size} must be divisible by the {self.acc.num_processes} processes")
        self._log = log or (lambda m: None)
        self.progress = progress and self.acc.is_main_process
        self.state = TrainState()
        self.lq_seconds = 0.0
        """LQ-LoRA: seconds its per-configuration split costs (computed now or read from the cache)."""

    # ---- set-up

    def _setup(self) -> None:
        from coalora import data
        from coalora.models import find_targets, load_model

        cfg = self.cfg
        self.model_raw, self.tok = load_model(cfg.model, device=str(self.acc.device))
        self.targets = find_targets(self.model_raw)
        # The allocator's error table needs the plain model: build the initial set before wrapping.
        # (LQ-LoRA also needs its configuration on resume: its base weights derive from it.)
        fresh = not self.checkpoint_path().exists()
        self._initial = self._initial_train_set() if fresh or cfg.method == "lqlora" else None
        self.coa = CoALoRAModel(self.model_raw, cfg.model, self.targets, cfg.adapter,
                                cache_bytes=int(cfg.cache_gib * (1 << 30)), seed=cfg.seed)
        if not cfg.use_theta:
            for p in self.coa.theta.parameters():
                p.requires_grad_(False)
        if cfg.method == "lqlora":
            self._lq_init(self._initial)
        ids = data.tokenize(self.tok, data.load_corpus(cfg.corpus, "train"))
        wins = data.windows(ids, cfg.seqlen)
        # The probe set (search scores) and the validation split are held out of the training windows.
        held = cfg.probe_windows + cfg.validation_windows
        if len(wins) < held + cfg.batch_size:
            raise CoaloraError(f"the training corpus has {len(wins)} windows of {cfg.seqlen} tokens; "
                               f"need at least {held + cfg.batch_size}")
        self.train_windows, self.probe = wins[:-held], wins[-cfg.probe_windows :]
        self.validation = wins[-held : -cfg.probe_windows] if cfg.validation_windows else wins[:0]
        self.params = self.coa.trainable_parameters()
        self.opt = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model, self.opt = self.acc.prepare(self.coa, self.opt)

    def _param_groups(self) -> list[dict[str, Any]] | list[torch.nn.Parameter]:
        """One group at the paper's single rate; two (A, B | theta) when theta's rate is scaled."""
        if self.cfg.theta_lr_scale == 1.0 or not self.cfg.use_theta:
            return self.params
        theta = {id(p) for p in self.coa.theta.parameters()}
        return [{"params": [p for p in self.params if id(p) not in theta]},
                {"params": [p for p in self.params if id(p) in theta], "lr": self.cfg.lr * self.cfg.theta_lr_scale}]

    def _initial_train_set(self) -> list[ModelQuantConfig]:
        from coalora.allocate import allocate_many
        from coalora.config import ALL_CONFIGS
        from coalora.sensitivity import model_error_table

        cfg = self.cfg
        budgets = list(cfg.budgets) or np.linspace(cfg.budget_lo, cfg.budget_hi, cfg.initial_budgets).tolist()
        table = model_error_table(self.model_raw, cfg.model, self.targets, cfg.weighting,
                                  tokenizer=self.tok, progress=self.progress)
        allocs = allocate_many(table.numpy(), [t.numel for t in self.targets], [c.bits for c in ALL_CONFIGS],
                               budgets, method="fast")
        configs, seen = [], set()
        for a in allocs:
            c = ModelQuantConfig.from_ids(cfg.model, self.targets, list(a.choice))
            if c.hash not in seen:  # neighbouring budgets can give the same solution
                seen.add(c.hash)
                configs.append(c)
        return configs

    @torch.no_grad()
    def _lq_init(self, configs: list[ModelQuantConfig]) -> None:
        """LQ-LoRA baseline: base Q = quant_c(W - L1 L2), LoRA = (L2, L1) / sqrt(s), per matrix.

        The split is deterministic in (weights, configuration, rank), so it is cached on disk
        (``$COALORA_HOME/lq``) with the seconds it took; ``self.lq_seconds`` is that cost whether
        this run computed it or read it, so a comparison can charge every run its real price."""
        from coalora.lq import cached_split

        (qc,) = configs
        s = self.cfg.adapter.scaling
        splits, self.lq_seconds = cached_split(self.coa.applier.originals, self.targets, qc, self.cfg.rank,
                                               progress=self.progress)
        for t in self.targets:
            w = self.coa.applier.originals[t.name]
            l1, l2 = splits[t.name]
            # The applier quantizes its "originals": W - L1 L2 makes it produce exactly Q.
            self.coa.applier.set_original(t.name, (w.float() - l1 @ l2).to(w.dtype))
            layer = self.coa.layers[t.name]
            layer.lora_A.copy_(l2 / s**0.5)
            layer.lora_B.copy_(l1 / s**0.5)

    def _config(self, ids: list[int]) -> ModelQuantConfig:
        return ModelQuantConfig.from_ids(self.cfg.model, self.targets, ids)

    # ---- checkpoints

    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def _torch_optimizer(self) -> torch.optim.Optimizer:
        """The AdamW itself (accelerate may wrap it)."""
        return getattr(self.opt, "optimizer", self.opt)

    def save(self) -> None:
        from coalora.checkpoint import optimizer_to_tensors, save_checkpoint

        if not self.acc.is_main_process:
            return
        opt_t, opt_meta = optimizer_to_tensors(self._torch_optimizer)
        tensors = {**self.coa.trainable_state(), **opt_t, "rng.torch": torch.get_rng_state()}
        meta = {
            "train_config": self.cfg.to_dict(),
            "adapter": self.cfg.adapter.to_dict(),
            "targets": [t.name for t in self.targets],
            "state": asdict(self.state),
            "optimizer": opt_meta,
        }
        save_checkpoint(self.checkpoint_path(), tensors, meta)

    def _resume(self) -> bool:
        from coalora.checkpoint import load_checkpoint, optimizer_from_tensors

        path = self.checkpoint_path()
        if not path.exists():
            return False
        tensors, meta = load_checkpoint(path)
        if not {"train_config", "targets", "state", "optimizer"} <= set(meta) or "rng.torch" not in tensors:
            raise CoaloraError(f"{path} is not a complete training checkpoint; delete it to start over")
        saved = TrainConfig.from_dict(meta["train_config"])
        # Everything that changes the result must match; steps may change (train longer, or stop earlier).
        free = ("steps", "checkpoint_every", "cache_gib")
        if not self.cfg.use_theta:  # the baselines have no theta: its rate changes nothing
            free += ("theta_lr_scale",)
        mismatch = [k for k, v in saved.to_dict().items() if k not in free and v != self.cfg.to_dict()[k]]
        if mismatch:
            k = mismatch[0]
            raise CoaloraError(f"{path} was trained with {k}={saved.to_dict()[k]!r}, not {self.cfg.to_dict()[k]!r}; "
                               "use another --out directory or the same options")
        if meta.get("targets") != [t.name for t in self.targets]:
            raise CoaloraError(f"{path} is for another model (its target modules differ)")
        self.coa.load_trainable_state({k: v for k, v in tensors.items() if k.startswith(("theta.", "lora."))})
        optimizer_from_tensors(self._torch_optimizer,
                               {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.state = TrainState(**meta["state"])
        return True

    def _append_log(self, record: dict[str, Any]) -> None:
        if self.acc.is_main_process:
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- the loop

    def run(self) -> TrainState:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self._setup()
        resumed = self._resume()
        if not resumed:
            configs = self._initial if self._initial is not None else self._initial_train_set()
            self.state.train_set = [list(c.ids) for c in configs]
            self._append_log({"event": "start", "train_config": cfg.to_dict(), "train_set": len(configs),
                              "bits": [round(c.avg_bits, 4) for c in configs], "processes": self.acc.num_processes})
        else:
            self._log(f"resuming {self.checkpoint_path()} at step {self.state.step}")
            self._truncate_log(self.state.step)
        self._trained = set(self.state.trained_on)
        if cfg.sampling == "excess" and self.state.ref_probe is None:
            self._score_train_set()
        world, rank = self.acc.num_processes, self.acc.process_index
        local = cfg.batch_size // world
        bar = tqdm(total=cfg.steps, initial=self.state.step, desc=f"train {cfg.method}", unit="step",
                   disable=not self.progress)
        self.coa.train()
        while self.state.step < cfg.steps:
            t0 = time.perf_counter()
            step = self.state.step
            rows = _schedule_rows(cfg.seed, step, len(self.train_windows), cfg.batch_size)
            x = self.train_windows[rows[rank * local : (rank + 1) * local]].to(self.acc.device)
            k = cfg.configs_each_step
            picks = _sample_configs(cfg.seed, step, len(self.state.train_set), k, self._sampling_weights())
            losses = {}
            for j, pick in enumerate(picks):
                qc = self._config(self.state.train_set[pick])
                # Sum (not mean) the K configs' gradients, as the official code; sync only on the last.
                ctx = self.acc.no_sync(self.model) if j < len(picks) - 1 else contextlib.nullcontext()
                with ctx:
                    loss = self._loss(qc, x)
                    self.acc.backward(loss / loss.detach() if cfg.loss_balance == "equal" else loss)
                losses[qc.hash] = float(self.acc.reduce(loss.detach(), reduction="mean"))
                if qc.hash not in self._trained:
                    self._trained.add(qc.hash)
                    self.state.trained_on.append(qc.hash)
            groups = self._group_norms()
            gnorm = self.acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            self.state.step += 1
            self.state.seconds += dt
            self.state.tokens += cfg.batch_size * cfg.seqlen * len(picks)
            self._append_log({"step": self.state.step, "loss": losses, "grad_norm": float(gnorm), **groups,
                              "clipped": bool(float(gnorm) > cfg.max_grad_norm),
                              "tokens_per_s": cfg.batch_size * cfg.seqlen * len(picks) / dt,
                              "seconds": round(self.state.seconds, 3)})
            bar.set_postfix(loss=f"{np.mean(list(losses.values())):.3f}")
            bar.update(1)
            if cfg.searching and self.state.step % cfg.search_every == 0 and self.state.step < cfg.steps:
                self._search_round()
            if self.state.step % cfg.checkpoint_every == 0 or self.state.step == cfg.steps:
                self.save()
        bar.close()
        self.acc.wait_for_everyone()
        return self.state

    def _group_norms(self) -> dict[str, float]:
        """Gradient norms of the LoRA factors and of theta before clipping (the log's per-group norms)."""
        theta = {id(p) for p in self.coa.theta.parameters()}
        out = {}
        for name, ps in (("grad_norm_lora", [p for p in self.params if id(p) not in theta]),
                         ("grad_norm_theta", [p for p in self.params if id(p) in theta])):
            gs = [p.grad.detach().float().norm() for p in ps if p.grad is not None]
            if gs:
                out[name] = float(torch.linalg.vector_norm(torch.stack(gs)))
        return out

    def _sampling_weights(self) -> list[float] | None:
        """``excess`` sampling: each training configuration's weight (its probe loss over the
        unquantized model's, to the power; a configuration without a score gets the mean weight)."""
        cfg = self.cfg
        if cfg.sampling == "uniform":
            return None
        floor = self.state.ref_probe or 0.0
        raw = [self.state.scores.get(self._config(ids).hash) for ids in self.state.train_set]
        known = [max(s - floor, 1e-3) ** cfg.sampling_power for s in raw if s is not None]
        fill = float(np.mean(known)) if known else 1.0
        w = [max(s - floor, 1e-3) ** cfg.sampling_power if s is not None else fill for s in raw]
        if cfg.sampling_uniform > 0:
            total = sum(w)
            w = [(1 - cfg.sampling_uniform) * x / total + cfg.sampling_uniform / len(w) for x in w]
        return w

    @torch.no_grad()
    def _score_train_set(self) -> None:
        """Probe losses of the whole training set and of the unquantized model (``excess`` sampling's start)."""
        with self.coa.disabled():
            self.coa.applier.restore()
            was = self.coa.training
            self.coa.eval()
            x = self.probe.to(self.acc.device)
            self.state.ref_probe = float(sum(float(self.model(input_ids=x[i : i + 4], labels=x[i : i + 4]).loss)
                                             * len(x[i : i + 4]) for i in range(0, len(x), 4)) / len(x))
            self.coa.train(was)
        pool = [self._config(ids) for ids in self.state.train_set]
        self.state.scores = {c.hash: self.probe_loss(c) for c in pool}
        self.state.probe_tokens += (len(pool) + 1) * self.probe.numel()

    def _loss(self, qc: ModelQuantConfig, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.use_theta:
            return self.model(input_ids=x, labels=x, config=qc).loss
        self.coa.applier.apply(qc)
        for layer in self.coa.layers.values():
            layer.U = None
        return self.model(input_ids=x, labels=x).loss

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (a crash between saves)."""
        path = self.out / LOG
        if not (self.acc.is_main_process and path.exists()):
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the crash
            if rec.get("step", 0) <= step and rec.get("after_step", 0) <= step:
                keep.append(line)
        write_text_atomic(path, "".join(f"{line}\n" for line in keep))

    # ---- search

    @torch.no_grad()
    def probe_loss(self, qc: ModelQuantConfig) -> float:
        """Mean LM loss of ``qc`` with the current adapter on the fixed probe windows (the search's f1)."""
        was = self.coa.training
        self.coa.eval()
        try:
            x = self.probe.to(self.acc.device)
            losses = [float(self._loss(qc, x[i : i + 4])) * len(x[i : i + 4]) for i in range(0, len(x), 4)]
        finally:
            self.coa.train(was)
        return sum(losses) / len(x)

    def _search_round(self) -> None:
        from accelerate.utils import broadcast_object_list

        payload = [None]
        if self.acc.is_main_process:
            payload = [self._search_main()]
        broadcast_object_list(payload)
        self.state.train_set, self.state.scores, self.state.hv_ref, dt, probed = payload[0]  # type: ignore[misc]
        self.state.probe_tokens += probed
        self.state.search_seconds += dt
        self.state.seconds += dt
        self.state.searches += 1

    def _search_main(self) -> tuple[list[list[int]], dict[str, float], list[float], float, int]:
        from coalora.pareto import hypervolume_2d, segment_pareto_filter
        from coalora.search import SearchSettings, propose

        cfg = self.cfg
        t0 = time.perf_counter()
        pool = [self._config(ids) for ids in self.state.train_set]
        scores = [self.probe_loss(c) for c in pool]
        bits = [c.avg_bits for c in pool]
        rnd = propose([c.index_matrix().numpy() for c in pool], bits, scores, [t.numel for t in self.targets],
                      SearchSettings(cfg.search_candidates, cfg.search_steps, seed=cfg.seed + self.state.step))
        new = [ModelQuantConfig(cfg.model, tuple(self.targets),
                                tuple(QuantConfig.from_index(tuple(int(v) for v in row)) for row in m))
               for m in rnd.candidates]
        new_scores = [self.probe_loss(c) for c in new]
        pool += new
        scores += new_scores
        bits += [c.avg_bits for c in new]
        keep = segment_pareto_filter(bits, scores, cfg.budget_lo, cfg.budget_hi, cfg.segments).tolist()
        if len(keep) < cfg.configs_per_step:
            keep = list(range(len(pool)))  # never starve the sampler
        hv_ref = self.state.hv_ref or [cfg.budget_hi + 0.25, 1.1 * max(scores)]
        pts = [(b, s) for b, s in zip(bits, scores)]
        hv = hypervolume_2d([pts[i] for i in keep], hv_ref)
        dt = time.perf_counter() - t0
        self._append_log({
            "event": "search", "after_step": self.state.step, "pool": len(pool), "kept": len(keep),
            "new": [{"bits": round(c.avg_bits, 4), "loss": s, "hash": c.hash, "kept": (len(pool) - len(new) + i) in keep}
                    for i, (c, s) in enumerate(zip(new, new_scores))],
            "encoding": rnd.encoding, "loo_rmse": rnd.loo_rmse, "ref_point": rnd.ref_point,
            "hypervolume": hv, "hv_ref": hv_ref, "seconds": dt,
        })
        self._log(f"search after step {self.state.step}: {len(new)} new, kept {len(keep)}/{len(pool)}, "
                  f"HV {hv:.4f}, encoding {rnd.encoding} (LOO RMSE {rnd.loo_rmse}) in {dt:.1f} s")
        probed = len(pool) * self.probe.numel()
        return ([list(pool[i].ids) for i in keep], {pool[i].hash: scores[i] for i in keep}, hv_ref, dt, probed)
