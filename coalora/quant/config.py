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

import hashlib
import itertools
import json
import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalora.errors import CoaloraError, short

if TYPE_CHECKING:
    import torch

    from coalora.models import Target

CODE_BITS: tuple[int, ...] = (2, 3, 4, 8)
"""Values of b0: bits per weight code (the NF-b0 codebook)."""
SCALE_BITS: tuple[int, ...] = (2, 3, 4, 8)
"""Values of b1: bits per first-level scale code."""
SCALE2_FORMATS: tuple[str, ...] = ("bf16", "fp16", "fp32")
"""Values of b2: float format of the second-level scales."""
BLOCK_SIZES: tuple[int, ...] = (16, 32, 64)
"""Values of B0: weights per block (one first-level scale each)."""
GROUP_SIZES: tuple[int, ...] = (16, 64, 256)
"""Values of B1: blocks per group (one second-level scale each)."""
SCALE2_FORMAT_BITS: dict[str, int] = {"bf16": 16, "fp16": 16, "fp32": 32}
"""Storage bits of each b2 format."""

#: Value lists in field order (b0, b1, b2, B0, B1); index vectors point into these.
FIELD_NAMES: tuple[str, ...] = ("b0", "b1", "b2", "B0", "B1")
FIELD_VALUES: tuple[tuple[Any, ...], ...] = (CODE_BITS, SCALE_BITS, SCALE2_FORMATS, BLOCK_SIZES, GROUP_SIZES)
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
            # bool is an int subclass: reject it explicitly so True never means 1 bit; 4.0 == 4 but a
            # float would reach the quantizer as a size, so the type must match too.
            kind = str if isinstance(allowed[0], str) else numbers.Integral
            if isinstance(value, bool) or not isinstance(value, kind) or value not in allowed:
                wrong = "" if isinstance(value, kind) and not isinstance(value, bool) else \
                    f" ({'a string' if kind is str else 'an integer'}, not {type(value).__name__})"
                raise CoaloraError(
                    f"quantization config field {name}={short(value)} is outside the space; "
                    f"allowed values: {', '.join(map(str, allowed))}{wrong}"
                )

    @property
    def bits(self) -> float:
        """Storage bits per parameter, ``b0 + b1/B0 + b2_bits/(B0*B1)``."""
        return self.b0 + self.b1 / self.B0 + SCALE2_FORMAT_BITS[self.b2] / (self.B0 * self.B1)

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
        """``{"b0": ..., "b1": ..., "b2": ..., "B0": ..., "B1": ...}`` (inverse of :meth:`from_dict`)."""
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

#: Storage bits per parameter of each configuration, ``CONFIG_BITS[c.id] == ALL_CONFIGS[c.id].bits``
#: (432 floats): the one bits table every allocator, encoding and front reads.
CONFIG_BITS: tuple[float, ...] = tuple(c.bits for c in ALL_CONFIGS)

MIN_BITS: float = min(CONFIG_BITS)  # 2.0322265625 = (2, 2, bf16, 64, 256)
MAX_BITS: float = max(CONFIG_BITS)  # 8.625 = (8, 8, fp32, 16, 16)


def check_budget(budget: object, what: str = "budget") -> float:
    """``budget`` as average bits per weight, or one clear error naming the feasible range.

    The range is the space's own: from the cheapest configuration (``MIN_BITS``) to the most
    precise (``MAX_BITS``); every budget the allocator is asked to meet passes through here.
    """
    try:
        b = float(budget)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CoaloraError(f"{what} must be a number of bits per weight, got {short(budget)}") from None
    if not math.isfinite(b) or not MIN_BITS <= b <= MAX_BITS:
        raise CoaloraError(f"{what} {short(budget)} bits is outside the feasible range [{MIN_BITS:.3f}, {MAX_BITS:.3f}] "
                           "(the cheapest and the most precise configuration)")
    return b


# --------------------------------------------------------------------------------------------
# model-level configurations and the JSON file format

FORMAT = "coalora.quant_config/1"


