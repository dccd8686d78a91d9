"""Measuring a configured model: the eval spec (which held-out windows), perplexity and KL divergence, the
unquantized reference log-probabilities, and lm-evaluation-harness tasks.
"""
