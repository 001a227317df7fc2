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

Two strategies score what to keep instead of following a rule: attention_scored keeps the tokens the last frame
attended to most (SnapKV / H2O), redundancy_scored drops frames that repeat the frame before them (TimeChat-Online,
InfiniPot-V).

A strategy acts on a stream's CacheState and the little else a stream offers it (`Compressible`: its prompts,
frames and a summary); it knows nothing of the generator. It keeps no state of its own (streams share it): what
it tracks lives in the stream's cache (the prefix that the prefix-keeping strategies mark as the stream feeds
it). Named settings `<strategy>_<budget>` (budget in tokens, `512` or `1k` = 1024) and `none` are built by
`make_strategy`; `sweep_settings` names every strategy at every budget.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from prospect.stream.cache import CacheState

if TYPE_CHECKING:
    from prospect.data.clip import Event
    from prospect.stream.generator import FrameInput


class BudgetError(ValueError):
    """The budget cannot hold what a strategy keeps and the next frame with its turns (eval.py reports such a
    setting as not fitting)."""


class Compressible(Protocol):
    """What a strategy may use of the stream it compresses (the generator's `Stream`)."""

    cache: CacheState
    initial_prompt: list[int]  # the prompt the stream started from
    summary_reserve: int  # tokens `summarize` adds to the cache
    last: FrameInput | None  # the frame fed last (None before the first)
    first_user_seen: bool  # a user turn was fed before the one being fed
    first_user_step_end: int | None  # cache tokens after the frame that fed the first user turn (None: not yet)
    room: int  # tokens a frame and its generated turns may take

    def prompt(self) -> list[int]:
        """A restart's prompt: the tracked DST state, the progress and the knowledge turn seen so far."""

    def restart_ids(self) -> list[int]:
        """What our summarize and dst_state restart from: the prompt, then the reply kept (PromptContext)."""

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
    observes = False  # whether it reads the attention each frame's tokens pay to the cache (CacheState.attention)

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
            raise BudgetError(f"{self.name}: {cache.tokens} tokens after compression plus {needed} for the next "
                              f"frame and its turns exceed the budget of {self.budget}")

    def compress(self, stream: Compressible) -> None:
        raise NotImplementedError

    def extra_reserve(self, stream: Compressible) -> int:
        """Tokens the compression itself adds before it frees any (the summary request and the summary)."""
        return 0

    def start(self, stream: Compressible, prefix_turns: int) -> None:
        """Before the first frame, with the prompt and the turns before it cached; `prefix_turns` tokens of turns
        still to come will join what a strategy that keeps the prefix keeps (the first user turn, knowledge)."""

    def fed(self, stream: Compressible, event: Event, start: int, stop: int) -> None:
        """A turn decided after a frame went into the cache slots start..stop-1."""


