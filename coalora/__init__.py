"""coalora: configuration-aware LoRA (CoA-LoRA, arXiv 2509.25214) for mixed-precision quantized LLMs."""

__version__ = "0.1.0"
