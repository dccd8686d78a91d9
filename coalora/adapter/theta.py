"""theta, the network that maps a layer's quantization configuration to its U (method.md 3.2).

    features_i = (b0, b1, b2, B0, B1, block index, module type)      7 categorical indices
    context    = (avg bits - 4) / 2, share of 2-bit parameters        2 numbers, optional
    error_i    = standardized log ||W_i - Q_c(W_i)||^2 / ||W_i||^2    1 number, optional
    M_i = MLP(concat of 8-dim embeddings [, context] [, error_i])      [r, r]
    U_i = I + gamma * M_i                                              gamma learnable, init 1

The paper's theta sees only the layer's own configuration, so a 2-bit layer gets the same U in a
2.5-bit model as in a 6-bit one. The optional context (``AdapterConfig.theta_context``) gives every
layer the whole configuration's average bits and the parameter share of its 2-bit (b0 = 2) matrices:
how damaged the rest of the network is, which a layer's own fields cannot tell. The optional error
(``AdapterConfig.theta_error``) gives each layer its own quantization error under its configuration
(:func:`error_features`): how hard this matrix is to quantize this way, which the field embeddings
and the block index can only learn from the training draws.

The last layer starts at N(0, 1e-3), so U ~ I and training starts from the plain LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from coalora.quant.config import FIELD_SIZES, ModelQuantConfig

CONTEXT_FEATURES = 2
"""Numbers in theta's optional context: (avg bits - 4) / 2 and the parameter share of 2-bit matrices."""


FEATURES = len(FIELD_SIZES) + 2
"""Categorical inputs per layer: the five config fields, block index, module type."""


def input_width(embed_dim: int, context: bool, error: bool = False) -> int:
    """Width of theta's first layer's input: the concatenated embeddings, plus the context and the
    layer's error where taken."""
    return embed_dim * FEATURES + (CONTEXT_FEATURES if context else 0) + (1 if error else 0)


def config_context(config: ModelQuantConfig) -> torch.Tensor:
    """The whole configuration as theta's context, ``[2]`` float32: (avg bits - 4) / 2 (about -1..2
    over the space's 2.0-8.6 bits) and the parameter share of its matrices with b0 = 2."""
    numels = config.numels
    low = sum(n for c, n in zip(config.configs, numels) if c.b0 == 2) / sum(numels)
    return torch.tensor([(config.avg_bits - 4.0) / 2.0, low], dtype=torch.float32)


def error_features(errors: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each matrix's quantization error under each of the 432 configurations as theta sees it,
    ``[N, 432]`` float32: log(||W - Q_c(W)||^2 / ||W||^2), standardized to mean 0 and std 1 over the
    table so that its scale matches the embeddings'. ``errors`` is the model's unweighted error table
    ``[N, 432]`` (:func:`coalora.lqlora.sensitivity.cached_error_table`, computed once per set of
    weights, ~30 s for SmolLM2-135M on 2 cores, then read from the cache) and ``weights`` the N
    matrices it was computed on. It is the error of W itself, not of an ``lq`` base's residual: a
    per-layer difficulty signal."""
    err = errors.double()
    norms = torch.stack([w.double().pow(2).sum() for w in weights]).clamp_min(1e-30)
    x = torch.log((err / norms[:, None]).clamp_min(1e-30))
    return ((x - x.mean()) / x.std().clamp_min(1e-12)).float()


class ConfigNet(nn.Module):
    """theta: layer configuration features ``[N, 7]`` (int64) and, with ``context``, the whole
    configuration's ``[CONTEXT_FEATURES]``, with ``error`` each layer's error ``[N]`` -> U ``[N, r, r]``,
    all layers in one call."""

    def __init__(self, rank: int, num_blocks: int, num_module_types: int, embed_dim: int, hidden: int,
                 context: bool = False, error: bool = False):
        """``rank`` r, the block and module-type counts (the sizes of the last two embeddings), the
        widths (defaults: :class:`~coalora.adapter.config.AdapterConfig`) and whether theta sees the
        configuration's context (:func:`config_context`) and each layer's error (:func:`error_features`)."""
        super().__init__()
        self.rank = rank
        self.context = context
        self.error = error
        sizes = (*FIELD_SIZES, num_blocks, num_module_types)
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in sizes)
        width = input_width(embed_dim, context, error)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, hidden),
            nn.SiLU(),
            nn.Linear(hidden, rank * rank),
        )
        # M ~ 0 so U ~ I: the adapter starts as the plain LoRA.
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)
        self.gamma = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: torch.Tensor, context: torch.Tensor | None = None,
                error: torch.Tensor | None = None) -> torch.Tensor:
        """U = I + gamma * M for every row of ``features`` ``[N, 7]``, each row also seeing ``context``
        ``[CONTEXT_FEATURES]`` and its layer's ``error`` ``[N]`` where theta takes them (and only then);
        returns ``[N, r, r]``."""
        if (context is not None) != self.context:
            raise ValueError(f"this theta {'takes' if self.context else 'takes no'} configuration context")
        if (error is not None) != self.error:
            raise ValueError(f"this theta {'takes' if self.error else 'takes no'} layer errors")
        parts = [emb(features[:, j]) for j, emb in enumerate(self.embeddings)]
        if context is not None:
            parts.append(context.to(parts[0].dtype).expand(features.shape[0], CONTEXT_FEATURES))
        if error is not None:
            parts.append(error.to(parts[0].dtype).view(-1, 1))
        z = torch.cat(parts, dim=-1)
        m = self.mlp(z).view(-1, self.rank, self.rank)
        eye = torch.eye(self.rank, dtype=m.dtype, device=m.device)
        return eye + self.gamma * m
