"""Cache compression strategies. Each says when to compress, how, and how the tokens that follow are positioned
(`position_mode`):

- `keep`: new tokens continue the original position numbering (kept keys stay where they were);
- `rerotate`: positions are contiguous again (kept keys re-rotated, or the cache rebuilt from a new prompt),
  so they stay below the budget on endless streams;
- `length`: new tokens are numbered from the cache length, as upstream (transformers' default) numbers them; after
  a drop from the middle they take the positions of kept keys. Only the upstream_* settings use it.

Ours compress before a frame when it and the turns it may generate (plus what compressing adds) would pass the
budget, and the cache never passes it. The upstream_* settings reproduce ProAssist's three strategies as its code
runs them (docs/evaluation.md, "Context strategies: ours and upstream's"), its caps on generated text included.

A strategy acts on a stream's CacheState and the little else a stream offers it (`Compressible`: its prompts,
frames and a summary); it knows nothing of the generator. Named settings `<strategy>_<budget>` (budget 1k, 2k or
4k tokens) and `none` are built by `make_strategy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from prospect.stream.cache import CacheState

if TYPE_CHECKING:
    from prospect.stream.generator import FrameInput


class Compressible(Protocol):
    """What a strategy may use of the stream it compresses (the generator's `Stream`)."""

    cache: CacheState
    initial_prompt: list[int]  # the prompt the stream started from
    summary_reserve: int  # tokens `summarize` adds to the cache
    last: FrameInput | None  # the frame fed last (None before the first)
    first_user_step_end: int | None  # cache tokens after the frame that fed the first user turn (None: not yet)

    def prompt(self) -> list[int]:
        """A restart's prompt: the tracked DST state, the progress and the knowledge turn seen so far."""

    def summarize(self, frame: str = "upcoming", gate: float | None = None) -> str:
        """Ask for a progress summary into the cache, [request][frame][summary], with the `upcoming` frame or the
        `last` one fed; with a `gate`, only when the speaking head at that frame reaches it (else the summary is
        ""). The summary becomes the progress restarted prompts carry; its text."""


@dataclass
class Strategy:
    budget: int | None = None  # most tokens the cache may hold; None: unbounded
    max_new_tokens: int | None = None  # most tokens a generated turn may take; None: the generator's
    max_summary_tokens: int | None = None  # most tokens a summary may take; None: the generator's
    name = "none"
    position_mode = "keep"

    def make_room(self, stream: Compressible, needed: int) -> bool:
        """Before a frame: compress when `due`, then position as `position_mode` says; whether it compressed.
        Raises when the frame and its turns (`needed` tokens) do not fit the budget even then."""
        if self.budget is None:
            return False
        cache = stream.cache
        compress = self.due(stream, needed)
        if compress:
            self.compress(stream)
            if self.position_mode == "rerotate":
                cache.rerotate()
            elif self.position_mode == "length":
                cache.number_from_length()
        self.check_fits(cache, needed)
        return compress

    def due(self, stream: Compressible, needed: int) -> bool:
        """When `needed` more tokens and what compressing adds first would pass the budget."""
        return stream.cache.tokens + needed + self.extra_reserve(stream) > self.budget

    def check_fits(self, cache: CacheState, needed: int) -> None:
        if cache.tokens + needed > self.budget:
            raise ValueError(f"{self.name}: {cache.tokens} tokens after compression plus {needed} for the next "
                             f"frame and its turns exceed the budget of {self.budget}")

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
    """Clear the cache and restart from the initial prompt (the knowledge turn goes; upstream's drop_all keeps
    not even the prompt: upstream_drop_all)."""

    name = "drop_all"
    position_mode = "rerotate"

    def compress(self, stream: Compressible) -> None:
        stream.cache.restart(stream.initial_prompt)


@dataclass
class DropMiddle(Strategy):
    """Keep the prefix (prompt with the task, turns before the first frame, the first user turn and the knowledge
    turn: these tokens alone, where upstream keeps all of its cache up to the end of the frame that fed the first
    user turn) and the most recent `keep_recent` tokens."""

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
    """Ask the model for a progress summary in training's layout ([request][the upcoming frame][summary]; upstream
    feeds the frame just fed again and lets the speaking head veto it: upstream_summarize), then restart from the
    prompt carrying that summary and the knowledge turn."""

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


@dataclass
class UpstreamStrategy(Strategy):
    """ProAssist's context handling (mmassist/eval/runners/stream_inference.py, `manage_kv_cache`): after a frame
    and its turns, once the cache holds `budget - reserved` tokens (its eval_max_seq_len minus reserved_seq_len,
    128); nothing keeps the cache within the budget. New tokens are numbered from the cache length. Upstream's
    caps: 100 tokens a generated turn (`fast_greedy_generate`'s max_length), 512 a summary."""

    reserved: int = 128
    max_new_tokens: int | None = 100
    max_summary_tokens: int | None = 512
    position_mode = "length"

    def due(self, stream: Compressible, needed: int) -> bool:
        return stream.last is not None and stream.cache.tokens >= self.budget - self.reserved

    def check_fits(self, cache: CacheState, needed: int) -> None:
        """Upstream sets no limit: a long first-user step, reply or summary takes the cache past the budget."""


@dataclass
class UpstreamDropAll(UpstreamStrategy):
    """Upstream's drop_all: the cache is emptied, its prompt too, and the next frame starts it at position 0
    (upstream's released models have no frame separator, so nothing of the frame before is fed again)."""

    name = "upstream_drop_all"

    def compress(self, stream: Compressible) -> None:
        stream.cache.restart([])


@dataclass
class UpstreamDropMiddle(UpstreamStrategy):
    """Upstream's drop_middle: keep the cache as it stood after the frame that fed the first user turn (prompt,
    every frame up to that one and their turns) and its last `keep_recent` tokens; new tokens are numbered from
    the cache length, so they take the positions of kept recent keys (upstream's bug, reproduced). Before the
    first user turn it empties the cache, as upstream_drop_all."""

    keep_recent: int = 512
    name = "upstream_drop_middle"

    def compress(self, stream: Compressible) -> None:
        if stream.first_user_step_end is None:
            stream.cache.restart([])
        else:
            stream.cache.keep(torch.arange(stream.first_user_step_end), self.keep_recent)


@dataclass
class UpstreamSummarize(UpstreamStrategy):
    """Upstream's summarize_and_drop: the request and the frame just fed, again; a summary only where the speaking
    head there reaches `gate` (upstream's not-talk probability at most 0.5), of up to 512 tokens; then restart from
    the prompt carrying that summary (or none) and the knowledge turn."""

    gate: float = 0.5
    name = "upstream_summarize"

    def compress(self, stream: Compressible) -> None:
        stream.summarize("last", self.gate)
        stream.cache.restart(stream.prompt())


STRATEGIES = {cls.name: cls for cls in (NoCompression, DropAll, DropMiddle, SinkRecent, SummarizeAndDrop,
                                        DstStateRefresh, UpstreamDropAll, UpstreamDropMiddle, UpstreamSummarize)}
BUDGETS = {"1k": 1024, "2k": 2048, "4k": 4096}


def make_strategy(setting: str, **overrides) -> Strategy:
    """`none`, or `<strategy>_<budget>` such as `drop_middle_2k`, `summarize_4k`, `upstream_drop_middle_4k`.
    Windows of drop_middle / sink_recent default to half the budget; upstream_drop_middle keeps upstream's 512."""
    if setting == "none":
        return NoCompression(**overrides)
    name, _, budget = setting.rpartition("_")
    if name not in STRATEGIES or budget not in BUDGETS:
        raise ValueError(f"unknown streaming setting {setting!r}: use none or <strategy>_<1k|2k|4k> with strategy "
                         f"one of {', '.join(n for n in STRATEGIES if n != 'none')}")
    tokens = BUDGETS[budget]
    defaults = {"keep_recent": tokens // 2} if name in ("drop_middle", "sink_recent") else {}
    return STRATEGIES[name](budget=tokens, **{**defaults, **overrides})
