"""One configuration-aware LoRA layer, :class:`CoALoRALinear` (method.md section 3, spec S3).

A frozen target linear (whose weight the :class:`~coalora.adapter.apply.ConfigApplier` swaps for
Q_C(W)) plus one LoRA pair shared by all configurations, A ``[r, d_in]`` (L2) and B
``[d_out, r]`` (L1), and the configuration's U ``[r, r]`` from theta:

    y = x W_C^T + bias + s * (x (U A)^T) B^T,  s = alpha / r

Callers change a layer only through its methods: :meth:`set_u`, :meth:`merge` / :meth:`unmerge`,
:meth:`load_lora_` / :meth:`load_split_` and :meth:`set_enabled`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from coalora.errors import CoaloraError


class CoALoRALinear(nn.Module):
    """A frozen linear plus LoRA with U.

    ``U`` ``[r, r]`` is bound by :meth:`set_u` (``None``: the identity, the plain LoRA).

    After :meth:`merge`, a forward without autograd uses one merged weight ``W_C + s B (U A)``
    ``[d_out, d_in]`` (built on first use, rebuilt when U, the quantized weight or A, B change):
    evaluation and sampling then cost what the dense model costs, as PEFT's ``merge_and_unload``
    does, for one weight copy per layer. Training (autograd on) always takes the unmerged path.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, scaling: float):
        super().__init__()
        self.base_layer = base_layer
        self.scaling = scaling
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.zeros(rank, base_layer.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, dtype=w.dtype, device=w.device))
        self._u: torch.Tensor | None = None
        self._u_version = 0
        self._enabled = True
        self._merge_on = False
        self._merged: torch.Tensor | None = None
        self._merged_key: tuple | None = None

    # ---- U

    @property
    def U(self) -> torch.Tensor | None:
        """The bound U ``[r, r]``, or ``None`` for the identity."""
        return self._u

    def set_u(self, u: torch.Tensor | None) -> None:
        """Bind U ``[r, r]`` (kept in the autograd graph if it has one); ``None`` clears it (U = I)."""
        r = self.lora_A.shape[0]
        if u is not None and tuple(u.shape) != (r, r):
            raise CoaloraError(f"U must have shape ({r}, {r}) for this rank-{r} layer, got {tuple(u.shape)}")
        self._u = u
        self._u_version += 1  # a new U, even one at a recycled address, invalidates the merged weight

    # ---- A, B

    @torch.no_grad()
    def load_lora_(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Copy A ``[r, d_in]`` and B ``[d_out, r]`` into the layer's parameters, in place."""
        for name, param, value in (("A", self.lora_A, a), ("B", self.lora_B, b)):
            if tuple(value.shape) != tuple(param.shape):
                raise CoaloraError(f"LoRA {name} must have shape {tuple(param.shape)}, got {tuple(value.shape)}")
        self.lora_A.copy_(a)
        self.lora_B.copy_(b)

    def load_split_(self, l1: torch.Tensor, l2: torch.Tensor) -> None:
        """Set A = L2 / sqrt(s), B = L1 / sqrt(s), so that s B A = L1 L2 (L1 ``[d_out, r]``, L2 ``[r, d_in]``):
        the LoRA starts as a low-rank split's full-precision term (LQ-LoRA, method.md 2)."""
        root = math.sqrt(self.scaling)
        self.load_lora_(l2 / root, l1 / root)

    # ---- merged inference, on / off

    @property
    def merged(self) -> bool:
        """Whether forwards without autograd use the merged weight."""
        return self._merge_on

    def merge(self) -> None:
        """Use ``W_C + s B (U A)`` for forwards without autograd (peft's ``merge``; A, B stay trainable)."""
        self._merge_on = True

    def unmerge(self, *, keep_weight: bool = False) -> None:
        """Back to the LoRA path for every forward (peft's ``unmerge``). The merged copy is dropped
        unless ``keep_weight`` (then a later :meth:`merge` reuses it while U, W_C, A and B are unchanged)."""
        self._merge_on = False
        if not keep_weight:
            self._merged, self._merged_key = None, None

    def __setattr__(self, name: str, value) -> None:
        if name == "merge":  # an assignment would hide the method and change nothing
            raise CoaloraError("CoALoRALinear.merge is a method: call layer.merge() or layer.unmerge()")
        super().__setattr__(name, value)

    def merged_weight(self) -> torch.Tensor:
        """``W_C + s B (U A)`` ``[d_out, d_in]``, cached until U, W_C, A or B change."""
        w = self.base_layer.weight
        key = (self._u_version, w.data_ptr(), w._version, self.lora_A._version, self.lora_B._version)
        if self._merged is None or self._merged_key != key:
            with torch.no_grad():
                a = self.lora_A if self._u is None else self._u.detach() @ self.lora_A
                self._merged = torch.addmm(w, self.lora_B, a, alpha=self.scaling)
            self._merged_key = key
        return self._merged

    # ---- forward

    @property
    def enabled(self) -> bool:
        """Whether the LoRA term is added (off: the bare quantized linear)."""
        return self._enabled

    def set_enabled(self, on: bool) -> None:
        """Add the LoRA term (``True``) or run the bare quantized linear (``False``)."""
        self._enabled = bool(on)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., d_in]`` -> ``[..., d_out]``."""
        if not self._enabled:
            return self.base_layer(x)
        if self._merge_on and not torch.is_grad_enabled():
            return F.linear(x, self.merged_weight(), self.base_layer.bias)
        # U folds into A first (A' = U A, [r, d_in]): r*r*d_in flops per layer, negligible next to the
        # tokens, and the same arithmetic order as the exported PEFT adapter, so both agree to float
        # rounding (x A^T U^T B^T in another order drifts by ~1e-4 in the logits over 30 blocks).
        a = self.lora_A if self._u is None else self._u @ self.lora_A
        return self.base_layer(x) + F.linear(F.linear(x, a), self.lora_B) * self.scaling
