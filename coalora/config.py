"""Per-matrix quantization configurations: LQ-LoRA's space (method.md section 1.1-1.2).

A configuration c = (b0, b1, b2, B0, B1) says how one weight matrix is stored:

* ``b0``: bits per weight (NF-``b0`` codebook), in {2, 3, 4, 8};
* ``b1``: bits of the first-level (per-block absmax) scales, unsigned ints, in {2, 3, 4, 8};
* ``b2``: float format of the second-level scales, in {"bf16", "fp16", "fp32"} (16, 16, 32 bits);
* ``B0``: weights per first-level scale, in {16, 32, 64};
* ``B1``: first-level scales per second-level scale, in {16, 64, 256}.

That is 4 * 4 * 3 * 3 * 3 = 432 choices per matrix. Storage per parameter is

    bits(c) = b0 + b1 / B0 + b2_bits / (B0 * B1)

(the one global offset per tensor is ignored, as in LQ-LoRA's ``estimate_storage_from_config``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from coalora.errors import CoaloraError

B0_VALUES: tuple[int, ...] = (2, 3, 4, 8)
B1_BITS_VALUES: tuple[int, ...] = (2, 3, 4, 8)
B2_VALUES: tuple[str, ...] = ("bf16", "fp16", "fp32")
BLOCK0_VALUES: tuple[int, ...] = (16, 32, 64)
BLOCK1_VALUES: tuple[int, ...] = (16, 64, 256)
B2_BITS: dict[str, int] = {"bf16": 16, "fp16": 16, "fp32": 32}

#: Value lists in field order (b0, b1, b2, B0, B1); index vectors point into these.
FIELD_NAMES: tuple[str, ...] = ("b0", "b1", "b2", "B0", "B1")
FIELD_VALUES: tuple[tuple[Any, ...], ...] = (B0_VALUES, B1_BITS_VALUES, B2_VALUES, BLOCK0_VALUES, BLOCK1_VALUES)
FIELD_SIZES: tuple[int, ...] = tuple(len(v) for v in FIELD_VALUES)  # (4, 4, 3, 3, 3)


@dataclass(frozen=True)
class QuantConfig:
    """How one weight matrix is quantized (LQ-LoRA's NF double quantization)."""

    b0: int
    """Bits per weight: the NF-b0 codebook has 2**b0 levels."""
    b1: int
    """Bits of each first-level scale (unsigned int, relative to the tensor's offset)."""
    b2: str
    """Float format of the second-level scales: "bf16", "fp16" or "fp32"."""
    B0: int  # noqa: N815 (the paper's symbol)
    """Weights sharing one first-level scale."""
    B1: int  # noqa: N815
    """First-level scales sharing one second-level scale."""

    def __post_init__(self) -> None:
        for name, allowed in zip(FIELD_NAMES, FIELD_VALUES):
            value = getattr(self, name)
            # bool is an int subclass: reject it explicitly so True never means 1 bit.
            if isinstance(value, bool) or value not in allowed:
                raise CoaloraError(
                    f"quantization config field {name}={value!r} is outside the space; "
                    f"allowed values: {', '.join(map(str, allowed))}"
                )

    @property
    def bits(self) -> float:
        """Storage bits per parameter, ``b0 + b1/B0 + b2_bits/(B0*B1)``."""
        return self.b0 + self.b1 / self.B0 + B2_BITS[self.b2] / (self.B0 * self.B1)

    @property
    def index(self) -> tuple[int, int, int, int, int]:
        """Value indices (i_b0, i_b1, i_b2, i_B0, i_B1) into :data:`FIELD_VALUES`."""
        return tuple(values.index(getattr(self, name)) for name, values in zip(FIELD_NAMES, FIELD_VALUES))  # type: ignore[return-value]

    @property
    def id(self) -> int:
        """Position 0..431 of this config in :data:`ALL_CONFIGS` (row-major over the index)."""
        i = 0
        for idx, size in zip(self.index, FIELD_SIZES):
            i = i * size + idx
        return i

    @classmethod
    def from_index(cls, index: tuple[int, ...] | list[int]) -> QuantConfig:
        """Inverse of :attr:`index`."""
        if len(index) != 5:
            raise CoaloraError(f"a config index has 5 entries (b0, b1, b2, B0, B1), got {len(index)}")
        out = []
        for name, values, i in zip(FIELD_NAMES, FIELD_VALUES, index):
            if not 0 <= int(i) < len(values):
                raise CoaloraError(f"index {i} for field {name} is outside 0..{len(values) - 1}")
            out.append(values[int(i)])
        return cls(*out)

    @classmethod
    def from_id(cls, config_id: int) -> QuantConfig:
        """Inverse of :attr:`id`."""
        if not 0 <= config_id < len(ALL_CONFIGS):
            raise CoaloraError(f"config id {config_id} is outside 0..{len(ALL_CONFIGS) - 1}")
        return ALL_CONFIGS[config_id]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELD_NAMES}

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> QuantConfig:
        """Parse ``{"b0": 4, "b1": 8, "b2": "fp32", "B0": 64, "B1": 256}``; ``where`` names it in errors."""
        if not isinstance(d, dict):
            raise CoaloraError(f"{where}: expected an object with keys {', '.join(FIELD_NAMES)}, got {type(d).__name__}")
        missing = [k for k in FIELD_NAMES if k not in d]
        extra = [k for k in d if k not in FIELD_NAMES]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(map(str, extra))}"] if extra else [])
            raise CoaloraError(f"{where}: {'; '.join(parts)} (a config has exactly {', '.join(FIELD_NAMES)})")
        try:
            return cls(**{k: d[k] for k in FIELD_NAMES})
        except CoaloraError as e:
            raise CoaloraError(f"{where}: {e}") from None

    def __str__(self) -> str:
        return f"NF{self.b0}/s{self.b1}/{self.b2}/B0={self.B0}/B1={self.B1} ({self.bits:.4f} bits)"


#: All 432 configurations, ordered so that ``ALL_CONFIGS[c.id] == c``.
ALL_CONFIGS: tuple[QuantConfig, ...] = tuple(
    QuantConfig(*values) for values in itertools.product(*FIELD_VALUES)
)

#: QLoRA-style NF-k with double quantization: (k, 8, fp32, 64, 256), e.g. nf4-dq = 4.126953125 bits.
PRESETS: dict[str, QuantConfig] = {
    f"nf{k}-dq": QuantConfig(k, 8, "fp32", 64, 256) for k in (2, 3, 4, 8)
}

MIN_BITS: float = min(c.bits for c in ALL_CONFIGS)  # 2.0322265625 = (2, 2, bf16, 64, 256)
MAX_BITS: float = max(c.bits for c in ALL_CONFIGS)  # 8.625 = (8, 8, fp32, 16, 16)
