"""Data parallel on CPU (gloo, 2 processes): a rank whose batches hold no positive frame must neither hang nor
drift from its peer. The first test drives the real Lightning Trainer over ProspectModule with hand-made per-rank
batches; the second runs `train.py trainer=ddp` as users do."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from PIL import Image
from test_sequence import hand_clip
from torch.utils.data import DataLoader

from prospect.data.batch import Sample, collate
from prospect.data.sequence import IGNORE, SequenceBuilder
from prospect.model.backbone import load_backbone
from prospect.model.losses import LossConfig
from prospect.model.module import ProspectModule
from prospect.model.prospect_model import ProspectModel
from prospect.model.vision import pixels

REPO = Path(__file__).parents[1]


def _sample(builder: SequenceBuilder, size: int, seed: int, positives: bool = True, supervised: bool = True):
    """The hand clip (3 frames, one speaking and one DST-update positive) with random frames. positives=False
    zeroes the labels (every frame a negative); supervised=False leaves nothing for any loss."""
    (seq,) = builder.build(hand_clip())
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in seq.frames]
    n = len(seq.frames)
    if not positives:
        seq.speaking, seq.dst_update = [0] * n, [0] * n
    if not supervised:
        seq.lm_targets, seq.dst_targets = [IGNORE] * len(seq), [IGNORE] * len(seq)
    return Sample(seq, pixels(images, size), [supervised] * n)


class PerRankData(L.LightningDataModule):
    """Each rank reads its own list of samples, one per batch (no DistributedSampler)."""

    def __init__(self, per_rank: list[list[Sample]], pad_id: int):
        super().__init__()
        self.per_rank, self.pad_id = per_rank, pad_id

    def _loader(self) -> DataLoader:
        return DataLoader(self.per_rank[self.trainer.global_rank], batch_size=1,
                          collate_fn=partial(collate, pad_id=self.pad_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def set_epoch(self, epoch: int) -> None:  # ProspectModule calls it each epoch; nothing is re-drawn here
        pass


def _checksum(module: ProspectModule) -> str:
    """sha256 over the bytes of every trained parameter, in name order."""
    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in module.named_parameters() if p.requires_grad):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RecordRank(L.Callback):
    """Writes, per rank, the trained-state checksum before and after fitting and the logged metrics."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = _checksum(pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {"start": self.start, "end": _checksum(pl_module), "global_step": trainer.global_step,
                  "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, indent=1))


# rank 1's two batches; rank 0's are ordinary
RANK1_BATCHES = {
    "no_positives": [dict(positives=False), dict(positives=False, supervised=False)],
    "no_supervision_all_epoch": [dict(positives=False, supervised=False)] * 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no_positives", "no_supervision_all_epoch"])
def test_ddp_rank_without_positive_frames(tiny_dir, tmp_path, case):
    vlm, tok = load_backbone(str(tiny_dir))
    builder, size = SequenceBuilder(tok, 4), vlm.config.vision_config.image_size
    per_rank = [[_sample(builder, size, 0), _sample(builder, size, 1)],
                [_sample(builder, size, 2 + i, **kw) for i, kw in enumerate(RANK1_BATCHES[case])]]
    assert not any(s.seq.speaking[i] or s.seq.dst_update[i] for s in per_rank[1] for i in range(3))
    module = ProspectModule(ProspectModel(vlm, 4, train_connector=True), LossConfig(),
                            partial(torch.optim.AdamW, lr=1e-3))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, precision="32-true", max_epochs=1, gradient_clip_val=1.0,
        # gloo raises after the timeout instead of hanging the test run
        strategy=DDPStrategy(start_method="spawn", process_group_backend="gloo", timeout=timedelta(seconds=60)),
        use_distributed_sampler=False, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordRank(tmp_path)])
    trainer.fit(module, datamodule=PerRankData(per_rank, tok.pad_token_id))

    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["global_step"] == rank1["global_step"] == 2
    assert rank0["start"] == rank1["start"]  # DDP broadcast rank 0's parameters
    assert rank0["end"] != rank0["start"], "the parameters did not train"
    assert rank0["end"] == rank1["end"], "ranks drifted apart: gradients were not all-reduced alike"
    # epoch metrics that sync across ranks (torchmetrics) must agree; ModelCheckpoint monitors one of them
    for key in ("val/speaking_auroc", "val/dst_update_auroc", "train/speaking_auroc"):
        assert math.isfinite(rank0["metrics"][key]) and rank0["metrics"][key] == rank1["metrics"][key], key
    for key in ("train/loss_epoch", "val/loss"):  # per-rank values (see ProspectModule._step)
        assert math.isfinite(rank0["metrics"][key]) and math.isfinite(rank1["metrics"][key]), key


@pytest.mark.slow
def test_train_py_ddp_on_cpu(tmp_path):
    """`train.py trainer=ddp` on two CPU processes: Lightning relaunches the script for rank 1."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "+experiment=perframe", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
           "logger=csv",
           "data.num_videos=4", "data.synthetic.val_videos=2", "data.synthetic.test_videos=2",
           "data.synthetic.eval_step_seconds=[2,4]", "callbacks.streaming_validation.num_clips=1",
           "stream.max_new_tokens=4", f"data.root={tmp_path / 'data'}", f"model.backbone.tiny_dir={tmp_path / 'tiny'}",
           f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["test/loss"])
    # rank 0 streamed, both ranks logged its numbers, and the checkpoint was picked by them
    assert math.isfinite(metrics["stream/none/f1"]) and "best/stream/none/f1" in metrics
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
