"""One model, its trained CoA-LoRA adapter, the results store and the front: what the app and the
CLI's ``front``, ``search``, ``export`` commands work through.

An :class:`Explorer` loads the model once and keeps it; every configuration is applied in place
(only changed matrices are re-quantized: :class:`coalora.adapter.apply.ConfigApplier`). Quick evaluations
are cached in the store by their full key, so asking twice costs nothing. Every evaluation reads
the windows of the default eval spec (:data:`coalora.evaluation.spec.DEFAULT_SPEC`) and measures the KL
divergence to the unquantized model next to the perplexity, against the unquantized model's
log-probs on those windows, computed once and cached on disk (:mod:`coalora.evaluation.reference`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from coalora.errors import CoaloraError, short
from coalora.evaluation.spec import DEFAULT_SPEC, EvalWindows
from coalora.limits import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_WINDOWS
from coalora.paths import DEFAULT_DIR
from coalora.quant.config import ModelQuantConfig
from coalora.store import Evaluation, Store

METHODS = ("coalora", "none")
"""Methods an explorer can evaluate itself (the baselines' points come from `coalora compare`)."""


def default_adapter(model_name: str) -> Path | None:
    """The shipped trained adapter of a registry model (``data/default/<model>-coalora.safetensors``), if any."""
    p = DEFAULT_DIR / f"{model_name.replace('/', '--')}-coalora.safetensors"
    return p if p.is_file() else None


def file_id(path: str | os.PathLike) -> str:
    """An adapter's id: sha256 of its file, 16 hex digits (so results never outlive their adapter)."""
    from coalora.files import sha256_file

    return sha256_file(path)[:16]


class Explorer:
    """A loaded model with its (optional) trained adapter, a store and a front service.

    ``adapter``: path of a trained CoA-LoRA file; ``"default"`` picks the shipped one (none for
    models without one: then only the ``none`` method, a quantization-only front, is available).
    """

    def __init__(self, model_name: str = "smollm2-135m", adapter: str | os.PathLike | None = "default",
                 store: Store | None = None, corpus: str = "shakespeare", device: str | None = None) -> None:
        from coalora import data
        from coalora.lqlora.sensitivity import weights_fingerprint
        from coalora.models import find_targets, load_model

        self.model_name = model_name
        self.model, self.tokenizer = load_model(model_name, device=device)
        self.targets = find_targets(self.model)
        self.weights_hash = weights_fingerprint(self.model, self.targets)
        self.store = store if store is not None else Store()
        self.corpus = data.load_corpus(corpus, "eval")
        self._corpora = {corpus: self.corpus}
        self.eval_spec = DEFAULT_SPEC
        """The eval spec of every evaluation this explorer measures and of every front it fits."""
        self._windows: dict[tuple[str, int, int], EvalWindows] = {}
        self._refs: dict[str, Any] = {}
        self.lock = threading.RLock()
        """Held while the model's weights are in use (apply + eval + export): one heavy job at a time."""
        path = default_adapter(model_name) if adapter == "default" else adapter
        self.adapter_path = Path(path) if path else None
        self.coa = None
        self.adapter_id = ""
        if self.adapter_path is not None:
            from coalora.adapter.trained import load_trained

            self.coa = load_trained(self.adapter_path, self.model, model_name, self.targets)
            self.coa.eval()
            self.coa.merge()  # evaluation and sampling at the dense model's speed
            self.adapter_id = file_id(self.adapter_path)
            applier = self.coa.applier
        else:
            from coalora.adapter.apply import ConfigApplier

            applier = ConfigApplier(self.model, model_name, self.targets)
        self.applier = applier
        self._front = None
        self._cand_index: dict[str, list[int]] | None = None
        if not self.store.read_only:
            self.store.add_model(model_name, self.weights_hash, len(self.targets), sum(t.numel for t in self.targets))
            if self.coa is not None:
                shown = self.adapter_path.resolve()
                if shown.is_relative_to(DEFAULT_DIR.parent.parent):  # the shipped file: a path that travels
                    shown = shown.relative_to(DEFAULT_DIR.parent.parent)
                self.store.add_adapter(self.adapter_id, model_name, "coalora", str(shown), self.adapter_id,
                                       {k: v for k, v in self.coa.trained_meta.items() if k in ("adapter", "train")})

    # ---- configurations

    @property
    def eval_set(self) -> str:
        """The default eval set's id (``source:split@fingerprint``)."""
        return self.corpus.id

    def eval_corpus(self, source: str | None = None):
        """The eval split of ``source`` (None: the default), loaded once."""
        from coalora import data

        if source is None:
            return self.corpus
        if source not in self._corpora:
            self._corpora[source] = data.load_corpus(source, "eval")
        return self._corpora[source]

    @property
    def methods(self) -> tuple[str, ...]:
        return METHODS if self.coa is not None else ("none",)

    def error_table(self) -> np.ndarray:
        from coalora.lqlora.sensitivity import cached_error_table

        with self.lock:
            self.applier.restore()  # the table is of the original weights
            return cached_error_table(self.model, self.model_name, self.targets, "fisher", tokenizer=self.tokenizer,
                                     progress=False).numpy()

    def front_service(self):
        from coalora.search.front import FrontService

        if self._front is None:
            self._front = FrontService(self.store, self.model_name, self.targets, self.error_table())
        return self._front

    def config(self, config_hash: str) -> ModelQuantConfig:
        """A configuration by hash: a stored one or a front candidate (an index, so a click is instant)."""
        stored = self.store.config_ids(config_hash)
        if stored is not None and stored[0] == self.model_name and len(stored[1]) == len(self.targets):
            return ModelQuantConfig.from_ids(self.model_name, self.targets, stored[1])
        row = self.candidate_index().get(config_hash)
        if row is not None:
            return ModelQuantConfig.from_ids(self.model_name, self.targets, row)
        return self.front_service().config(config_hash)  # one clear error

    def candidate_index(self) -> dict[str, list[int]]:
        """Config hash -> ids of every front candidate (built once: ~1 s for SmolLM2's 3,000)."""
        if self._cand_index is None:
            cids, _, _ = self.front_service().candidates()
            self._cand_index = {ModelQuantConfig.from_ids(self.model_name, self.targets, r).hash: r
                                for r in cids.tolist()}
        return self._cand_index

    def allocate(self, budget: float) -> ModelQuantConfig:
        """The fast allocator's configuration at ``budget`` average bits."""
        from coalora.lqlora.allocate import allocate_config

        c = allocate_config(self.front_service().table, self.model_name, self.targets, budget)
        self.candidate_index()[c.hash] = list(c.ids)  # so config(hash) finds it before it is stored
        return c

    def parse_config(self, obj: Any, where: str = "config") -> ModelQuantConfig:
        return ModelQuantConfig.from_json(obj, self.targets, model=self.model_name, where=where)

    # ---- adapters and evaluation

    def _check_method(self, method: str) -> None:
        if method not in self.methods:
            why = "" if self.coa is not None else f" ({self.model_name} has no trained CoA-LoRA adapter here)"
            raise CoaloraError(f"method {short(method)} cannot be evaluated here; use one of {', '.join(self.methods)}{why}")

    def adapter_for(self, config: ModelQuantConfig) -> tuple[dict, float]:
        """The plain LoRA for ``config`` and the milliseconds theta took (no weights touched)."""
        if self.coa is None:
            raise CoaloraError(f"{self.model_name} has no trained CoA-LoRA adapter, so there is no adapter to generate")
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            lora = self.coa.lora_for(config)
        return lora, (time.perf_counter() - t0) * 1000

    def apply_note(self, method: str) -> str:
        """What applying a configuration costs beyond quantizing, for a progress line ('' when nothing):
        the ``lq`` base computes LQ-LoRA's split of every matrix it has not cached (seconds per
        configuration, ``data/results/lq_base.json``)."""
        if method == "coalora" and self.coa is not None and self.coa.adapter_config.base == "lq":
            return "the LQ split of each matrix not cached yet (seconds per configuration, once)"
        return ""

    def eval_windows(self, seqlen: int, windows: int, corpus: str | None = None) -> EvalWindows:
        """The default spec's ``windows`` windows of ``seqlen`` tokens from an eval corpus (picked once)."""
        from coalora.evaluation.spec import select
        from coalora.models import context_length

        if not (2 <= seqlen <= context_length(self.model)):
            raise CoaloraError(f"seqlen must be in [2, {context_length(self.model)}], got {short(seqlen)}")
        if not (1 <= windows <= MAX_WINDOWS):
            raise CoaloraError(f"windows must be in [1, {MAX_WINDOWS}], got {short(windows)}")
        c = self.eval_corpus(corpus)
        key = (c.id, int(seqlen), int(windows))
        if key not in self._windows:
            self._windows[key] = select(c, self.tokenizer, int(seqlen), int(windows), self.eval_spec)
        return self._windows[key]

    def windows(self, seqlen: int, windows: int, corpus: str | None = None):
        """The token windows ``[n, seqlen]`` of :meth:`eval_windows`."""
        return self.eval_windows(seqlen, windows, corpus).windows

    def reference(self, ew: EvalWindows):
        """The unquantized model's log-probs on ``ew`` (:mod:`coalora.evaluation.reference`), built once.

        Building runs the model with its original weights and no adapter, so it holds the lock and
        puts the original weights back; the next evaluation re-applies its configuration. A
        reference too large to cache is refused: its log-probs would have to be recomputed during
        the evaluation, from a model that is then quantized.
        """
        import torch

        from coalora.evaluation import reference

        if ew.key in self._refs:
            return self._refs[ew.key]
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        size = reference.reference_bytes(ew.windows, vocab)
        if size > reference.DEFAULT_MAX_CACHE_BYTES:
            per = reference.reference_bytes(ew.windows[:1], vocab)
            raise CoaloraError(f"KL divergence over {ew.n} windows x {ew.seqlen} tokens needs a {size / 2**30:.1f} GiB "
                               f"reference, over the {reference.DEFAULT_MAX_CACHE_BYTES / 2**30:.0f} GiB cache limit; "
                               f"use at most {reference.DEFAULT_MAX_CACHE_BYTES // per} windows here, or "
                               "`coalora eval --full` for every window")
        bare = self.coa.disabled() if self.coa is not None else contextlib.nullcontext()
        with self.lock, torch.no_grad(), bare:
            self.applier.restore()  # the reference is the original weights without the adapter
            ref = reference.build(self.model, ew.windows, reference.key(self.model_name, self.weights_hash, ew.key))
        self._refs[ew.key] = ref
        return ref

    def cached(self, config: ModelQuantConfig, method: str = "coalora", seqlen: int = 256, windows: int = 8,
               corpus: str | None = None) -> Evaluation | None:
        """The stored evaluation of ``config`` under this explorer's eval spec, or None."""
        return self.store.find_evaluation(self.model_name, config.hash, self.adapter_id if method == "coalora" else "",
                                          method, self.eval_corpus(corpus).id, seqlen, windows, self.eval_spec)

    def evaluate(self, config: ModelQuantConfig, method: str = "coalora", seqlen: int = 256, windows: int = 8,
                 progress: Callable[[float], None] | bool = False, corpus: str | None = None) -> tuple[Evaluation, bool]:
        """Perplexity and KL to the unquantized model of ``config`` (with the adapter for
        ``coalora``) on the default spec's windows; returns (evaluation, from_cache).

        ``progress``: a tqdm bar (True), none (False) or a callback given the finished fraction.
        The result is stored (when the store is writable), so the next call is a lookup.
        """
        import torch

        from coalora.adapter.apply import BaseSpec
        from coalora.evaluation.perplexity import perplexity

        self._check_method(method)
        if config.model != self.model_name:
            raise CoaloraError(f"configuration is for model {short(config.model)}, not {self.model_name!r}")
        hit = self.cached(config, method, seqlen, windows, corpus)
        if hit is not None:
            return hit, True
        ew = self.eval_windows(seqlen, windows, corpus)
        # "none" on a model with an adapter: the same weights with the LoRA path switched off
        bare = self.coa.disabled() if method == "none" and self.coa is not None else contextlib.nullcontext()
        with self.lock, torch.no_grad():
            ref = self.reference(ew)
            with bare:
                t0 = time.perf_counter()
                if method == "coalora":
                    self.coa.set_config(config)
                else:  # the quantized model alone: plain Q_c(W), whatever base the adapter sits on
                    self.applier.apply(config, base=BaseSpec())
                # a callback (the app's progress bar) hears of every window; else batches of 4
                r = perplexity(self.model, ew.windows, dataset=ew.dataset, progress=progress, reference=ref,
                               spec=ew.spec, batch_size=1 if callable(progress) else 4)
                seconds = time.perf_counter() - t0
        ev = Evaluation(self.model_name, config.hash, method, self.adapter_id if method == "coalora" else "",
                        ew.dataset, int(seqlen), int(r.windows), r.tokens, r.ppl, r.nll, config.avg_bits, seconds,
                        eval_spec=ew.spec, kld=r.kld, window_nll=r.window_nll, window_kld=r.window_kld)
        if not self.store.read_only:
            self.store.add_evaluation(ev, config=config)
        return ev, False

    def sample(self, config: ModelQuantConfig, prompt: str, max_new_tokens: int = 32,
               method: str = "coalora") -> dict[str, Any]:
        """Greedy continuations of ``prompt``: under ``config`` (with the adapter for ``coalora``) and
        from the unquantized model, with the seconds each took.

        Returns ``{"quantized": str, "dense": str, "quantized_s": float, "dense_s": float}``.
        """
        import torch

        from coalora.adapter.apply import BaseSpec

        self._check_method(method)
        if not isinstance(prompt, str) or not prompt.strip():
            raise CoaloraError("prompt is empty; type a few words to continue")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise CoaloraError(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if not (1 <= int(max_new_tokens) <= MAX_NEW_TOKENS):
            raise CoaloraError(f"max new tokens must be in [1, {MAX_NEW_TOKENS}], got {short(max_new_tokens)}")
        ids = torch.tensor([self.tokenizer.encode(prompt)], dtype=torch.long)
        device = next(self.model.parameters()).device
        ids = ids.to(device)

        def run() -> tuple[str, float]:
            t0 = time.perf_counter()
            pad = getattr(self.tokenizer, "eos_token_id", None)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(max_new_tokens),
                                      do_sample=False, pad_token_id=pad if pad is not None else 0)
            return self.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True), time.perf_counter() - t0

        def bare():  # a fresh context each time: a generator context manager is entered only once
            return self.coa.disabled() if self.coa is not None else contextlib.nullcontext()

        with self.lock, torch.no_grad():
            if method == "coalora":
                self.coa.set_config(config)
                quantized, qs = run()
            else:
                self.applier.apply(config, base=BaseSpec())
                with bare():
                    quantized, qs = run()
            self.applier.restore()  # the reference: original weights, no adapter
            with bare():
                dense, ds = run()
        return {"quantized": quantized, "dense": dense, "quantized_s": qs, "dense_s": ds}

    # ---- front

    def front(self, method: str = "coalora", budget: float | None = None, seqlen: int = 256, windows: int = 8,
              corpus: str | None = None, metric: str = "ppl"):
        """The front of ``method``'s stored evaluations under this explorer's eval spec; ``metric``:
        ``ppl`` or ``kld`` (KL divergence to the unquantized model) as the second objective."""
        if method not in ("coalora", "qlora", "lqlora", "shared", "none"):
            raise CoaloraError(f"unknown method {short(method)}; use coalora, qlora, lqlora, shared or none")
        return self.front_service().front(self.query(method, seqlen, windows, corpus, metric), budget)

    def query(self, method: str, seqlen: int, windows: int, corpus: str | None = None, metric: str = "ppl"):
        from coalora.search.front import FrontQuery

        return FrontQuery(self.model_name, method, self.eval_corpus(corpus).id, seqlen, windows,
                          self.adapter_id if method == "coalora" else None, metric=metric, eval_spec=self.eval_spec)

    # ---- export

    def export_inputs(self, config: ModelQuantConfig, *, measure: bool = True, seqlen: int = 256, windows: int = 8,
                      corpus: str | None = None) -> dict[str, Any]:
        """Everything a bundle of ``config`` records besides the weights: measured and predicted
        perplexity (``measure`` evaluates when nothing is stored) and the adapter's description.
        Two exports with equal inputs write equal bundles (:meth:`export_key`)."""
        method = "coalora" if self.coa is not None else "none"
        ev = self.cached(config, method, seqlen, windows, corpus)
        if ev is None and measure:
            ev, _ = self.evaluate(config, method, seqlen, windows, corpus=corpus)
        measured = None if ev is None else {"ppl": ev.ppl, "nll": ev.nll, "eval_set": ev.eval_set, "seqlen": ev.seqlen,
                                            "windows": ev.windows, "tokens": ev.tokens, "eval_spec": ev.eval_spec,
                                            "kld": ev.kld}
        if measured is not None:
            from coalora.evaluation.tasks import newest_for_config

            measured["tasks"] = newest_for_config(self, config, method)
        p = self.front_service().predict(self.query(method, seqlen, windows, corpus), config)
        predicted = None if p is None else {"ppl": p.pred_ppl, "lo": p.pred_lo, "hi": p.pred_hi,
                                            "band": "+-2 sigma of log ppl"}
        adapter = None
        if self.coa is not None:
            a = self.coa.adapter_config
            adapter = {"id": self.adapter_id, "method": "coalora", "rank": a.rank, "alpha": a.alpha}
        return {"measured": measured, "predicted": predicted, "adapter": adapter}

    def export_key(self, config: ModelQuantConfig, inputs: dict[str, Any]) -> str:
        """The content hash (16 hex digits) of the bundle that ``config`` with ``inputs`` makes: the
        model's weights, the configuration, the adapter (its file's hash fixes the generated LoRA),
        the recorded results and the coalora version; equal keys, equal bundle contents."""
        import hashlib
        import json

        from coalora import __version__
        from coalora.export.bundle import FORMAT

        what = {"format": FORMAT, "version": __version__, "model": self.model_name, "weights": self.weights_hash,
                "config": config.hash, "ids": list(config.ids), **inputs}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def export(self, config: ModelQuantConfig, out: str | os.PathLike, *, make_zip: bool = False, force: bool = False,
               measure: bool = True, seqlen: int = 256, windows: int = 8, corpus: str | None = None,
               inputs: dict[str, Any] | None = None, gguf: bool = False) -> Path:
        """Write the bundle of ``config`` (with the generated adapter when there is one); ``inputs``:
        what :meth:`export_inputs` gave (computed now when None); ``gguf``: also a llama.cpp GGUF of the
        configured model with the adapter merged, scored by llama.cpp on the measured perplexity's windows."""
        from coalora.export.bundle import export_bundle
        from coalora.export.bundle_gguf import GgufSource

        if inputs is None:
            inputs = self.export_inputs(config, measure=measure, seqlen=seqlen, windows=windows, corpus=corpus)
        source = None
        if gguf:
            ew = self.eval_windows(seqlen, windows, corpus) if inputs["measured"] else None
            source = GgufSource(self.model, self.tokenizer, ew)
        with self.lock:
            weights, lora, adapter = dict(self.applier.originals), None, inputs["adapter"]
            if self.coa is not None:
                from coalora.adapter.deploy import deployable

                d = deployable(self.coa, config)
                weights, lora = d.weights, d.lora
                adapter = {**adapter, "rank": d.rank, "alpha": d.alpha, "lq_rank_folded": d.lq_rank}
            return export_bundle(self.model_name, config, weights, out,
                                 weights_hash=self.weights_hash, lora=lora, adapter=adapter,
                                 predicted=inputs["predicted"], measured=inputs["measured"], make_zip=make_zip,
                                 force=force, gguf=source)
