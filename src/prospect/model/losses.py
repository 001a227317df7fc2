"""The four losses with per-frame masks, and their weighted total (docs/design.md, Losses).

Every term is finite whatever the batch holds and keeps its parameters in the graph: an empty term is
`0 * logits.sum()`, so DDP never waits for a gradient that does not come.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prospect.data.batch import Batch
from prospect.model.prospect_model import ProspectOutput


@dataclass
class LossConfig:
    lm_weight: float = 1.0
    speaking_weight: float = 1.0
    dst_update_weight: float = 1.0
    dst_gen_weight: float = 1.0
    balance: str = "class_balanced"  # class_balanced | pos_weight | focal | plain
    pos_weight: float = 1.0  # with balance=pos_weight
    focal_gamma: float = 2.0  # with balance=focal


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the given positions. logits [M, V], targets [M]."""
    if targets.numel() == 0:
        return 0.0 * logits.sum()
    return F.cross_entropy(logits.float(), targets)


def binary_loss(logits: Tensor, labels: Tensor, cfg: LossConfig) -> Tensor:
    """BCE over the masked frames. logits [N], labels [N] (0/1, float)."""
    if logits.numel() == 0:
        return 0.0 * logits.sum()
    logits = logits.float()
    if cfg.balance == "class_balanced":  # (mean over positives + mean over negatives) / 2, over present classes
        per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        parts = [per[labels == c].mean() for c in (1.0, 0.0) if (labels == c).any()]
        return torch.stack(parts).mean()
    if cfg.balance == "pos_weight":
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=logits.new_tensor(cfg.pos_weight))
    if cfg.balance == "focal":
        per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        p_true = torch.exp(-per)
        return ((1 - p_true) ** cfg.focal_gamma * per).mean()
    if cfg.balance == "plain":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"loss.balance must be class_balanced, pos_weight, focal or plain, got {cfg.balance!r}")


def total_loss(out: ProspectOutput, batch: Batch, cfg: LossConfig) -> dict[str, Tensor]:
    """Loss terms and their weighted total; the head losses read only the frames in `batch.decision_mask`."""
    m = batch.decision_mask
    losses = {
        "lm": token_loss(out.lm_logits, batch.lm_targets),
        "dst_gen": token_loss(out.dst_gen_logits, batch.dst_gen_targets),
        "speaking": binary_loss(out.speaking_logits[m], batch.speaking[m], cfg),
        "dst_update": binary_loss(out.dst_update_logits[m], batch.dst_update[m], cfg),
    }
    losses["total"] = (cfg.lm_weight * losses["lm"] + cfg.dst_gen_weight * losses["dst_gen"]
                       + cfg.speaking_weight * losses["speaking"] + cfg.dst_update_weight * losses["dst_update"])
    return losses
