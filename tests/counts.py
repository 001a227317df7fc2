"""Exact counts worked from token lengths alone, for the tests to assert equality with: how often a cache that
fills chunk by chunk is compressed, and how many sequences a clip is cut into. They restate the documented rules
(strategies.py, SequenceBuilder.build) on plain integers, apart from the code they check."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def restarts(start: int, added: Sequence[int], limit: int, kept: Callable[[int, int], int],
             needed: Sequence[int] | None = None) -> int:
    """How often a cache (or a sequence) holding `start` tokens, grown by `added[i]` tokens at step i, restarts:
    before step i, whenever its tokens and `needed[i]` (default `added[i]`) would pass `limit`, it keeps
    `kept(tokens, i)` tokens."""
    tokens, count = start, 0
    for i, size in enumerate(added):
        if tokens + (size if needed is None else needed[i]) > limit:
            tokens, count = kept(tokens, i), count + 1
        tokens += size
    return count


def compressions_due(budget: int, before: Sequence[int], needed: Sequence[int] = (),
                     upstream_reserved: int | None = None) -> int:
    """The compressions of a stream whose cache held `before[f]` tokens before frame f (the prompt, then each
    record's cache_tokens): ours before every frame whose `needed[f]` tokens (the frame, room for its turns and
    what compressing adds) would take the cache past the budget; upstream's (`upstream_reserved`) before every
    frame but the first once the cache holds budget - reserved tokens."""
    if upstream_reserved is not None:
        return sum(t >= budget - upstream_reserved for t in before[1:])
    return sum(t + n > budget for t, n in zip(before, needed, strict=True))
