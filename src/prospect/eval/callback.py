"""Streaming validation during training: every few epochs, a few validation clips go through the
StreamingGenerator at each configured compression setting, and the dialog metrics are logged as
`stream/<setting>/<metric>`, so that a ModelCheckpoint can pick the epoch by a streaming metric. Under DDP each
rank streams its share of the clips and rank 0 scores them all; FSDP, which shards the model, is refused."""

from __future__ import annotations

import json
import logging
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy

from prospect.eval.encoder import DEFAULT, load_encoder
from prospect.eval.report import log_to_wandb, metrics_table, save_plots
from prospect.eval.streaming import StreamedClip, score, stream_clips
from prospect.model.attention import STREAM_ATTENTION
from prospect.stream.generator import StreamingGenerator

log = logging.getLogger(__name__)

LOGGED = ("f1", "precision", "recall", "jaccard", "missing_rate", "redundant_rate", "semantic_score", "bleu1",
          "bleu2", "bleu3", "bleu4", "meteor", "cider", "bleu1_w", "bleu2_w", "bleu3_w", "bleu4_w", "meteor_w",
          "cider_w", "rouge_l", "time_diff", "dst_f1", "dst_precision", "dst_recall", "dst_state_accuracy",
          "speaking_auroc", "dst_update_auroc", "ms_per_frame", "peak_cache_tokens", "peak_cache_bytes",
          "compressions", "malformed_dst", "frames_beyond_max_positions")


class StreamingValidation(L.Callback):
    """Streams `num_clips` validation clips at every setting after every `every_n_epochs`-th epoch and the
    last one. On the other epochs the latest values are logged again (NaN before the first run), so a checkpoint
    monitor always finds them; a repeated value never counts as an improvement and NaN counts as the worst."""

    def __init__(self, settings: list[str], every_n_epochs: int = 5, num_clips: int = 2,
                 speaking_threshold: float = 0.5, dst_update_threshold: float = 0.5, max_new_tokens: int = 48,
                 max_summary_tokens: int = 128, encoder: str = DEFAULT, models_dir: str = "models",
                 window: list[float] | None = None, dirpath: str = "plots/stream", max_plots: int = 1,
                 batch_size: int = 1):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.settings, self.every_n_epochs, self.num_clips = list(settings), every_n_epochs, num_clips
        self.thresholds = (speaking_threshold, dst_update_threshold)
        self.max_new_tokens, self.max_summary_tokens, self.encoder_source = max_new_tokens, max_summary_tokens, encoder
        self.models_dir = models_dir  # where all-mpnet-base-v2 is fetched to
        self.window = tuple(window) if window else None
        self.dirpath, self.max_plots, self.batch_size = Path(dirpath), max_plots, batch_size
        self.latest: dict[str, dict[str, float]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate") or not self.num_clips or not self.settings:
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError(
                "streaming validation runs the whole model on each rank, and FSDP shards it: turn it off with "
                "callbacks.streaming_validation.num_clips=0 (and pick the checkpoint by another metric, e.g. "
                "callbacks.model_checkpoint.monitor=val/speaking_auroc), or train with trainer=ddp")
        attention = pl_module.config.get("model", {}).get("backbone", {}).get("attn_implementation", STREAM_ATTENTION)
        if attention != STREAM_ATTENTION:
            raise ValueError(
                f"streaming validation runs the training model through the streams' KV store, which needs the "
                f"attention prospect loads models with (model.backbone.attn_implementation={STREAM_ATTENTION}), not "
                f"{attention}: use it, or turn streaming validation off (callbacks.streaming_validation.num_clips=0)")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.num_clips or not self.settings:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs == 0 or epoch == trainer.max_epochs - 1:
            # every rank streams its share; rank 0 scores them all, and every rank logs the same numbers (a
            # checkpoint monitor runs on all of them)
            streamed = self._stream(trainer, pl_module)
            metrics = self._score(trainer, streamed) if trainer.is_global_zero else None
            self.latest = trainer.strategy.broadcast(metrics, src=0)
        for setting in self.settings:
            for key in LOGGED:
                pl_module.log(f"stream/{setting}/{key}", float(self.latest.get(setting, {}).get(key, float("nan"))))

    def _stream(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, list[StreamedClip]]:
        """Streams this rank's share of the clips (every world_size-th); returns every rank's, in clip order."""
        net, builder = pl_module.net, trainer.datamodule.builder
        generator = StreamingGenerator(net.vlm, builder.tokenizer, net.tokens_per_frame, net.speaking_head,
                                       net.dst_head, system_prompt=builder.system_prompt,
                                       max_new_tokens=self.max_new_tokens, max_summary_tokens=self.max_summary_tokens)
        rank, world_size = trainer.global_rank, trainer.world_size
        shard = trainer.datamodule.videos("val")[: self.num_clips][rank::world_size]  # whole videos, as eval.py
        desc = f"streaming validation, epoch {trainer.current_epoch}" + (f", rank {rank}" if world_size > 1 else "")
        return _in_clip_order(stream_clips(generator, shard, self.settings, self.thresholds, desc=desc,
                                                batch_size=self.batch_size), world_size)

    def _score(self, trainer: L.Trainer, streamed: dict[str, list[StreamedClip]]) -> dict[str, dict[str, float]]:
        """Scores every setting and reports: table, plots, stream_metrics.json, wandb."""
        encoder = load_encoder(self.encoder_source, self.models_dir)  # loaded once per process
        results = {s: score(s, self.thresholds, streamed[s], encoder, self.window) for s in self.settings}
        metrics = {s: r.metrics for s, r in results.items()}
        clips = [c.clip for c in streamed[self.settings[0]]]
        out = self.dirpath / f"epoch{trainer.current_epoch:03d}"
        plots = save_plots(results, out, self.max_plots)
        (out / "stream_metrics.json").write_text(json.dumps(
            {"encoder": encoder.name, "epoch": trainer.current_epoch, "thresholds": self.thresholds,
             "clips": [c.id for c in clips], "settings": metrics}, indent=2) + "\n")
        log.info("streaming validation, epoch %d (%d clips, encoder %s):\n%s", trainer.current_epoch, len(clips),
                 encoder.name, metrics_table(metrics))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"stream_encoder": encoder.name}, allow_val_change=True)
                log_to_wandb(logger, results, plots, "stream")
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"latest": self.latest}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.latest = state_dict["latest"]


def _in_clip_order(streamed: dict[str, list[StreamedClip]], world_size: int) -> dict[str, list[StreamedClip]]:
    """Every rank's streamed clips, in clip order: rank r streamed clips r, r + world_size, ..."""
    if world_size == 1:
        return streamed
    shards: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(shards, streamed)
    # round robin over the ranks; a rank may hold one clip fewer than rank 0
    return {s: [c for c in chain.from_iterable(zip_longest(*(shard[s] for shard in shards))) if c is not None]
            for s in streamed}
