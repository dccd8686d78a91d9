"""Sections 4 and 6: training theta and the shared LoRA over sampled configurations, checkpoints, and the
equal-compute comparison against per-configuration baselines.

* the recipe and the loop: :mod:`~coalora.train.config` (``TrainConfig``), :mod:`~coalora.train.sampling`
  (what a step trains on), :mod:`~coalora.train.initial` (the initial training set, LQ-LoRA's start),
  :mod:`~coalora.train.search_round` (the Pareto search between steps), :mod:`~coalora.train.trainer`
  (``Trainer``);
* a run's files: :mod:`~coalora.train.state` (``TrainState`` and its checkpoint),
  :mod:`~coalora.checkpoint` (the file format), :mod:`~coalora.train.step_log` (``log.jsonl``);
* the comparisons: :mod:`~coalora.train.protocol` (``coalora compare``, unit by unit) with its report
  (:mod:`~coalora.train.protocol_report`, :mod:`~coalora.train.protocol_analysis`,
  :mod:`~coalora.train.protocol_intervals`), and the short harness :mod:`~coalora.train.compare`
  (:mod:`~coalora.train.compare_results`).
"""
