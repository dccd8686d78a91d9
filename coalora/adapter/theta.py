"""theta, the network that maps a layer's quantization configuration to its U (method.md 3.2).

    features_i = (b0, b1, b2, B0, B1, block index, module type)      7 categorical indices
    context    = (avg bits - 4) / 2, share of 2-bit parameters        2 numbers, optional
    M_i = MLP(concat of 8-dim embeddings [, context])                  [r, r]
    U_i = I + gamma * M_i                                              gamma learnable, init 1

The paper's theta sees only the layer's own configuration, so a 2-bit layer gets the same U in a
2.5-bit model as in a 6-bit one. The optional context (``AdapterConfig.theta_context``) gives every
layer the whole configuration's average bits and the parameter share of its 2-bit (b0 = 2) matrices:
how damaged the rest of the network is, which a layer's own fields cannot tell.

The last layer starts at N(0, 1e-3), so U ~ I and training starts from the plain LoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from coalora.quant.config import FIELD_SIZES, ModelQuantConfig

CONTEXT_FEATURES = 2
"""Numbers in theta's optional context: (avg bits - 4) / 2 and the parameter share of 2-bit matrices."""


FEATURES = len(FIELD_SIZES) + 2
"""Categorical inputs per layer: the five config fields, block index, module type."""


def input_width(embed_dim: int, context: bool) -> int:
    """Width of theta's first layer's input: the concatenated embeddings, plus the context if taken."""
    return embed_dim * FEATURES + (CONTEXT_FEATURES if context else 0)


def config_context(config: ModelQuantConfig) -> torch.Tensor:
    """The whole configuration as theta's context, ``[2]`` float32: (avg bits - 4) / 2 (about -1..2
    over the space's 2.0-8.6 bits) and the parameter share of its matrices with b0 = 2."""
    numels = config.numels
    low = sum(n for c, n in zip(config.configs, numels) if c.b0 == 2) / sum(numels)
    return torch.tensor([(config.avg_bits - 4.0) / 2.0, low], dtype=torch.float32)


class ConfigNet(nn.Module):
    """theta: layer configuration features ``[N, 7]`` (int64) and, with ``context``, the whole
    configuration's ``[CONTEXT_FEATURES]`` -> U ``[N, r, r]``, all layers in one call."""

    def __init__(self, rank: int, num_blocks: int, num_module_types: int, embed_dim: int, hidden: int,
                 context: bool = False):
        """``rank`` r, the block and module-type counts (the sizes of the last two embeddings), the
        widths (defaults: :class:`~coalora.adapter.config.AdapterConfig`) and whether theta sees the
        configuration's context (:func:`config_context`)."""
        super().__init__()
        self.rank = rank
        self.context = context
        sizes = (*FIELD_SIZES, num_blocks, num_module_types)
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in sizes)
        width = input_width(embed_dim, context)
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

    def forward(self, features: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """U = I + gamma * M for every row of ``features`` ``[N, 7]``, each row also seeing ``context``
        ``[CONTEXT_FEATURES]`` where theta takes it (and only then); returns ``[N, r, r]``."""
        if (context is not None) != self.context:
            raise ValueError(f"this theta {'takes' if self.context else 'takes no'} configuration context")
        parts = [emb(features[:, j]) for j, emb in enumerate(self.embeddings)]
        if context is not None:
            parts.append(context.to(parts[0].dtype).expand(features.shape[0], CONTEXT_FEATURES))
        z = torch.cat(parts, dim=-1)
        m = self.mlp(z).view(-1, self.rank, self.rank)
        eye = torch.eye(self.rank, dtype=m.dtype, device=m.device)
        return eye + self.gamma * m
