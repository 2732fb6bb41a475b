"""Small torch modules that the built-in layer builders assemble."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """x + body(x)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the token axis of (B, T, D)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


class ToTokens(nn.Module):
    """(B, C, *spatial) to tokens (B, prod(spatial), C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class TokenMean(nn.Module):
    """(B, T, D) to (B, D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class IndexEmbedding(nn.Embedding):
    """An embedding that accepts indices coded as floats (observations arrive as floats)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.long())
