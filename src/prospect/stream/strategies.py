"""Cache compression strategies. Each says when to compress (its token budget, minus a reserve for the next
frame and the turns it may generate), how, and how the tokens that follow are positioned (`position_mode`):

- `keep`: new tokens continue the original position numbering (kept keys stay where they were);
- `rerotate`: positions are contiguous again (kept keys re-rotated, or the cache rebuilt from a new prompt),
  so they stay below the budget on endless streams.

A strategy acts on a stream's CacheState and the little else a stream offers it (`Compressible`: its prompts and
a summary); it knows nothing of the generator. Named settings `<strategy>_<budget>` (budget 1k, 2k or 4k tokens)
and `none` are built by `make_strategy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from prospect.stream.cache import CacheState


class Compressible(Protocol):
    """What a strategy may use of the stream it compresses (the generator's `Stream`)."""

    cache: CacheState
    initial_prompt: list[int]  # the prompt the stream started from
    summary_reserve: int  # tokens `summarize` adds to the cache

    def prompt(self) -> list[int]:
        """A restart's prompt: the tracked DST state, the progress and the knowledge turn seen so far."""

    def summarize(self) -> str:
        """Ask for a progress summary into the cache ([request][the upcoming frame][summary]), which becomes the
        progress restarted prompts carry; its text."""


@dataclass
class Strategy:
    budget: int | None = None  # most tokens the cache may hold; None: unbounded
    name = "none"
    position_mode = "keep"

    def make_room(self, stream: Compressible, needed: int) -> bool:
        """Compress when `needed` more tokens (and what compressing adds first) would pass the budget, then
        position as `position_mode` says; whether it compressed. Raises when even then they do not fit."""
        if self.budget is None:
            return False
        cache = stream.cache
        compress = cache.tokens + needed + self.extra_reserve(stream) > self.budget
        if compress:
            self.compress(stream)
            if self.position_mode == "rerotate":
                cache.rerotate()
        if cache.tokens + needed > self.budget:
            raise ValueError(f"{self.name}: {cache.tokens} tokens after compression plus {needed} for the next "
                             f"frame and its turns exceed the budget of {self.budget}")
        return compress

    def compress(self, stream: Compressible) -> None:
        raise NotImplementedError

    def extra_reserve(self, stream: Compressible) -> int:
        """Tokens the compression itself adds before it frees any (the summary request and the summary)."""
        return 0

    def check_room(self, prefix_tokens: int, room: int) -> None:
        """Raise, before streaming, when what this strategy keeps leaves no `room` for a frame and its turns."""


@dataclass
class NoCompression(Strategy):
    """The reference: the cache grows with the stream."""


@dataclass
class DropAll(Strategy):
    """Clear the cache and restart from the initial prompt."""

    name = "drop_all"
    position_mode = "rerotate"

    def compress(self, stream: Compressible) -> None:
        stream.cache.restart(stream.initial_prompt)  # as upstream: the knowledge turn goes too


@dataclass
class DropMiddle(Strategy):
    """Keep the prefix (prompt with the task, turns before the first frame, the first user turn and the knowledge
    turn, as upstream keeps the cache up to its first user input) and the most recent `keep_recent` tokens."""

    keep_recent: int = 512
    name = "drop_middle"
    position_mode = "keep"

    def compress(self, stream: Compressible) -> None:
        stream.cache.keep(stream.cache.prefix, self.keep_recent)

    def check_room(self, prefix_tokens: int, room: int) -> None:
        if prefix_tokens + self.keep_recent + room > self.budget:
            raise ValueError(
                f"{self.name} with a budget of {self.budget} tokens: the prefix it keeps (system prompt, task, turns "
                f"before the first frame, first user turn, knowledge) holds {prefix_tokens} tokens; with the recent "
                f"window ({self.keep_recent}) and room for a frame and its turns ({room}) that is "
                f"{prefix_tokens + self.keep_recent + room}: use a larger budget or a smaller keep_recent")


@dataclass
class SinkRecent(Strategy):
    """StreamingLLM: the first `sink` tokens (attention sinks) and a recent window, re-rotated."""

    sink: int = 4
    keep_recent: int = 512
    name = "sink_recent"
    position_mode = "rerotate"

    def compress(self, stream: Compressible) -> None:
        stream.cache.keep(torch.arange(self.sink), self.keep_recent)


@dataclass
class SummarizeAndDrop(Strategy):
    """Ask the model for a progress summary as upstream trains it ([request][next frame][summary]), then restart
    from the prompt carrying that summary and the knowledge turn."""

    name = "summarize"
    position_mode = "rerotate"

    def compress(self, stream: Compressible) -> None:
        stream.summarize()
        stream.cache.restart(stream.prompt())

    def extra_reserve(self, stream: Compressible) -> int:
        return stream.summary_reserve


@dataclass
class DstStateRefresh(Strategy):
    """Restart from the prompt with the task steps, the *tracked* DST state and the knowledge turn (no
    generation)."""

    name = "dst_state"
    position_mode = "rerotate"

    def compress(self, stream: Compressible) -> None:
        stream.cache.restart(stream.prompt())


STRATEGIES = {cls.name: cls for cls in (NoCompression, DropAll, DropMiddle, SinkRecent, SummarizeAndDrop,
                                        DstStateRefresh)}
BUDGETS = {"1k": 1024, "2k": 2048, "4k": 4096}


def make_strategy(setting: str, **overrides) -> Strategy:
    """`none`, or `<strategy>_<budget>` such as `drop_middle_2k`, `summarize_4k`, `dst_state_1k`. Windows of
    drop_middle / sink_recent default to half the budget."""
    if setting == "none":
        return NoCompression(**overrides)
    name, _, budget = setting.rpartition("_")
    if name not in STRATEGIES or budget not in BUDGETS:
        raise ValueError(f"unknown streaming setting {setting!r}: use none or <strategy>_<1k|2k|4k> with strategy "
                         f"one of {', '.join(n for n in STRATEGIES if n != 'none')}")
    tokens = BUDGETS[budget]
    defaults = {"keep_recent": tokens // 2} if name in ("drop_middle", "sink_recent") else {}
    return STRATEGIES[name](budget=tokens, **{**defaults, **overrides})
