"""Data parallel on CPU (gloo, 2 processes): a rank whose batches hold no positive frame must neither hang nor
drift from its peer; streaming validation shards its clips over the ranks and scores them together; each epoch
trains in a new order on every rank. The first test drives the real Lightning Trainer over ProspectLitModule with
hand-made per-rank batches; the second runs `train.py trainer=ddp` as users do. FSDP is refused up front."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf
from PIL import Image
from test_sequence import hand_clip
from torch.utils.data import DataLoader

from prospect.data.batch import Sample, collate
from prospect.data.datamodule import EpochShuffle, ProspectDataModule
from prospect.data.sequence import IGNORE, SequenceBuilder
from prospect.eval.callback import _in_clip_order
from prospect.eval.encoder import load_encoder
from prospect.eval.streaming import evaluate
from prospect.model.backbone import load_backbone
from prospect.model.lit_module import ProspectLitModule
from prospect.model.losses import LossConfig
from prospect.model.prospect_model import ProspectModel
from prospect.model.vision import pixels
from prospect.stream.generator import StreamingGenerator

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
        seq.lm_targets, seq.dst_gen_targets = [IGNORE] * len(seq), [IGNORE] * len(seq)
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

    def set_epoch(self, epoch: int) -> None:  # ProspectLitModule calls it each epoch; nothing is re-drawn here
        pass


def _checksum(module: ProspectLitModule) -> str:
    """sha256 over the bytes of every trained parameter, in name order."""
    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in module.named_parameters() if p.requires_grad):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RecordRank(L.Callback):
    """Writes, per rank, the trained-state checksum before and after fitting, the logged metrics and the clips of
    each epoch's training batches in order."""

    def __init__(self, out_dir: Path | str):
        self.out_dir, self.order = Path(out_dir), {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = _checksum(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.order.setdefault(trainer.current_epoch, []).extend(batch.clip_ids)

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {"start": self.start, "end": _checksum(pl_module), "global_step": trainer.global_step,
                  "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}, "order": self.order}
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
    module = ProspectLitModule(ProspectModel(vlm, 4, train_connector=True), LossConfig(),
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
    for key in ("train/loss_epoch", "val/loss"):  # per-rank values (see ProspectLitModule._step)
        assert math.isfinite(rank0["metrics"][key]) and math.isfinite(rank1["metrics"][key]), key


@pytest.mark.slow
def test_train_py_ddp_on_cpu(tmp_path):
    """`train.py trainer=ddp` on two CPU processes (Lightning relaunches the script for rank 1), two epochs:
    each rank streams one of the two validation clips, rank 0 scores both, and both ranks log its numbers; each
    rank trains on its share of the epoch's shuffle (one sequence per clip: data.restart_share=0)."""
    run_dir, settings = tmp_path / "run", ["none"]
    cmd = [sys.executable, "train.py", "+experiment=perframe", "+debug=fast", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", "trainer.max_epochs=2", "+trainer.limit_train_batches=2",
           # what this test counts on: two validation clips of two steps, one sequence per training clip
           "data.num_videos=4", "data.synthetic.val_videos=2", "data.synthetic.eval_num_steps=[2,2]",
           "data.restart_share=0", "callbacks.streaming_validation.num_clips=2",
           f"stream.settings=[{','.join(settings)}]", f"data.root={tmp_path / 'data'}",
           f"model.backbone.tiny_dir={tmp_path / 'tiny'}", f"hydra.run.dir={run_dir}",
           "+callbacks.record._target_=test_ddp.RecordRank", f"+callbacks.record.out_dir={tmp_path}",
           "callbacks.streaming_validation.encoder=all-MiniLM-L6-v2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["test/loss"])
    assert math.isfinite(metrics["stream/none/f1"]) and "best/stream/none/f1" in metrics
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert all(f"streaming validation, epoch 1, rank {r}" in result.stderr for r in (0, 1))  # progress bars
    # both ranks logged the same numbers: a checkpoint monitor runs on each
    stream = {k: v for k, v in rank0["metrics"].items() if k.startswith("stream/")}
    assert stream and stream == pytest.approx({k: rank1["metrics"][k] for k in stream}, nan_ok=True)
    # ... and they are those of streaming both clips in one process, in clip order
    val = ProspectDataModule(root=str(tmp_path / "data")).clips("val")
    report = json.loads((run_dir / "plots" / "stream" / "epoch001" / "stream_metrics.json").read_text())
    assert report["clips"] == [c.id for c in val] and len(val) == 2
    generator = StreamingGenerator.from_pretrained(str(run_dir / "checkpoints" / "last.ckpt"), max_new_tokens=4)
    single = evaluate(generator, val, settings, load_encoder("all-MiniLM-L6-v2"), (0.5, 0.5))  # the run's encoder
    for s in settings:
        assert report["settings"][s]["clips"] == 2
        expected = {k: v for k, v in single[s].metrics.items() if k != "ms_per_frame"}
        assert {k: report["settings"][s][k] for k in expected} == pytest.approx(expected, nan_ok=True), s
        assert stream[f"stream/{s}/f1"] == pytest.approx(expected["f1"])
    # rank r trains on every other sequence of the epoch's single-process order (the first two: limit_train_batches),
    # not on a reshuffle of it that would scatter EpochShuffle's length groups; the order changes with the epoch
    train = [c.id for c in ProspectDataModule(root=str(tmp_path / "data")).clips("train")]
    for r, rank in enumerate((rank0, rank1)):
        for epoch in (0, 1):
            shuffle = EpochShuffle(len(train), seed=7)
            shuffle.set_epoch(epoch)
            assert rank["order"][str(epoch)] == [train[i] for i in list(shuffle)[r::2][:2]], (r, epoch)
        assert rank["order"]["0"] != rank["order"]["1"]


def test_streamed_clips_come_back_in_clip_order(monkeypatch):
    """Three clips on two ranks: rank 0 streamed clips 0 and 2, rank 1 clip 1, each at two settings."""
    shards = [{"none": ["c0", "c2"], "drop_middle_1k": ["d0", "d2"]}, {"none": ["c1"], "drop_middle_1k": ["d1"]}]
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), shards))
    assert _in_clip_order(shards[0], 2) == {"none": ["c0", "c1", "c2"], "drop_middle_1k": ["d0", "d1", "d2"]}
    assert _in_clip_order(shards[0], 1) is shards[0]  # one process: nothing to gather


def test_streaming_validation_refuses_fsdp(tmp_path):
    """FSDP needs a GPU in Lightning, so the hook gets the strategy `trainer=fsdp` builds on a stand-in trainer."""
    cfg = compose_train(tmp_path, ["trainer=fsdp"])
    trainer = SimpleNamespace(strategy=instantiate(cfg.trainer.strategy))
    callback = instantiate(cfg.callbacks.streaming_validation)
    with pytest.raises(ValueError, match=r"streaming_validation\.num_clips=0 .* or train with trainer=ddp"):
        callback.setup(trainer, None, "fit")
    callback.setup(trainer, None, "test")  # testing a checkpoint does not stream
    off = instantiate(cfg.callbacks.streaming_validation, num_clips=0)
    off.setup(trainer, None, "fit")


def test_streaming_validation_refuses_a_model_loaded_with_another_attention(tmp_path):
    """The training model's attention was chosen when it was loaded; streaming it needs prospect's, so a run with
    transformers' sdpa is refused when the callback sets up, not epochs later."""
    cfg = compose_train(tmp_path, ["model.backbone.attn_implementation=sdpa"])
    callback = instantiate(cfg.callbacks.streaming_validation)
    module = SimpleNamespace(config=OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(ValueError, match="attn_implementation=prospect_sdpa.* not sdpa"):
        callback.setup(SimpleNamespace(strategy=None), module, "fit")
    callback.setup(SimpleNamespace(strategy=None), module, "test")  # testing a checkpoint does not stream
