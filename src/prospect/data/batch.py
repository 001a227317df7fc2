"""Samples to batches: right-padded token ids, all frames of the batch in one tensor, and flat index lists of
the positions each loss reads (so the model gathers a few hidden states instead of keeping every position)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from prospect.data.sequence import IGNORE, TokenSequence


@dataclass
class Sample:
    seq: TokenSequence
    pixel_values: Tensor  # [F, 3, S, S], the frames of seq.frames in order (empty with frame_features)
    mask: list[bool]  # per frame: counts in the head losses
    frame_features: Tensor | None = None  # [F, tokens_per_frame, H] from a feature store, instead of pixels


@dataclass
class Batch:
    input_ids: Tensor  # [B, T]
    attention_mask: Tensor  # [B, T]
    pixel_values: Tensor  # [N, 3, S, S], N = frames of all sequences, in sequence order
    frame_features: Tensor | None  # [N, tokens_per_frame, H] instead of pixel_values, from a feature store
    frame_index: Tensor  # [D] absolute frame index of each decision
    frame_time: Tensor  # [D] its timestamp in seconds
    decision_batch: Tensor  # [D] sequence of each frame's decision
    decision_pos: Tensor  # [D] its position
    decision_mask: Tensor  # [D] bool: counts in the head losses
    speaking: Tensor  # [D] float 0/1
    dst_update: Tensor  # [D] float 0/1
    lm_batch: Tensor  # [M] positions whose next token is learned assistant text
    lm_pos: Tensor
    lm_targets: Tensor
    dst_gen_batch: Tensor  # [K] positions whose next token is learned DST text
    dst_gen_pos: Tensor
    dst_gen_targets: Tensor
    clip_ids: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def collate(samples: list[Sample], pad_id: int) -> Batch:
    longest = max(len(s.seq) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    dec: list[list] = [[], [], [], [], [], []]
    lm: list[list] = [[], [], []]
    dst: list[list] = [[], [], []]
    for b, s in enumerate(samples):
        n = len(s.seq)
        input_ids[b, :n] = torch.tensor(s.seq.input_ids)
        attention_mask[b, :n] = 1
        for row, values in zip(dec, ([b] * len(s.seq.frames), s.seq.decision_positions, s.mask, s.seq.speaking,
                                     s.seq.dst_update, s.seq.frames), strict=True):
            row.extend(values)
        for rows, targets in ((lm, s.seq.lm_targets), (dst, s.seq.dst_gen_targets)):
            for pos, t in enumerate(targets):
                if t != IGNORE:
                    rows[0].append(b)
                    rows[1].append(pos)
                    rows[2].append(t)
    long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    features = [s.frame_features for s in samples]
    if any(f is None for f in features):
        features = None  # every sample has features, or none
    return Batch(
        input_ids=input_ids, attention_mask=attention_mask,
        pixel_values=torch.cat([s.pixel_values for s in samples]),
        frame_features=None if features is None else torch.cat(features), frame_index=long(dec[5]),
        frame_time=torch.tensor([f / s.seq.fps for s in samples for f in s.seq.frames], dtype=torch.float64),
        decision_batch=long(dec[0]), decision_pos=long(dec[1]), decision_mask=torch.tensor(dec[2], dtype=torch.bool),
        speaking=torch.tensor(dec[3], dtype=torch.float), dst_update=torch.tensor(dec[4], dtype=torch.float),
        lm_batch=long(lm[0]), lm_pos=long(lm[1]), lm_targets=long(lm[2]),
        dst_gen_batch=long(dst[0]), dst_gen_pos=long(dst[1]), dst_gen_targets=long(dst[2]),
        clip_ids=[s.seq.clip_id for s in samples],
    )
