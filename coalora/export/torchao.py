"""A configuration as a torchao ``FqnToConfig``: per-module weight-only integer quantization.

torchao (``quantize_(model, FqnToConfig(...))``) quantizes each target ``nn.Linear`` with
``IntxWeightOnlyConfig(weight_dtype=torch.int<b0>, granularity=PerGroup(B0),
mapping_type=ASYMMETRIC)``: ``b0`` bits per weight and one (scale, zero point) per ``B0`` weights of
a row, exactly coalora's (b0, B0). What does not carry over: the NF-b0 codebook (torchao's grid is
uniform) and the double quantization of the scales (b1, b2, B1: torchao keeps its scales in the
model's dtype), so the torchao model stores slightly more bits and measures a different
perplexity; the bundle README reports both. Modules that are not targets (embeddings, norms,
``lm_head``) are left alone (``None`` in the map: no ``_default`` entry).

The bundle's ``torchao_config.json`` is torchao's own serialisation of the ``FqnToConfig``
(``torchao.core.config.config_to_dict``), read back with :func:`load_fqn_config`.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    from torch import nn

    from coalora.quant.config import ModelQuantConfig

TORCHAO_FILE = "torchao_config.json"


def fqn_to_config(config: ModelQuantConfig):
    """torchao's ``FqnToConfig`` for ``config``: one ``IntxWeightOnlyConfig`` per target module."""
    import torch
    from torchao.quantization import FqnToConfig, IntxWeightOnlyConfig, MappingType, PerGroup

    per: dict[tuple[int, int], Any] = {}
    table: OrderedDict[str, Any] = OrderedDict()
    for t, c in zip(config.targets, config.configs):
        key = (c.b0, c.B0)
        if key not in per:
            per[key] = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{c.b0}"), granularity=PerGroup(c.B0),
                                            mapping_type=MappingType.ASYMMETRIC)
        table[t.name] = per[key]
    return FqnToConfig(fqn_to_config=table)


def torchao_json(config: ModelQuantConfig) -> dict[str, Any]:
    """The ``FqnToConfig`` of ``config`` in torchao's serialised form (``config_to_dict``)."""
    from torchao.core.config import config_to_dict

    return config_to_dict(fqn_to_config(config))


def load_fqn_config(path: str | os.PathLike):
    """A bundle's ``torchao_config.json`` back as a torchao ``FqnToConfig`` (``config_from_dict``)."""
    from torchao.core.config import config_from_dict

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return config_from_dict(data)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CoaloraError(f"{path} is not a torchao FqnToConfig file ({type(e).__name__}: {e})") from None


def apply_torchao(model: nn.Module, fqn_config) -> nn.Module:
    """Quantize ``model`` in place with torchao (``quantize_`` with ``filter_fn=None``: every module
    the map names, nothing else)."""
    from torchao.quantization import quantize_

    quantize_(model, fqn_config, filter_fn=None)
    return model


def torchao_bits(model: nn.Module, names: list[str]) -> float:
    """Average stored bits per weight of the torchao-quantized modules ``names``: int codes at
    ``b0`` bits plus each group's scale and zero point in their stored dtypes."""
    modules = dict(model.named_modules())
    bits = numel = 0
    for n in names:
        w = modules[n].weight
        qdata, scale, zero = w.qdata, w.scale, w.zero_point
        b0 = int(str(w.target_dtype).removeprefix("torch.int"))
        bits += qdata.numel() * b0 + scale.numel() * scale.element_size() * 8 + zero.numel() * zero.element_size() * 8
        numel += qdata.numel()
    return bits / numel
