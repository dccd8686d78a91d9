"""Sections 4 and 6: training theta and the shared LoRA over sampled configurations, checkpoints, and the
equal-compute comparison against per-configuration baselines.
"""