@dataclass
class KeepsPrefix(Strategy):
    """A strategy that keeps the prefix (the prompt with the task, the turns before the first frame, the first user
    turn and the knowledge turns: `CacheState.prefix`, marked here as the stream feeds them) and up to `window`
    more tokens (`window_means` says which). Before streaming, and whenever the prefix grows, it checks that the
    prefix, the window and room for a frame and its turns fit the budget."""

    window = "keep_recent"  # the field that holds how many tokens it keeps beyond the prefix
    window_means = "the recent window"

    def start(self, stream: Compressible, prefix_turns: int) -> None:
        cache = stream.cache
        cache.extend_prefix(0, cache.tokens)
        self.check_room(cache.tokens + prefix_turns, stream.room)

    def fed(self, stream: Compressible, event: Event, start: int, stop: int) -> None:
        if event.kind == "knowledge" or event.role == "user" and not stream.first_user_seen:
            stream.cache.extend_prefix(start, stop)
            self.check_room(len(stream.cache.prefix), stream.room)

    def check_room(self, prefix_tokens: int, room: int) -> None:
        """Raise when a prefix of `prefix_tokens`, the window and `room` for a frame and its turns pass the budget."""
        kept = getattr(self, self.window)
        if self.budget is not None and prefix_tokens + kept + room > self.budget:
            raise BudgetError(
                f"{self.name} with a budget of {self.budget} tokens: the prefix it keeps (system prompt, task, turns "
                f"before the first frame, first user turn, knowledge) holds {prefix_tokens} tokens; with "
                f"{self.window_means} ({kept}) and room for a frame and its turns ({room}) that is "
                f"{prefix_tokens + kept + room}: use a larger budget or a smaller {self.window}")


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
class DropMiddle(KeepsPrefix):
    """Keep the prefix (prompt with the task, turns before the first frame, the first user turn and the knowledge
    turn: these tokens alone, where upstream keeps all of its cache up to the end of the frame that fed the first
    user turn) and the most recent `keep_recent` tokens."""

    keep_recent: int = 512
    name = "drop_middle"
    position_mode = "keep"

    def compress(self, stream: Compressible) -> None:
        stream.cache.keep(stream.cache.prefix, self.keep_recent)


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
class AttentionScored(KeepsPrefix):
    """SnapKV / H2O-style eviction: keep the prefix (as drop_middle), the observation window (the last frame fed
    and the turns after it; its last `keep` tokens if it is longer) and, up to `keep` tokens beyond the prefix, the
    earlier tokens that window's frame attended to most. A token's score is the attention the frame's tokens paid
    to it in the frame's own forward pass, averaged over layers, heads and the frame's tokens (CacheState.attention;
    one frame's attention, not accumulated over frames: the simplest exact score); ties keep the older token. Before
    any frame was observed it keeps the most recent tokens, as drop_middle.
    Position mode `keep`: the kept tokens are scattered over the stream, and re-rotating them to contiguous
    positions would change the distances between them, which the model never saw; kept where they were, each
    token after a compression sees what a full forward pass with the dropped tokens masked out would show it."""

    keep: int = 512
    name = "attention_scored"
    position_mode = "keep"
    observes = True
    window, window_means = "keep", "the tokens it keeps beyond it"

    def compress(self, stream: Compressible) -> None:
        cache = stream.cache
        if cache.attention is None:
            cache.keep(cache.prefix, self.keep)
            return
        recent = torch.arange(max(cache.observed_from, cache.tokens - self.keep), cache.tokens)
        earlier = torch.arange(cache.observed_from)
        earlier = earlier[~torch.isin(earlier, cache.prefix)]
        best = torch.sort(cache.attention[earlier], descending=True, stable=True).indices[:self.keep - len(recent)]
        cache.keep(torch.cat([cache.prefix, earlier[best], recent]), 0)


@dataclass
class RedundancyScored(KeepsPrefix):
    """TimeChat-Online / InfiniPot-V-style eviction of repeated frames: walking the cached frames oldest first,
    drop each frame whose features (those fed in its `<image>` slots, flattened) have a cosine similarity above
    `threshold` with the last frame kept before it, until the cache holds the prefix and `keep` more tokens at
    most; if repeats are not enough, then drop the oldest tokens that are not the prefix (as drop_middle). A
    dropped frame's tokens go (the `<image>` slots and the tokens around them); the turns after it stay.
    Position mode `keep`, as attention_scored: the kept frames are scattered over the stream, and kept at their
    positions each token sees what a full forward pass with the dropped tokens masked out would show it."""

    keep: int = 512
    threshold: float = 0.9
    name = "redundancy_scored"
    position_mode = "keep"
    window, window_means = "keep", "the tokens it keeps beyond it"

    def compress(self, stream: Compressible) -> None:
        cache = stream.cache
        excess = cache.tokens - len(cache.prefix) - self.keep
        dropped, last = [], None
        for slots, features in cache.frames():
            if excess <= 0:
                break
            vector = features.flatten().float()
            if last is not None and float(torch.nn.functional.cosine_similarity(vector, last, dim=0)) > self.threshold:
                dropped.append(slots)
                excess -= len(slots)
            else:
                last = vector
        rest = torch.arange(cache.tokens)
        rest = rest[~torch.isin(rest, torch.cat([cache.prefix, *dropped]))]
        cache.keep(torch.cat([cache.prefix, rest[max(excess, 0):]]), 0)


