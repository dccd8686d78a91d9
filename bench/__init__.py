"""Benchmarks: one script per figure, each printing one JSON object; `python -m bench` runs them all."""
