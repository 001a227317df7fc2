"""LightningModule: the four losses, per-head metrics, AdamW with cosine warmup, checkpoints that hold only
what trains (and load, on resume or test, only onto the base model they were trained on)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryF1Score

from prospect.data.batch import Batch
from prospect.model.factory import check_checkpoint, current_weight_names
from prospect.model.losses import LossConfig, total_loss
from prospect.model.prospect_model import ProspectModel, ProspectOutput

HEADS = ("speaking", "dst_update")


def _head_metrics() -> MetricCollection:
    return MetricCollection({"auroc": BinaryAUROC(), "ap": BinaryAveragePrecision(), "f1": BinaryF1Score()})


class ProspectLitModule(L.LightningModule):
    """The network (`net`, ProspectModel) and how it trains, as lightning-hydra-template names them."""

    def __init__(self, net: ProspectModel, loss: LossConfig, optimizer: Callable, scheduler: Callable | None = None,
                 config: dict | None = None):
        super().__init__()
        self.net, self.loss_cfg = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.config = config or {}  # the resolved run config, stored in checkpoints
        self.strict_loading = False  # checkpoints hold only the trained parameters
        self.head_metrics = torch.nn.ModuleDict({
            f"{split}_{head}": _head_metrics() for split in ("train", "val", "test") for head in HEADS})
        self.token_accuracy = torch.nn.ModuleDict({
            f"{split}_{kind}": MeanMetric() for split in ("train", "val", "test") for kind in ("lm", "dst_gen")})

    def forward(self, batch: Batch) -> ProspectOutput:
        return self.net(batch)

    def _step(self, batch: Batch, split: str) -> tuple[Tensor, ProspectOutput]:
        out = self.net(batch)
        losses = total_loss(out, batch, self.loss_cfg)
        on_step = split == "train"
        # Losses are per rank (rank 0's reach the loggers). sync_dist would all-reduce them whenever the progress
        # bar, which only rank 0 has, reads its metrics: a collective the other ranks never join (a DDP hang).
        self.log_dict({f"{split}/{k}_loss": v for k, v in losses.items() if k != "total"},
                      batch_size=batch.size, on_step=on_step, on_epoch=True)
        self.log(f"{split}/loss", losses["total"], batch_size=batch.size, prog_bar=True, on_step=on_step,
                 on_epoch=True)
        for head, logits, labels in (("speaking", out.speaking_logits, batch.speaking),
                                     ("dst_update", out.dst_update_logits, batch.dst_update)):
            self.head_metrics[f"{split}_{head}"].update(torch.sigmoid(logits.detach().float()), labels.long())
        for kind, logits, targets in (("lm", out.lm_logits, batch.lm_targets),
                                      ("dst_gen", out.dst_gen_logits, batch.dst_gen_targets)):
            if targets.numel():
                self.token_accuracy[f"{split}_{kind}"].update((logits.argmax(-1) == targets).float())
        return losses["total"], out

    def _log_epoch_metrics(self, split: str) -> None:
        # compute() all-gathers across ranks: every rank must call it, so decide from counts summed over ranks.
        # This runs in a module hook, which every rank reaches in the same order (unlike rank 0's progress bar).
        for head in HEADS:
            metrics = self.head_metrics[f"{split}_{head}"]
            if self._seen_on_any_rank(len(metrics["auroc"].preds)):
                self.log_dict({f"{split}/{head}_{k}": v for k, v in metrics.compute().items()})
            metrics.reset()
        for kind in ("lm", "dst_gen"):
            acc = self.token_accuracy[f"{split}_{kind}"]
            if self._seen_on_any_rank(acc.update_count):
                self.log(f"{split}/{kind}_token_accuracy", acc.compute())
            acc.reset()

    def _seen_on_any_rank(self, count: int) -> bool:
        return float(self.trainer.strategy.reduce(torch.tensor(float(count), device=self.device),
                                                  reduce_op="sum")) > 0

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        out = self._step(batch, "test")[1]
        return {"speaking": torch.sigmoid(out.speaking_logits.float()),
                "dst_update": torch.sigmoid(out.dst_update_logits.float())}

    def on_train_epoch_start(self) -> None:
        set_epoch = getattr(getattr(self.trainer, "datamodule", None), "set_epoch", None)
        if set_epoch is not None:  # negatives are re-drawn each epoch
            set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer,
                                           num_training_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def state_dict(self, *args, **kwargs) -> dict[str, Tensor]:
        """Only trained parameters: LoRA, heads, and the connector when it trains."""
        full = super().state_dict(*args, **kwargs)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        prefix = kwargs.get("prefix", "")
        return {k: v for k, v in full.items() if k[len(prefix):] in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["prospect_config"] = self.config
        checkpoint["base_fingerprint"] = self.net.base_fingerprint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming (`trainer.fit(ckpt_path=...)`) or testing a checkpoint runs the checks of load_checkpoint."""
        checkpoint["state_dict"] = current_weight_names(checkpoint["state_dict"], self.trainer.ckpt_path)
        check_checkpoint(checkpoint, self.net, self.trainer.ckpt_path, self.config.get("model", {}).get("backbone"))
