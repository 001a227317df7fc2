"""Streaming evaluation: clips go through a StreamingGenerator at each compression setting, and the dialog, the
DST updates and the per-frame heads are scored against the reference (docs/evaluation.md).

Each clip's frame features are computed once and shared by every setting and threshold (and by the dialogs of
one video, which share its frames). Predicted and reference turns alike are placed at the decision time of
their frame (timebase.frame_end_time of the frame the model spoke after, or that the clip assigns the turn), so
a turn upstream pushed one frame later is scored where it is decided, not at its annotated time. Turns decided
before the first frame are context the stream is given, not reference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from tqdm.auto import tqdm

from prospect.data.clip import Clip
from prospect.data.dst import UPDATE_SEPARATOR
from prospect.data.timebase import frame_end_time
from prospect.eval.content import content_scores
from prospect.eval.dst_metrics import reference_states, state_accuracy, update_similarity
from prospect.eval.matching import Similarity, Turns, VideoMatch, aggregate, match_video, window_for
from prospect.model.features import FeatureStore
from prospect.stream.generator import FrameRecord, StreamingGenerator, StreamOptions
from prospect.stream.scheduler import stream_batched
from prospect.stream.strategies import make_strategy

Thresholds = tuple[float, float]  # (speaking, dst_update)


@dataclass
class StreamedClip:
    clip: Clip
    records: list[FrameRecord]
    malformed_dst: int
    does_not_fit: str | None = None  # the budget could not hold the strategy's keep and a frame (the stream ended)

    def predicted(self) -> tuple[Turns, Turns]:
        """(dialog turns, DST-update turns) the model produced, at their decision times."""
        fps = self.clip.fps
        return ([(frame_end_time(r.frame, fps), r.text) for r in self.records if r.text],
                [(frame_end_time(r.frame, fps), r.dst_text) for r in self.records if r.dst_text])

    def compression_times(self) -> list[float]:
        """Times of the frames before which the cache was compressed."""
        counts = [0] + [r.compressions for r in self.records]
        return [r.time for r, before in zip(self.records, counts, strict=False) if r.compressions > before]


def reference_events(clip: Clip, role: str) -> list:
    """The reference's assistant or dst events decided after a frame of the clip; answers to summary requests
    are not dialog, and turns before the first frame are given to the stream as context."""
    return [e for e in clip.events if e.role == role and e.kind != "summary" and e.frame >= clip.video.start_frame]


def reference_turns(clip: Clip) -> tuple[Turns, Turns]:
    """(dialog turns, DST-update turns) of the reference, at the decision time of their frames."""
    return tuple([(frame_end_time(e.frame, clip.fps), e.text) for e in reference_events(clip, role)]
                 for role in ("assistant", "dst"))


@dataclass
class SettingResult:
    setting: str
    thresholds: Thresholds
    clips: list[StreamedClip]
    dialog: list[VideoMatch]
    dst: list[VideoMatch]
    metrics: dict[str, float]


class FeatureMemo:
    """Frame features [1, tokens_per_frame, H] per (clip, frame), computed once: by the generator's vision path,
    or read from a feature store (python -m prospect.data features) when one is given."""

    def __init__(self, generator: StreamingGenerator, store: FeatureStore | None = None):
        self.source, self.computed = store or generator.encode, {}

    def __call__(self, clip: Clip, frame: int) -> Tensor:
        key = (clip.frames_path, frame)  # the dialogs of one video share its frames
        if key not in self.computed:
            self.computed[key] = self.source(clip, frame)
        return self.computed[key]

    def forget(self, clip: Clip) -> None:
        self.computed = {k: v for k, v in self.computed.items() if k[0] != clip.frames_path}


Run = tuple[str, Thresholds]  # a streaming setting and its (speaking, dst_update) thresholds


def evaluate(generator: StreamingGenerator, clips: Sequence[Clip], settings: Sequence[str],
             similarity: Similarity, thresholds: Thresholds | Mapping[str, Thresholds],
             window: tuple[float, float] | None = None, memo: FeatureMemo | None = None,
             desc: str = "streaming", store: FeatureStore | None = None, batch_size: int = 1
             ) -> dict[str, SettingResult]:
    """Stream every clip at every setting (stream_clips) and score each setting; `window` (seconds) overrides
    the per-dataset windows."""
    per_setting = _per_setting(thresholds, settings)
    streamed = stream_clips(generator, clips, settings, per_setting, memo, desc, store, batch_size)
    return {s: score(s, per_setting[s], streamed[s], similarity, window) for s in settings}


def stream_clips(generator: StreamingGenerator, clips: Sequence[Clip], settings: Sequence[str],
                 thresholds: Thresholds | Mapping[str, Thresholds], memo: FeatureMemo | None = None,
                 desc: str = "streaming", store: FeatureStore | None = None, batch_size: int = 1
                 ) -> dict[str, list[StreamedClip]]:
    """Stream every clip at every setting, unscored: {setting: one StreamedClip per clip, in clip order}, so that
    ranks can stream shards of the clips and score them together. `thresholds` is one (speaking, dst_update)
    pair or one per setting; for the rest see stream_runs."""
    per_setting = _per_setting(thresholds, settings)
    streamed = stream_runs(generator, clips, [(s, per_setting[s]) for s in settings], memo, desc, store, batch_size)
    return {s: streamed[s, per_setting[s]] for s in settings}


def stream_runs(generator: StreamingGenerator, clips: Sequence[Clip], runs: Sequence[Run],
                memo: FeatureMemo | None = None, desc: str = "streaming", store: FeatureStore | None = None,
                batch_size: int = 1) -> dict[Run, list[StreamedClip]]:
    """Stream every clip at every run (setting and thresholds), `batch_size` streams at a time
    (stream.scheduler.stream_batched; one progress bar counts frames): {run: one StreamedClip per clip, in clip
    order}. A stream whose budget cannot hold its strategy's keep and a frame ends there, saying why
    (`does_not_fit`), and the others go on. A given `memo` is kept (reuse it across calls on the same clips);
    otherwise frame features come from `store` when given, else from the vision encoder, and a video's are
    forgotten once its last stream ends."""
    shared = memo is not None  # the caller keeps it (and forgets nothing)
    memo = memo if shared else FeatureMemo(generator, store)
    jobs = [(clip, run) for clip in clips for run in runs]  # clip by clip: few videos' features held at once
    left = Counter(clip.frames_path for clip, _ in jobs)  # streams still to end, per video
    streams = [(clip, StreamOptions(make_strategy(setting), *thresholds, end_on_budget_error=True))
               for clip, (setting, thresholds) in jobs]
    records: list[list[FrameRecord]] = [[] for _ in jobs]
    streamed: dict[Run, list[StreamedClip | None]] = {run: [None] * len(clips) for run in runs}
    with tqdm(total=sum(len(c.frame_indices) for c in clips) * len(runs), desc=desc, unit="frame",
              leave=False) as bar:
        for i, stream, record in stream_batched(generator, streams, batch_size, memo):
            if record is not None:
                records[i].append(record)
                bar.update()
                continue
            clip, run = jobs[i]
            streamed[run][i // len(runs)] = StreamedClip(clip, records[i], stream.malformed_dst, stream.budget_error)
            left[clip.frames_path] -= 1
            if not shared and not left[clip.frames_path]:
                memo.forget(clip)
    return streamed


def _per_setting(thresholds: Thresholds | Mapping[str, Thresholds], settings: Sequence[str]) -> dict[str, Thresholds]:
    return dict(thresholds) if isinstance(thresholds, Mapping) else dict.fromkeys(settings, thresholds)


def score(setting: str, thresholds: Thresholds, streamed: list[StreamedClip], similarity: Similarity,
          window: tuple[float, float] | None = None) -> SettingResult:
    """Dialog and DST matching metrics, DST state accuracy, per-frame head AUROC / AP, cost of streaming; a
    setting whose budget did not fit a clip has no numbers, only `does_not_fit` (its reason) and `clips`."""
    unfit = next((f"{s.clip.id}: {s.does_not_fit}" for s in streamed if s.does_not_fit), None)
    if unfit:
        return SettingResult(setting, thresholds, [], [], [], {"does_not_fit": unfit, "clips": len(streamed)})
    dialog, dst = [], []
    for s in streamed:
        (pred, pred_dst), (ref, ref_dst) = s.predicted(), reference_turns(s.clip)
        w = window or window_for(s.clip.dataset)
        dialog.append(match_video(pred, ref, w, s.clip.fps, similarity))
        dst.append(match_video(pred_dst, ref_dst, w, s.clip.fps, update_similarity, join=UPDATE_SEPARATOR))
    metrics = aggregate(dialog) | content_scores(dialog)
    metrics.update({f"dst_{k}": v for k, v in aggregate(dst, text_metrics=False).items()})
    metrics["dst_state_accuracy"] = state_accuracy(
        [r.dst_state for s in streamed for r in s.records], [st for s in streamed for st in reference_states(s.clip)])
    metrics.update(_head_metrics(streamed))
    records = [r for s in streamed for r in s.records]
    compressions = [s.records[-1].compressions if s.records else 0 for s in streamed]
    metrics.update({
        "ms_per_frame": float(np.mean([r.ms for r in records])) if records else 0.0,
        "peak_cache_tokens": max((r.cache_tokens for r in records), default=0),
        "peak_cache_bytes": max((r.cache_bytes for r in records), default=0),
        "compressions": float(np.mean(compressions)) if compressions else 0.0,
        "min_compressions": min(compressions, default=0),
        "malformed_dst": sum(s.malformed_dst for s in streamed),
        **degeneration(streamed),
        "frames_beyond_max_positions": sum(r.beyond_max_positions for r in records),
        "frames": len(records),
        "clips": len(streamed),
    })
    return SettingResult(setting, thresholds, streamed, dialog, dst, metrics)


def degeneration(streamed: list[StreamedClip]) -> dict[str, float]:
    """Looping text, which matching scores alone miss (ProAssist issue 3: the same reply over and over after a
    summarize restart): the share of replies that repeat an earlier reply of their stream word for word, the
    longest run of one reply said again and again in a stream, and the share of replies cut at the token cap."""
    total = repeated = capped = longest = 0
    for s in streamed:
        seen, previous, run = set(), None, 0
        for r in (r for r in s.records if r.text):
            total, repeated, capped = total + 1, repeated + (r.text in seen), capped + r.reply_capped
            run = run + 1 if r.text == previous else 1
            longest, previous = max(longest, run), r.text
            seen.add(r.text)
    return {"repeated_reply_rate": repeated / total if total else 0.0, "longest_repeat_run": longest,
            "capped_reply_rate": capped / total if total else 0.0}


def _head_metrics(streamed: list[StreamedClip]) -> dict[str, float]:
    """AUROC / AP of each head's per-frame probability against the frames where the reference acts."""
    out = {}
    for head, role, attr in (("speaking", "assistant", "speaking_prob"), ("dst_update", "dst", "dst_update_prob")):
        probs, labels = [], []
        for s in streamed:
            positive = {e.frame for e in reference_events(s.clip, role)}
            probs += [getattr(r, attr) for r in s.records]
            labels += [r.frame in positive for r in s.records]
        if 0 < sum(labels) < len(labels):  # both classes present, otherwise undefined
            p, y = torch.tensor(probs), torch.tensor(labels, dtype=torch.long)
            out[f"{head}_auroc"] = float(binary_auroc(p, y))
            out[f"{head}_ap"] = float(binary_average_precision(p, y))
    return out


