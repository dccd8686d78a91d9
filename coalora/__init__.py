"""coalora: configuration-aware LoRA (CoA-LoRA, arXiv 2509.25214) for mixed-precision quantized LLMs."""

import logging as _logging

__version__ = "0.1.0"

# transformers imports torchao whenever it is installed (for the bundle's torchao map). torchao's
# wheel ships C/CUDA kernels that do not load on a CPU-only Python 3.11 and says so, with torch's
# pytree deprecation notes, on every command; coalora uses only its pure-PyTorch path, so those
# start-up notes are noise to a user. Real errors (ERROR and above) still show.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
