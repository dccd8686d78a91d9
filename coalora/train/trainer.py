"""The CoA-LoRA training loop (method.md section 4, spec S4) with search rounds (section 5) between steps.

Each step takes one mini-batch ``[batch, seqlen]``, samples K configurations from the current
training set (:mod:`coalora.train.sampling`), and accumulates the gradients of their losses on that
same batch (the sum, as the official code) into the shared A, B and theta; then gradient clipping at
``max_grad_norm`` and a constant-rate AdamW step. The baselines of section 6 run through the same
loop with theta frozen and U = I.

Written with ``accelerate``: ``accelerate launch --num_processes P -m coalora train ...`` runs it
data-parallel unchanged (each process takes 1/P of every batch; the data order and configuration
samples are functions of (seed, step), so P processes and one process with the combined batch see
the same data). The search runs on the main process and its result is broadcast.

Everything needed to resume exactly lives in one safetensors checkpoint (:mod:`coalora.train.state`);
a JSONL log (:mod:`coalora.train.step_log`) records every step and search round.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coalora.adapter.model import CoALoRAModel
from coalora.errors import CoaloraError
from coalora.quant.config import ModelQuantConfig
from coalora.train import sampling, step_log
from coalora.train.config import METHODS, TrainConfig
from coalora.train.state import CHECKPOINT, TrainState, read_checkpoint, write_checkpoint
from coalora.train.step_log import LOG

__all__ = ["CHECKPOINT", "LOG", "METHODS", "TrainConfig", "TrainState", "Trainer"]

PROBE_BATCH = 4
"""Probe windows per forward when scoring a configuration."""


class Trainer:
    """Train (or resume) one run in ``out_dir``.

    :meth:`run` does everything; :meth:`setup` and :meth:`resume` give the trained (or initial)
    model without training, for scripts that score a run.

    Example:
        >>> Trainer(TrainConfig(steps=600), "runs/default").run()
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, accelerator=None,
                 log: Callable[[str], None] | None = None, progress: bool = True, dtype: str = "float32"):
        from accelerate import Accelerator

        self.cfg = cfg
        self.dtype = dtype
        """dtype of the base model's originals and compute (float32, or bfloat16 for large models)."""
        self.out = Path(out_dir)
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        if cfg.batch_size % self.acc.num_processes:
            raise CoaloraError(f"batch_size {cfg.batch_size} must be divisible by the {self.acc.num_processes} processes")
        self._log = log or (lambda m: None)
        self.progress = progress and self.acc.is_main_process
        self.state = TrainState()
        self.lq_seconds = 0.0
        """LQ-LoRA: seconds its per-configuration split costs (computed now or read from the cache)."""
        self.initial_configs: list[ModelQuantConfig] | None = None
        """The allocator's initial training set, built by :meth:`setup` for a fresh run (and always for
        ``lqlora``, whose base derives from it); None when a checkpoint will be resumed instead."""
        self._ready = False

    # ---- set-up

    def setup(self) -> None:
        """Load the model and corpus, build the adapter, the data splits and the optimiser (once).

        The training text's windows ``[n, seqlen]`` are split, in order, into the training windows,
        ``validation_windows`` held out for tuning learning rates and ``probe_windows`` held out to
        score configurations in the search. A fresh run's :attr:`state` starts at the initial set.
        """
        from coalora.models import find_targets, load_model
        from coalora.train.initial import initial_train_set, lq_start

        if self._ready:
            return
        cfg = self.cfg
        self.model_raw, self.tok = load_model(cfg.model, dtype=self.dtype, device=str(self.acc.device))
        self.targets = find_targets(self.model_raw)
        # The allocator's error table needs the plain model: build the initial set before wrapping.
        fresh = not self.checkpoint_path().exists()
        from coalora.lqlora.sensitivity import cached_error_table

        # [N, 432]: the allocator's costs, and the search surrogate's second input (cached on disk)
        self.error_table = cached_error_table(self.model_raw, cfg.model, self.targets, cfg.weighting,
                                              tokenizer=self.tok, progress=self.progress).numpy()
        if fresh or cfg.method == "lqlora":
            self.initial_configs = initial_train_set(cfg, self.targets, self.error_table)
        self.coa = CoALoRAModel(self.model_raw, cfg.model, self.targets, cfg.adapter,
                                cache_bytes=int(cfg.cache_gib * (1 << 30)), seed=cfg.seed)
        if not cfg.use_theta:
            for p in self.coa.theta.parameters():
                p.requires_grad_(False)
        if cfg.method == "lqlora":
            (qc,) = self.initial_configs
            self.lq_seconds = lq_start(self.coa, self.targets, qc, cfg.rank, progress=self.progress)
        self._split_windows()
        self.params = self.coa.trainable_parameters()
        self.opt = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model, self.opt = self.acc.prepare(self.coa, self.opt)
        if fresh and self.initial_configs is not None:
            self.state.train_set = [list(c.ids) for c in self.initial_configs]
        self._ready = True

    def _split_windows(self) -> None:
        from coalora import data

        cfg = self.cfg
        ids = data.tokenize(self.tok, data.load_corpus(cfg.corpus, "train"))
        wins = data.windows(ids, cfg.seqlen)
        held = cfg.probe_windows + cfg.validation_windows
        if len(wins) < held + cfg.batch_size:
            raise CoaloraError(f"the training corpus has {len(wins)} windows of {cfg.seqlen} tokens; "
                               f"need at least {held + cfg.batch_size}")
        self.train_windows, self.probe = wins[:-held], wins[-cfg.probe_windows :]
        """Training windows ``[n_train, seqlen]`` and the probe windows ``[probe_windows, seqlen]``."""
        self.validation = wins[-held : -cfg.probe_windows] if cfg.validation_windows else wins[:0]
        """The validation split ``[validation_windows, seqlen]`` (never trained on)."""

    def _param_groups(self) -> list[dict[str, Any]] | list[torch.nn.Parameter]:
        """One group at the paper's single rate; two (A, B | theta) when theta's rate is scaled."""
        if self.cfg.theta_lr_scale == 1.0 or not self.cfg.use_theta:
            return self.params
        theta = {id(p) for p in self.coa.theta.parameters()}
        return [{"params": [p for p in self.params if id(p) not in theta]},
                {"params": [p for p in self.params if id(p) in theta], "lr": self.cfg.lr * self.cfg.theta_lr_scale}]

    def config(self, ids: list[int]) -> ModelQuantConfig:
        """The configuration of this run's model with config ids ``ids`` ``[N]`` (one per target)."""
        return ModelQuantConfig.from_ids(self.cfg.model, self.targets, ids)

    def training_configs(self) -> list[ModelQuantConfig]:
        """The current training set (after :meth:`setup`, :meth:`resume` or :meth:`run`); a
        per-configuration baseline's one configuration is its only member."""
        return [self.config(ids) for ids in self.state.train_set]

    # ---- checkpoints

    def checkpoint_path(self) -> Path:
        """Where this run's checkpoint lives."""
        return self.out / CHECKPOINT

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer:
        """The AdamW itself (accelerate may wrap it)."""
        return getattr(self.opt, "optimizer", self.opt)

    def save(self) -> None:
        """Write the checkpoint (main process only)."""
        if self.acc.is_main_process:
            write_checkpoint(self.checkpoint_path(), self.cfg, [t.name for t in self.targets], self.state,
                             self.coa.trainable_state(), self.torch_optimizer)

    def resume(self) -> bool:
        """Load the checkpoint into the set-up run if there is one (adapter, optimizer, RNG, state)."""
        from coalora.checkpoint import optimizer_from_tensors

        self.setup()
        path = self.checkpoint_path()
        if not path.exists():
            return False
        saved = read_checkpoint(path, self.cfg, [t.name for t in self.targets])
        self.coa.load_trainable_state(saved.adapter)
        optimizer_from_tensors(self.torch_optimizer, saved.optimizer, saved.optimizer_meta)
        torch.set_rng_state(saved.rng)
        self.state = saved.state
        return True

    def _append_log(self, record: dict[str, Any]) -> None:
        if self.acc.is_main_process:
            step_log.append_record(self.out / LOG, record)

    # ---- the loop

    def run(self) -> TrainState:
        """Train to ``cfg.steps`` (resuming from the checkpoint if one exists); returns the final state."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self._start()
        bar = tqdm(total=cfg.steps, initial=self.state.step, desc=f"train {cfg.method}", unit="step",
                   disable=not self.progress)
        self.coa.train()
        while self.state.step < cfg.steps:
            losses = self._step()
            bar.set_postfix(loss=f"{np.mean(list(losses.values())):.3f}")
            bar.update(1)
            if cfg.searching and self.state.step % cfg.search_every == 0 and self.state.step < cfg.steps:
                self._search_round()
            if self.state.step % cfg.checkpoint_every == 0 or self.state.step == cfg.steps:
                self.save()
        bar.close()
        self.acc.wait_for_everyone()
        return self.state

    def _start(self) -> None:
        """Set up, then resume (dropping log records after the checkpoint) or start a fresh log."""
        self.setup()
        if self.resume():
            self._log(f"resuming {self.checkpoint_path()} at step {self.state.step}")
            if self.acc.is_main_process:
                step_log.truncate_after(self.out / LOG, self.state.step)
        else:
            configs = self.initial_configs
            if configs is None:  # the checkpoint seen by setup() is gone: start fresh
                from coalora.train.initial import initial_train_set

                configs = initial_train_set(self.cfg, self.targets, self.error_table)
            self.state.train_set = [list(c.ids) for c in configs]
            if self.acc.is_main_process:  # a run that died before its first checkpoint left only its log
                (self.out / LOG).unlink(missing_ok=True)
            self._append_log({"event": "start", "train_config": self.cfg.to_dict(), "train_set": len(configs),
                              "bits": [round(c.avg_bits, 4) for c in configs], "processes": self.acc.num_processes})
        self._trained = set(self.state.trained_on)
        if self.cfg.sampling == "excess" and self.state.ref_probe is None:
            self._score_train_set()

    def _step(self) -> dict[str, float]:
        """One optimizer step on this process's share ``[batch / P, seqlen]`` of the step's batch;
        returns the loss of each sampled configuration by hash (averaged over processes)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        step = self.state.step
        world, rank = self.acc.num_processes, self.acc.process_index
        local = cfg.batch_size // world
        rows = sampling.schedule_rows(cfg.seed, step, len(self.train_windows), cfg.batch_size)
        x = self.train_windows[rows[rank * local : (rank + 1) * local]].to(self.acc.device)
        picks = sampling.sample_configs(cfg.seed, step, len(self.state.train_set), cfg.configs_each_step,
                                        self.sampling_weights())
        losses = {}
        for j, pick in enumerate(picks):
            qc = self.config(self.state.train_set[pick])
            # Sum (not mean) the K configs' gradients, as the official code; sync only on the last.
            ctx = self.acc.no_sync(self.model) if j < len(picks) - 1 else contextlib.nullcontext()
            with ctx:
                loss = self.loss(qc, x)
                # "equal" divides by the loss over the whole batch (all processes), so P processes
                # take the step one process takes with the combined batch.
                full = self.acc.reduce(loss.detach(), reduction="mean")
                self.acc.backward(loss / full if cfg.loss_balance == "equal" else loss)
            losses[qc.hash] = float(full)
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
        return losses

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

    def sampling_weights(self) -> list[float] | None:
        """Each training configuration's draw weight ``[len(train_set)]`` (None: uniform); for ``excess``,
        :func:`~coalora.train.sampling.excess_weights` of the latest probe losses, with ``sampling_uniform``
        of the probability spread evenly (:func:`~coalora.train.sampling.with_uniform_share`)."""
        if self.cfg.sampling == "uniform":
            return None
        raw = [self.state.scores.get(self.config(ids).hash) for ids in self.state.train_set]
        w = sampling.excess_weights(raw, self.state.ref_probe or 0.0, self.cfg.sampling_power)
        return sampling.with_uniform_share(w, self.cfg.sampling_uniform)

    @torch.no_grad()
    def _score_train_set(self) -> None:
        """Probe losses of the whole training set and of the unquantized model (``excess`` sampling's start)."""
        with self.coa.disabled():
            self.coa.applier.restore()
            was = self.coa.training
            self.coa.eval()
            x = self.probe.to(self.acc.device)
            self.state.ref_probe = float(sum(float(self.model(input_ids=x[i : i + PROBE_BATCH],
                                                              labels=x[i : i + PROBE_BATCH]).loss)
                                             * len(x[i : i + PROBE_BATCH]) for i in range(0, len(x), PROBE_BATCH))
                                         / len(x))
            self.coa.train(was)
        pool = self.training_configs()
        self.state.scores = {c.hash: self.probe_loss(c) for c in pool}
        self.state.probe_tokens += (len(pool) + 1) * self.probe.numel()

    def loss(self, qc: ModelQuantConfig, x: torch.Tensor) -> torch.Tensor:
        """Mean LM loss (scalar) of the windows ``x`` ``[b, seqlen]`` at ``qc``: with theta's U for
        ``coalora`` (in the autograd graph), with U = I (the plain LoRA) otherwise."""
        with self._autocast():
            if self.cfg.use_theta:
                return self.model(input_ids=x, labels=x, config=qc).loss
            self.coa.set_config(qc, theta=False)
            return self.model(input_ids=x, labels=x).loss

    def _autocast(self):
        """float32 (the default): no autocast, nothing changes. bf16 originals: autocast to bf16, so the
        float32 adapter (theta's U, the LoRA factors) meets the bf16 activations in bf16 matmuls."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        from coalora.models import torch_dtype

        return torch.autocast(device_type=self.acc.device.type, dtype=torch_dtype(self.dtype))

    # ---- search

    @torch.no_grad()
    def probe_loss(self, qc: ModelQuantConfig) -> float:
        """Mean LM loss of ``qc`` with the current adapter on the fixed probe windows (the search's f1)."""
        was = self.coa.training
        self.coa.eval()
        try:
            x = self.probe.to(self.acc.device)
            losses = [float(self.loss(qc, x[i : i + PROBE_BATCH])) * len(x[i : i + PROBE_BATCH])
                      for i in range(0, len(x), PROBE_BATCH)]
        finally:
            self.coa.train(was)
        return sum(losses) / len(x)

    def _search_round(self) -> None:
        """A search round on the main process, broadcast to the others, folded into :attr:`state`."""
        from accelerate.utils import broadcast_object_list

        from coalora.train.search_round import search_round

        payload: list[Any] = [None]
        if self.acc.is_main_process:
            rnd = search_round(self.cfg, self.targets, self.state.train_set, self.state.step, self.state.hv_ref,
                               self.probe_loss, table=self.error_table)
            self._append_log(rnd.record)
            self._log(rnd.message)
            payload = [(rnd.train_set, rnd.scores, rnd.hv_ref, rnd.seconds, rnd.probe_configs * self.probe.numel())]
        broadcast_object_list(payload)
        self.state.train_set, self.state.scores, self.state.hv_ref, dt, probed = payload[0]
        self.state.probe_tokens += probed
        self.state.search_seconds += dt
        self.state.seconds += dt
        self.state.searches += 1
