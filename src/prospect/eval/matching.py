"""ProAssist's turn matching (docs/evaluation.md) and the dialog metrics built on it.

Per video, rows are the frames where the model spoke and columns are all frames of the video. Cost of row i
against column j: a semantic part, 1 - |cos| of the two texts' embeddings when j is a reference frame and 1 when
j is silent, plus a time part 0.3 * (|i - j| / w) ** 1.5 with w = max(|left|, right); cells outside the window
j in [i + left, i + right] are forbidden. Every row gets a distinct column at minimum total cost, solved densely
(scipy's linear_sum_assignment with a large finite cost on forbidden cells: the sparse solver upstream drops
exact-zero costs and mis-assigns). A row on a reference frame is a match (score |cos|), a row on a silent or
forbidden cell is redundant, a reference frame no row took is missed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from prospect.data.timebase import frame_at
from prospect.eval.text_metrics import UPSTREAM, text_scores

# Matching windows (left, right) in seconds, as ProAssist evaluates them: the first name found inside the dataset
# string wins, in this order ("ego4d/narration_val" is narration), else DEFAULT_WINDOW.
WINDOWS = {"narration": (-2.5, 2.5), "ego4d": (-4.0, 8.5), "epickitchens": (-1.5, 3.0), "holoassist": (-1.5, 2.5),
           "egoexolearn": (-2.0, 3.5), "assembly101": (-2.0, 4.0), "wtag": (-3.0, 6.0),
           "synthetic": (-1.5, 2.5)}  # ours: every event is visible in the frame it is decided after
DEFAULT_WINDOW = (-2.5, 2.5)
GOOD_MATCH = 0.5  # semantic score above which a match counts in precision / recall
_FORBIDDEN = 1e6

Turns = Sequence[tuple[float, str]]  # (time in seconds, text)
Similarity = Callable[[list[str], list[str]], np.ndarray]  # texts_a, texts_b -> cosine matrix [len_a, len_b]


@dataclass
class VideoMatch:
    pred: list[tuple[float, str]]
    ref: list[tuple[float, str]]  # reference turns, those sharing a frame joined
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (pred index, ref index, |cos|)
    redundant_rows: list[int] = field(default_factory=list)  # pred indices on a silent frame
    missed_refs: list[int] = field(default_factory=list)  # ref indices no prediction took

    @property
    def redundant(self) -> int:
        return len(self.redundant_rows)

    @property
    def missed(self) -> int:
        return len(self.missed_refs)

    @property
    def time_diffs(self) -> list[float]:
        """|pred - ref| time (s) per good match, as upstream's time_diff averages it."""
        return [abs(self.pred[i][0] - self.ref[k][0]) for i, k, score in self.pairs if score > GOOD_MATCH]

    @property
    def good_pairs(self) -> list[tuple[str, str]]:
        """(predicted text, reference text) of the good matches."""
        return [(self.pred[i][1], self.ref[k][1]) for i, k, score in self.pairs if score > GOOD_MATCH]


def window_for(dataset: str) -> tuple[float, float]:
    """The matching window (seconds) of a dataset, looked up as upstream does."""
    return next((w for name, w in WINDOWS.items() if name in dataset), DEFAULT_WINDOW)


def _frames(turns: Turns, fps: float) -> list[int]:
    return [frame_at(t, fps) for t, _ in turns]


