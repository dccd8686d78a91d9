"""theta, the network that maps a layer's quantization configuration to its U (method.md 3.2).

    features_i = (b0, b1, b2, B0, B1, block index, module type)      7 categorical indices
    M_i = MLP(concat of 8-dim embeddings)                              [r, r]
    U_i = I + gamma * M_i                                              gamma learnable, init 1

The last layer starts at N(0, 1e-3), so U ~ I and training starts from the plain LoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from coalora.quant.config import FIELD_SIZES


class ConfigNet(nn.Module):
    """theta: layer configuration features ``[N, 7]`` (int64) -> U ``[N, r, r]``, all layers in one call."""

    def __init__(self, rank: int, num_blocks: int, num_module_types: int, embed_dim: int, hidden: int):
        """``rank`` r, the block and module-type counts (the sizes of the last two embeddings) and the
        widths (defaults: :class:`~coalora.adapter.config.AdapterConfig`)."""
        super().__init__()
        self.rank = rank
        sizes = (*FIELD_SIZES, num_blocks, num_module_types)
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in sizes)
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim * len(sizes)),
            nn.Linear(embed_dim * len(sizes), hidden),
            nn.SiLU(),
            nn.Linear(hidden, rank * rank),
        )
        # M ~ 0 so U ~ I: the adapter starts as the plain LoRA.
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)
        self.gamma = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """U = I + gamma * M for every row of ``features`` ``[N, 7]``; returns ``[N, r, r]``."""
        z = torch.cat([emb(features[:, j]) for j, emb in enumerate(self.embeddings)], dim=-1)
        m = self.mlp(z).view(-1, self.rank, self.rank)
        eye = torch.eye(self.rank, dtype=m.dtype, device=m.device)
        return eye + self.gamma * m