@dataclass
class SummarizeAndDrop(Strategy):
    """Ask the model for a progress summary in training's layout ([request][the upcoming frame][summary]; upstream
    feeds the frame just fed again and lets the speaking head veto it: upstream_summarize), then restart from the
    prompt carrying that summary and the knowledge turn, and the reply kept (the last said with a DST update)."""

    name = "summarize"
    position_mode = "rerotate"

    def compress(self, stream: Compressible) -> None:
        stream.summarize()
        stream.cache.restart(stream.restart_ids())

    def extra_reserve(self, stream: Compressible) -> int:
        return stream.summary_reserve


@dataclass
class DstStateRefresh(Strategy):
    """Restart from the prompt with the task steps, the *tracked* DST state and the knowledge turn (no
    generation), and the reply kept (the last said with a DST update)."""

    name = "dst_state"
    position_mode = "rerotate"

    def compress(self, stream: Compressible) -> None:
        stream.cache.restart(stream.restart_ids())


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


STRATEGIES = {cls.name: cls for cls in (NoCompression, DropAll, DropMiddle, SinkRecent, AttentionScored,
                                        RedundancyScored, SummarizeAndDrop, DstStateRefresh, UpstreamDropAll,
                                        UpstreamDropMiddle, UpstreamSummarize)}
HALF_BUDGET = {"drop_middle": "keep_recent", "sink_recent": "keep_recent", "attention_scored": "keep",
               "redundancy_scored": "keep"}  # the window that defaults to half the budget
BUDGET = re.compile(r"([1-9][0-9]*)(k?)")  # a budget as settings write it: 512 tokens, or 1k = 1024


def budget_tokens(budget: str | int) -> int:
    """A budget as settings write it, `512` or `1k` (1024 tokens), in tokens."""
    found = BUDGET.fullmatch(str(budget))
    if found is None:
        raise ValueError(f"a budget is a positive number of tokens, e.g. 512 or 1k (1024), not {budget!r}")
    return int(found[1]) * (1024 if found[2] else 1)


def make_strategy(setting: str, **overrides) -> Strategy:
    """`none`, or `<strategy>_<budget>` such as `drop_middle_2k`, `attention_scored_512`, `upstream_drop_middle_4k`
    (budget_tokens). The windows of drop_middle / sink_recent and what the scored strategies keep beyond the prefix
    default to half the budget; upstream_drop_middle keeps upstream's 512."""
    if setting == "none":
        return NoCompression(**overrides)
    name, _, budget = setting.rpartition("_")
    if name not in STRATEGIES or name == "none" or BUDGET.fullmatch(budget) is None:
        raise ValueError(f"unknown streaming setting {setting!r}: use none or <strategy>_<budget> (tokens, e.g. 512 "
                         f"or 1k) with strategy one of {', '.join(n for n in STRATEGIES if n != 'none')}")
    tokens = budget_tokens(budget)
    defaults = {HALF_BUDGET[name]: tokens // 2} if name in HALF_BUDGET else {}
    return STRATEGIES[name](budget=tokens, **{**defaults, **overrides})


def sweep_settings(strategies: Iterable[str], budgets: Iterable[str | int]) -> list[str]:
    """`none` and every strategy at every budget (`512`, `1k` ...), strategy by strategy: the settings of a
    quality-against-budget sweep; an unknown strategy or budget is an error."""
    settings = ["none"] + [f"{name}_{budget}" for name in strategies for budget in budgets]
    for setting in settings:
        make_strategy(setting)
    return settings