def match_video(pred: Turns, ref: Turns, window: tuple[float, float], fps: float,
                similarity: Similarity, join: str = " ") -> VideoMatch:
    """Match one video's predicted turns to its reference turns. Times are decision times (seconds): a turn
    at time t belongs to frame timebase.frame_at(t, fps), for predictions and references alike (give a
    reference turn at the decision time of the frame its clip assigns it, not at its annotated time).
    Reference turns sharing a frame are one unit, their texts joined by `join` ("; " joins DST updates)."""
    pred_frames = _frames(pred, fps)
    grouped: dict[int, list[tuple[float, str]]] = {}
    for (t, text), f in zip(ref, _frames(ref, fps), strict=True):
        grouped.setdefault(f, []).append((t, text))
    # the unit is the reference *frame*: turns sharing one are joined (time of the first)
    ref = [(turns[0][0], join.join(text for _, text in turns)) for turns in grouped.values()]
    ref_frames = list(grouped)
    ref_by_frame = {f: k for k, f in enumerate(ref_frames)}
    out = VideoMatch(list(pred), ref)
    if not pred:
        out.missed_refs = list(range(len(ref)))
        return out
    left, right = int(window[0] * fps), int(window[1] * fps)  # truncated, as upstream
    w = max(abs(left), right, 1)
    lo = min(pred_frames + ref_frames + [0]) + left
    hi = max(pred_frames + ref_frames) + right
    columns = np.arange(lo, hi + 1)  # every frame any row can reach (silent frames included)
    sims = np.abs(similarity([t for _, t in pred], [t for _, t in ref])) if ref else np.zeros((len(pred), 0))
    cost = np.full((len(pred), len(columns)), _FORBIDDEN)
    for i, fi in enumerate(pred_frames):
        reach = (columns >= fi + left) & (columns <= fi + right)
        semantic = np.ones(len(columns))
        for c in np.flatnonzero(reach):
            k = ref_by_frame.get(int(columns[c]))
            if k is not None:
                semantic[c] = 1.0 - sims[i, k]
        timing = 0.3 * (np.abs(columns - fi) / w) ** 1.5
        cost[i, reach] = (semantic + timing)[reach]
    rows, cols = linear_sum_assignment(cost)
    for i, c in zip(rows, cols, strict=True):
        k = ref_by_frame.get(int(columns[c]))
        if cost[i, c] >= _FORBIDDEN or k is None:
            out.redundant_rows.append(int(i))
        else:
            out.pairs.append((int(i), k, float(sims[i, k])))
    taken = {k for _, k, _ in out.pairs}
    out.missed_refs = [k for k in range(len(ref)) if k not in taken]
    return out


def stream_scores(videos: Sequence[tuple[Turns, Turns]], window: tuple[float, float], fps: float,
                  similarity: Similarity, text_metrics: bool = True, join: str = " ") -> dict[str, float]:
    """Micro-averaged matching metrics over videos of (pred, ref) turns (`join` as in match_video); with
    `text_metrics`, the text scores of the good matches (aggregate)."""
    return aggregate([match_video(pred, ref, window, fps, similarity, join) for pred, ref in videos], text_metrics)


def aggregate(matches: Sequence[VideoMatch], text_metrics: bool = True) -> dict[str, float]:
    """Micro-averaged metrics over videos' matches (videos may differ in fps and window), as upstream's
    StreamEvaluator.compute_metrics defines them (0 where upstream would divide by zero); with `text_metrics`,
    the text scores of the good matches and upstream's `_w` variants, each times the Jaccard index."""
    scores = [score for m in matches for _, _, score in m.pairs]
    matched, good = len(scores), sum(score > GOOD_MATCH for score in scores)
    redundant = sum(m.redundant for m in matches)
    missed = sum(m.missed for m in matches)
    diffs = [d for m in matches for d in m.time_diffs]
    precision = good / (matched + redundant) if matched + redundant else 0.0
    recall = good / (matched + missed) if matched + missed else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    jaccard = good / (matched + missed + redundant) if matched + missed + redundant else 0.0
    semantic = [score for score in scores if score >= GOOD_MATCH]  # upstream's >= here, > for a good match
    out = {"precision": precision, "recall": recall, "f1": f1, "jaccard": jaccard, "matched": matched,
           "good_matched": good, "missed": missed, "redundant": redundant,
           "missing_rate": missed / (matched + missed) if matched + missed else 0.0,
           "redundant_rate": redundant / (matched + redundant) if matched + redundant else 0.0,
           "semantic_score": float(np.mean(semantic)) if semantic else 0.0,
           "time_diff": float(np.mean(diffs)) if diffs else 0.0}
    if text_metrics:
        text = text_scores([p for m in matches for p in m.good_pairs])
        out |= text | {f"{k}_w": jaccard * text[k] for k in UPSTREAM}
    return out