@dataclass(frozen=True)
class ModelQuantConfig:
    """One :class:`QuantConfig` per target matrix of a model (a point of the search space).

    ``targets`` and ``configs`` are aligned and in model order (block, then module type).
    """

    model: str
    targets: tuple[Target, ...]
    configs: tuple[QuantConfig, ...]

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.configs):
            raise CoaloraError(f"{len(self.configs)} configs for {len(self.targets)} target matrices")

    # ---- construction

    @classmethod
    def uniform(cls, model: str, targets: list[Target] | tuple[Target, ...], config: QuantConfig) -> ModelQuantConfig:
        """Every matrix with the same config (e.g. a preset)."""
        return cls(model, tuple(targets), (config,) * len(targets))

    @classmethod
    def from_ids(cls, model: str, targets: list[Target] | tuple[Target, ...], ids: list[int] | tuple[int, ...]) -> ModelQuantConfig:
        """From one config id (0..431) per matrix, e.g. an allocator's choice."""
        return cls(model, tuple(targets), tuple(ALL_CONFIGS[int(i)] for i in ids))

    # ---- derived quantities

    @property
    def numels(self) -> tuple[int, ...]:
        """Parameters of each target matrix, in target order."""
        return tuple(t.numel for t in self.targets)

    @property
    def avg_bits(self) -> float:
        """Parameter-weighted average bits over the target matrices (method.md section 1.3)."""
        total = sum(self.numels)
        return sum(c.bits * n for c, n in zip(self.configs, self.numels)) / total

    @property
    def ids(self) -> tuple[int, ...]:
        """Config id (0..431) of each target matrix, in target order."""
        return tuple(c.id for c in self.configs)

    @property
    def hash(self) -> str:
        """Canonical content hash (model + each module's config), 16 hex digits."""
        canon = json.dumps([self.model, sorted((t.name, c.id) for t, c in zip(self.targets, self.configs))])
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def __getitem__(self, name: str) -> QuantConfig:
        for t, c in zip(self.targets, self.configs):
            if t.name == name:
                return c
        raise KeyError(name)

    def index_matrix(self) -> torch.Tensor:
        """Value indices ``[N, 5]`` (int64), columns (b0, b1, b2, B0, B1)."""
        import torch

        return torch.tensor([c.index for c in self.configs], dtype=torch.long)

    def index_features(self) -> torch.Tensor:
        """GP encoding 1: value indices scaled to [0, 1] by the static ranges, ``[5N]`` float64.

        Static ranges (not the observed min/max, as the official code does) keep a constant column
        from dividing by zero.
        """
        import torch

        sizes = torch.tensor(FIELD_SIZES, dtype=torch.float64) - 1
        return (self.index_matrix().double() / sizes).reshape(-1)

    def bits_features(self) -> torch.Tensor:
        """GP encoding 2: bits per parameter of every matrix, ``[N]`` float64."""
        import torch

        return torch.tensor([c.bits for c in self.configs], dtype=torch.float64)

    def with_changes(self, changes: dict[str, QuantConfig]) -> ModelQuantConfig:
        """This configuration with the matrices named in ``changes`` set to their new configs."""
        names = {t.name for t in self.targets}
        unknown = [n for n in changes if n not in names]
        if unknown:
            raise CoaloraError(f"unknown module {unknown[0]!r} for model {self.model}")
        return ModelQuantConfig(self.model, self.targets, tuple(changes.get(t.name, c) for t, c in zip(self.targets, self.configs)))

    # ---- the file format

    def to_json(self) -> dict[str, Any]:
        """``default`` is the most common config; ``modules`` lists only the matrices that differ."""
        default = Counter(self.configs).most_common(1)[0][0]
        return {
            "format": FORMAT,
            "model": self.model,
            "default": default.to_dict(),
            "modules": {t.name: c.to_dict() for t, c in zip(self.targets, self.configs) if c != default},
            # derived fields: written for people and tools, recomputed (never trusted) on load
            "avg_bits": self.avg_bits,
            "hash": self.hash,
        }

    @classmethod
    def from_json(cls, obj: Any, targets: list[Target] | tuple[Target, ...], model: str | None = None, where: str = "config") -> ModelQuantConfig:
        """Validate and parse the file format against a model's targets.

        Every problem is one :class:`CoaloraError` naming the offending key.
        """
        if not isinstance(obj, dict):
            raise CoaloraError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        fmt = obj.get("format")
        if fmt != FORMAT:
            raise CoaloraError(f"{where}: key 'format' is {short(fmt)}; this coalora reads {FORMAT!r}")
        file_model = obj.get("model")
        if not isinstance(file_model, str) or not file_model:
            raise CoaloraError(f"{where}: key 'model' must name the model the config is for")
        if model is not None and file_model != model:
            raise CoaloraError(f"{where}: key 'model' is {short(file_model)} but the model in use is {model!r}")
        known = {"format", "model", "default", "modules", "avg_bits", "hash"}
        extra = [k for k in obj if k not in known]
        if extra:
            raise CoaloraError(f"{where}: unknown key {short(extra[0])} (allowed: {', '.join(sorted(known))})")
        default = None
        if obj.get("default") is not None:
            default = QuantConfig.from_dict(obj["default"], where=f"{where}: key 'default'")
        modules = obj.get("modules", {})
        if not isinstance(modules, dict):
            raise CoaloraError(f"{where}: key 'modules' must be an object mapping module names to configs")
        names = [t.name for t in targets]
        name_set = set(names)
        parsed: dict[str, QuantConfig] = {}
        for name, c in modules.items():
            if name not in name_set:
                hint = f" (e.g. {names[0]})" if names else ""
                raise CoaloraError(f"{where}: unknown module {short(name)} in 'modules' for model {file_model}{hint}")
            parsed[name] = QuantConfig.from_dict(c, where=f"{where}: modules[{short(name)}]")
        if default is None:
            missing = [n for n in names if n not in parsed]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise CoaloraError(f"{where}: module {missing[0]!r}{more} has no config and there is no 'default'")
        return cls(file_model, tuple(targets), tuple(parsed.get(n, default) for n in names))  # type: ignore[arg-type]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically (a temp file renamed into place)."""
        from coalora.files import write_json_atomic

        return write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike, targets: list[Target] | tuple[Target, ...], model: str | None = None) -> ModelQuantConfig:
        """Read a configuration file written by :meth:`save` for ``targets`` (``model``: the expected model name)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CoaloraError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CoaloraError(f"cannot read config file {path}: {e}") from None
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser can go
            raise CoaloraError(f"{path}: malformed JSON ({type(e).__name__}: {e})") from None
        return cls.from_json(obj, targets, model=model, where=str(path))


def resolve_preset(name: str) -> QuantConfig:
    """A named preset (``nf4-dq`` ...) or ``uniform:b0,b1,b2,B0,B1`` (e.g. ``uniform:3,4,bf16,32,64``)."""
    if name in PRESETS:
        return PRESETS[name]
    if name.startswith("uniform:"):
        parts = name.removeprefix("uniform:").split(",")
        if len(parts) == 5:
            try:
                return QuantConfig(int(parts[0]), int(parts[1]), parts[2], int(parts[3]), int(parts[4]))
            except ValueError:
                pass
    raise CoaloraError(f"unknown preset {short(name)}; use {', '.join(PRESETS)} or uniform:b0,b1,b2,B0,B1 (e.g. uniform:3,8,fp32,64,256)")