def best_threshold(thresholds: Sequence[float], score: Callable[[float], float]) -> float:
    """The threshold of the best score; of several that tie, the middle one (the lower of the two middle ones),
    the farthest from where the score falls. A few calibration clips often score every threshold alike, and the
    lowest of a tie then speaks at every borderline frame of the evaluated split (README, "What the demo reaches")."""
    best = max(score(t) for t in thresholds)
    tied = sorted(t for t in thresholds if score(t) == best)
    return tied[(len(tied) - 1) // 2]


def calibrate(generator: StreamingGenerator, clips: Sequence[Clip], settings: Sequence[str],
              similarity: Similarity, speaking: Sequence[float], dst_update: Sequence[float], default: Thresholds,
              window: tuple[float, float] | None = None, store: FeatureStore | None = None, batch_size: int = 1
              ) -> dict[str, dict]:
    """Per setting, the speaking threshold with the best dialog F1 (DST threshold at its default), then the DST
    threshold with the best DST F1 at that speaking threshold (ties: best_threshold; frame features from `store`
    when given). Every speaking threshold of every setting streams in one batched pass, then every DST threshold.
    A setting whose budget does not fit at some threshold keeps the `default` thresholds and says why
    (`does_not_fit`).
    Returns {setting: {"thresholds": (s, d), "grid": [{"speaking_threshold", "dst_update_threshold", "f1",
    "dst_f1"}, ...], "does_not_fit" where it did not}}."""
    memo = FeatureMemo(generator, store)
    grid: dict[str, dict[Thresholds, dict]] = {s: {} for s in settings}

    def run(runs: list[Run], what: str) -> None:
        todo = [(s, t) for s, t in runs if t not in grid[s]]
        streamed = stream_runs(generator, clips, todo, memo, f"calibrating {what}", batch_size=batch_size)
        for (s, t), clips_streamed in streamed.items():
            grid[s][t] = score(s, t, clips_streamed, similarity, window).metrics

    def fitting() -> list[str]:
        return [s for s in settings if not any("does_not_fit" in m for m in grid[s].values())]

    run([(s, (p, default[1])) for p in speaking for s in settings], "speaking")
    best_speaking = {s: best_threshold(speaking, lambda p, s=s: grid[s][(p, default[1])]["f1"]) for s in fitting()}
    run([(s, (best_speaking[s], d)) for d in dst_update for s in best_speaking], "DST updates")
    out = {}
    for s in settings:
        out[s] = {"thresholds": default}
        if s in fitting():
            best_dst = best_threshold(dst_update, lambda d, s=s: grid[s][(best_speaking[s], d)]["dst_f1"])
            out[s]["thresholds"] = (best_speaking[s], best_dst)
        else:
            out[s]["does_not_fit"] = next(m["does_not_fit"] for m in grid[s].values() if "does_not_fit" in m)
        out[s]["grid"] = [{"speaking_threshold": t[0], "dst_update_threshold": t[1], "f1": m.get("f1"),
                           "dst_f1": m.get("dst_f1")} for t, m in sorted(grid[s].items())]
    return out


def dialog_rows(result: SettingResult) -> list[list]:
    """Generated vs reference turns of one setting, in time order per clip: matched pairs side by side,
    redundant generations and missed references alone. Columns: DIALOG_COLUMNS."""
    rows = []
    for kind, matches in (("assistant", result.dialog), ("dst", result.dst)):
        for s, m in zip(result.clips, matches, strict=True):
            clip_rows = [[s.clip.id, kind, m.pred[i][0], m.pred[i][1], m.ref[k][0], m.ref[k][1], round(score, 3)]
                         for i, k, score in m.pairs]
            clip_rows += [[s.clip.id, kind, m.pred[i][0], m.pred[i][1], None, "", None] for i in m.redundant_rows]
            clip_rows += [[s.clip.id, kind, None, "", m.ref[k][0], m.ref[k][1], None] for k in m.missed_refs]
            rows += sorted(clip_rows, key=lambda r: r[2] if r[2] is not None else r[4])
    return [[result.setting, *r] for r in rows]


DIALOG_COLUMNS = ["setting", "clip", "kind", "generated_time", "generated", "reference_time", "reference",
                  "similarity"]
