"""DST evaluation: ProAssist matching on DST-update turns (a good match needs the same step ids and
transitions), and state accuracy over time against the reference states."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prospect.data.clip import Clip
from prospect.data.dst import UPDATE_SEPARATOR, apply_updates, parse_updates
from prospect.eval.matching import Turns, stream_scores


def _update_set(text: str) -> frozenset | None:
    try:
        return frozenset((u.id, u.transition) for u in parse_updates(text))
    except ValueError:
        return None


def update_similarity(texts_a: list[str], texts_b: list[str]) -> np.ndarray:
    """1 where two DST update texts hold the same (step id, transition) pairs, 0 otherwise (malformed: 0)."""
    a, b = [_update_set(t) for t in texts_a], [_update_set(t) for t in texts_b]
    return np.array([[float(x is not None and x == y) for y in b] for x in a]).reshape(len(a), len(b))


def dst_scores(videos: Sequence[tuple[Turns, Turns]], window: tuple[float, float], fps: float) -> dict[str, float]:
    """stream_scores over DST-update turns (time, "S1->complete; S2->start") with exact-update similarity."""
    return stream_scores(videos, window, fps, update_similarity, join=UPDATE_SEPARATOR)


def reference_states(clip: Clip) -> list[dict[str, str]]:
    """The reference DST state after each frame of the clip (its DST events applied in order)."""
    state = clip.task.start_state()
    by_frame = clip.events_by_frame(lambda e: e.role == "dst")
    for e in by_frame.get(clip.video.start_frame - 1, []):
        state = apply_updates(state, e.updates)
    states = []
    for f in clip.frame_indices:
        for e in by_frame.get(f, []):
            state = apply_updates(state, e.updates)
        states.append(dict(state))
    return states


def state_accuracy(predicted: Sequence[dict[str, str]], reference: Sequence[dict[str, str]]) -> float:
    """Fraction of (frame, step) pairs whose predicted state equals the reference state."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted states for {len(reference)} reference frames")
    pairs = [(p.get(step), state) for p, r in zip(predicted, reference, strict=True) for step, state in r.items()]
    return sum(p == r for p, r in pairs) / len(pairs) if pairs else 1.0
