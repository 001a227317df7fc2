"""Per-frame binary heads: speaking (talk now?) and DST update (did the task state change?).

They read the final hidden state at decision positions only; a Linear layer or a small MLP.
"""

from __future__ import annotations

from torch import Tensor, nn


class BinaryHead(nn.Module):
    def __init__(self, hidden_size: int, kind: str = "linear", mlp_hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        if kind == "linear":
            self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 1))
        elif kind == "mlp":
            self.layers = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(mlp_hidden, 1))
        else:
            raise ValueError(f"head kind must be 'linear' or 'mlp', got {kind!r}")

    def forward(self, hidden: Tensor) -> Tensor:
        """[N, H] -> logits [N]."""
        return self.layers(hidden).squeeze(-1)
