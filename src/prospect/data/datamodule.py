"""LightningDataModule: clip files (or the synthetic default, generated on first use) -> rendered sequences ->
batches. Sequences are rendered once per split; frames are read and negative frames drawn on access, the
negatives re-drawn each epoch from (seed, epoch, index) so a resumed run sees the same draws.

It knows nothing of models: what a model decides (its tokenizer, frame tokens, how it takes frames) is handed
over by `attach` once the model is built."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import cycle, islice
from pathlib import Path

import lightning as L
import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from prospect.data.batch import Sample, collate
from prospect.data.clip import Clip
from prospect.data.dataset import ClipDataset
from prospect.data.sequence import RESTARTS, SequenceBuilder, decision_mask
from prospect.data.splits import whole_videos

SPLITS = ("train", "val", "test")
# (clip, frame indices) -> (pixel values [F, 3, S, S] or empty, frame features [F, tokens_per_frame, H] or None):
# how the model takes frames (prospect.model.features.SampleFrames)
FrameReader = Callable[[Clip, list[int]], tuple[Tensor, Tensor | None]]


class SequenceDataset(Dataset):
    """The sequences of a list of clips, with frames and the decision mask produced on access. A share
    `restart_share` of the clips (drawn once from the seed) is cut into sequences of at most a length drawn per
    clip between 2/3 of `restart_len` and `restart_len` tokens (the lower end still holds a restarted prompt, a
    frame with its turns and a summary), each clip as one of the `restarts` strategies (drawn
    with it: SequenceBuilder.build) leaves the cache after a restart, which a model trained only on whole clips
    never sees. The drawn lengths put restarts anywhere in a clip, not always at the same point of a task."""

    def __init__(self, clips: list[Clip], builder: SequenceBuilder, frames: FrameReader, neg_frame_rate: float,
                 supervision: str, seed: int, restart_len: int | None = None, restart_share: float = 0.0,
                 restarts: Sequence[str] = RESTARTS):
        self.clips, self.frames = clips, frames
        rng = np.random.default_rng([seed, 1])
        restarted = rng.random(len(clips)) < restart_share
        kinds = rng.integers(len(restarts), size=len(clips))
        limits = rng.integers((restart_len or 0) * 2 // 3, (restart_len or 0) + 1, size=len(clips))
        self.items = [(c, seq) for c, clip in enumerate(clips)  # clips cut only for length: upstream's layout
                      for seq in (builder.build(clip, int(limits[c]), restarts[kinds[c]]) if restarted[c]
                                  else builder.build(clip))]
        self.neg_frame_rate = neg_frame_rate
        self.supervision, self.seed = supervision, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        c, seq = self.items[index]
        clip = self.clips[c]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        mask = decision_mask(seq, self.neg_frame_rate, rng, self.supervision)
        pixel_values, features = self.frames(clip, seq.frames)
        return Sample(seq, pixel_values, mask, features)


class EpochShuffle(DistributedSampler):
    """A shuffle that depends only on (seed, epoch): exact across resumes. Lightning calls set_epoch.

    With `lengths`, the shuffled order is cut into groups of `group` indices, each sorted by length (longest
    first), so consecutive indices, the batches, hold sequences of similar length and little padding; under DDP
    each of `num_replicas` ranks takes every num_replicas-th index of this order (wrapping around, so that all get
    as many) and keeps that property. A DistributedSampler, so that Lightning uses it as it is: it wraps any other
    sampler in one that shuffles it again, length groups and all."""

    def __init__(self, length: int, seed: int, lengths: list[int] | None = None, group: int = 64,
                 num_replicas: int = 1, rank: int = 0):
        super().__init__(range(length), num_replicas, rank, shuffle=False, seed=seed)
        self.lengths, self.group = lengths, group

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset)).tolist()
        if self.lengths is not None:
            order = [i for start in range(0, len(order), self.group)
                     for i in sorted(order[start:start + self.group], key=lambda i: -self.lengths[i])]
        return islice(cycle(order), self.rank, self.total_size, self.num_replicas)


class ProspectDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str = "data/synthetic",
        files: dict[str, str] | None = None,
        frames_root: str | None = None,
        num_videos: int | None = None,
        synthetic: dict | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        neg_frame_rate: float = 0.1,
        supervision: str = "perframe",
        max_seq_len: int | None = 4096,
        feature_store: str | None = None,
        group_by_length: bool = True,
        restart_len: int | None = None,
        restart_share: float = 0.0,
        restarts: Sequence[str] = RESTARTS,
        seed: int = 0,
    ):
        super().__init__()
        self.root = Path(root)
        self.files = {**{s: f"{s}.jsonl" for s in SPLITS}, **(files or {})}
        self.frames_root, self.num_videos, self.synthetic = frames_root, num_videos, synthetic
        self.batch_size, self.num_workers = batch_size, num_workers
        self.neg_frame_rate, self.supervision, self.max_seq_len, self.seed = (neg_frame_rate, supervision,
                                                                               max_seq_len, seed)
        if not 0 <= restart_share <= 1:
            raise ValueError(f"restart_share must be in [0, 1], got {restart_share}")
        if not restarts or set(restarts) - set(RESTARTS):
            raise ValueError(f"restarts must name some of {', '.join(RESTARTS)}, got {list(restarts)}")
        self.restart_len, self.restart_share, self.restarts = restart_len, restart_share, list(restarts)
        self.group_by_length = group_by_length
        self.feature_store = feature_store  # path (python -m prospect.data features), opened by the model
        self.builder: SequenceBuilder | None = None  # both given by attach
        self.frames: FrameReader | None = None
        self.datasets: dict[str, SequenceDataset] = {}

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from prospect.data.synthetic import ensure_synthetic

            ensure_synthetic(self.root, self.num_videos, seed=self.seed, **self.synthetic)

    def clips(self, split: str) -> list[Clip]:
        """The validated clips of a split (Arrow-backed, cached by file content)."""
        table = ClipDataset(self.root / self.files[split], root=self.frames_root)
        return [table[i] for i in range(len(table))]

    def videos(self, split: str) -> list[Clip]:
        """The split's clips as whole videos (splits of a dialog merged), for streaming evaluation."""
        return whole_videos(self.clips(split))

    def corpus(self) -> Iterator[str]:
        """Texts of the training clips, for the tiny model's tokenizer (read when iterated)."""
        for clip in self.clips("train"):
            yield from (e.text for e in clip.events)
            yield from (t for t in (clip.task.goal, clip.task.knowledge) if t)
            yield from (f"{s.id} = {s.name}" for s in clip.task.steps)

    def attach(self, tokenizer, tokens_per_frame: int, frames: FrameReader,
               system_prompt: str | None = None, max_positions: int | None = None) -> None:
        """Give the module what the model decides, known once it is built: the tokenizer, image tokens per frame
        and system prompt (None: ours) the sequences are rendered with (split at this module's max_seq_len), and how the
        model takes frames. Sequences longer than the model's `max_positions` are refused here, at the start."""
        for key in ("max_seq_len", "restart_len"):
            if max_positions is not None and (getattr(self, key) or 0) > max_positions:
                raise ValueError(f"data.{key}={getattr(self, key)} is more than the model's max_position_embeddings "
                                 f"({max_positions}): positions past it were never trained")
        self.builder = SequenceBuilder(tokenizer, tokens_per_frame, system_prompt, max_seq_len=self.max_seq_len)
        self.frames = frames
        self.datasets = {}

    def setup(self, stage: str | None = None) -> None:
        if self.builder is None:
            raise RuntimeError("ProspectDataModule.attach(tokenizer, tokens_per_frame, frames) must be called "
                               "before setup")
        for split in SPLITS:
            if split not in self.datasets and (self.root / self.files[split]).exists():
                restarts = (self.restart_len, self.restart_share) if split == "train" else (None, 0.0)
                self.datasets[split] = SequenceDataset(self.clips(split), self.builder, self.frames,
                                                       self.neg_frame_rate, self.supervision, self.seed, *restarts,
                                                       self.restarts)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[split]
        lengths = [len(seq) for _, seq in ds.items] if self.group_by_length and self.batch_size > 1 else None
        ranks = (self.trainer and self.trainer.distributed_sampler_kwargs) or {}  # {num_replicas, rank} under DDP
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                          sampler=EpochShuffle(len(ds), self.seed, lengths, 64 * self.batch_size, **ranks)
                          if shuffle else None,
                          collate_fn=partial(collate, pad_id=self.builder.tokenizer.pad_token_id),
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def set_epoch(self, epoch: int) -> None:
        if "train" in self.datasets:
            self.datasets["train"].set_epoch(epoch)
