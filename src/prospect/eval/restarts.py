"""Teacher-forced replies after a restart: does the model go on from what a restarted cache holds?

After a summarize or dst_state restart the cache holds the prompt with the tracked state (and, for summarize, the
progress summary); the first reply after it must take its step from there, where every other reply can follow
the replies said before it. A stream mixes this with every other decision (when to speak, what the DST turn
said, where the budget fell); teacher-forced it is one question per restart. Each clip is cut as training cuts
it for a restart (SequenceBuilder.build) and the first reply after each cut counts as said when the model's
argmax gives every token of the reference reply; every reply of the whole clips, counted the same way, is the
level to compare with (docs/evaluation.md, "Replies after a restart"). The summary a summarize cut closes with
is what the restarted prompt carries in a stream, where the model writes it itself: it counts as written when
the argmax gives every token of the reference progress.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prospect.data.clip import Clip
from prospect.data.sequence import IGNORE, RESTARTS, TokenSequence
from prospect.eval.streaming import FeatureMemo
from prospect.model.features import FeatureStore
from prospect.model.vision import embed_with_frames
from prospect.stream.generator import StreamingGenerator


@torch.no_grad()
def replies_after_restarts(generator: StreamingGenerator, clips: Sequence[Clip], restart_len: int,
                           restarts: Sequence[str] = RESTARTS, store: FeatureStore | None = None
                           ) -> dict[str, dict[str, float]]:
    """{"whole": ..., "<restart>": ..., "summaries": ...}: {"accuracy": share said right, "replies": how many} of
    every reply of the whole clips, and of the first reply after each cut of the clips cut at `restart_len`
    tokens as `restart` leaves the cache (a part with no reply before its closing summary counts for nothing);
    with summarize among `restarts`, {"accuracy": share written right, "summaries": how many} of the summaries
    its cuts close with. Frame features come as streaming takes them (FeatureMemo: `store` when given, else the
    vision encoder), each once per video."""
    said: dict[str, list[bool]] = {name: [] for name in ("whole", *restarts)}
    written: list[bool] = []
    memo = FeatureMemo(generator, store)
    for clip in clips:
        for seq in generator.builder.build(clip):
            said["whole"] += _said(generator, clip, seq, memo)[0]
        for restart in restarts:
            for k, part in enumerate(generator.builder.build(clip, restart_len, restart)):
                if k == 0 and restart != "summarize":
                    continue  # no restart before it, and no summary after it: nothing to ask
                replies, summary = _said(generator, clip, part, memo)
                said[restart] += replies[:1] if k else []
                if restart == "summarize" and summary is not None:
                    written.append(summary)
        memo.forget(clip)
    result = {name: {"accuracy": _share(s), "replies": len(s)} for name, s in said.items()}
    if "summarize" in restarts:
        result["summaries"] = {"accuracy": _share(written), "summaries": len(written)}
    return result


def _share(right: list[bool]) -> float:
    return sum(right) / len(right) if right else float("nan")


def _said(generator: StreamingGenerator, clip: Clip, seq: TokenSequence, memo: FeatureMemo
          ) -> tuple[list[bool], bool | None]:
    """Of `seq`, a sequence of `clip`: per learned reply, in order, is the argmax every token of it? And of its
    closing summary (None without one), is the argmax every token of it?"""
    vlm = generator.vlm
    ids = torch.tensor([seq.input_ids], device=generator.device)
    frames = torch.cat([memo(clip, f) for f in seq.frames]) if seq.frames else None
    hidden = vlm.model.text_model(inputs_embeds=embed_with_frames(vlm, ids, frames)).last_hidden_state[0]
    positions = [p for p, t in enumerate(seq.lm_targets) if t != IGNORE]
    if not positions:
        return [], None
    right = (vlm.lm_head(hidden[positions]).argmax(-1).cpu() == torch.tensor([seq.lm_targets[p] for p in positions]))
    starts = [0] + [k for k in range(1, len(positions)) if positions[k] != positions[k - 1] + 1]
    turns = [bool(right[a:b].all()) for a, b in zip(starts, [*starts[1:], len(positions)], strict=True)]
    closes = _asks_summary(seq.input_ids, generator.summarize_request_ids)
    return (turns[:-1], turns[-1]) if closes else (turns, None)


def _asks_summary(ids: list[int], request: list[int]) -> bool:
    """Whether a sequence holds the summary request (a cut part's closing one, or a later split's own)."""
    n = len(request)
    return any(ids[i:i + n] == request for i in range(len(ids) - n + 1))
