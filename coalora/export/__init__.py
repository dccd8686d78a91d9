"""Shipping a chosen configuration: the bundle, and the formats runtimes load (PEFT adapter, GGUF types,
torchao config).
"""
