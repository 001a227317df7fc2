"""Many streams through one model at once (docs/design.md, Batched streaming).

Each stream runs its own frame loop unchanged (Stream: its strategy, compressions, thresholds and generated turns)
as a greenlet, a coroutine of its own, on its own row of one shared KVStore. Whenever a stream needs a forward pass
(a frame, a turn header, a generated token, a restarted prompt) it hands the chunk to the scheduler and is
suspended there; once every running stream has asked, the scheduler runs them as one forward pass over the
store and resumes each with its hidden states. It all runs in one thread: a switch costs a microsecond, the
order is fixed and nothing needs a lock. What torch keeps per thread (grad mode, autocast) is swapped at every
switch, so each stream runs under its own, and a pass takes only the chunks asked under the same autocast. A
finished stream's row goes to the next one waiting, so videos of any length keep the batch full.

The results equal streaming each video alone (tests/test_batch.py): every row sees only its own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from greenlet import getcurrent, greenlet
from torch import Tensor

from prospect.data.clip import Clip
from prospect.stream.cache import CacheState, Chunk, KVStore
from prospect.stream.generator import FrameRecord, Stream, StreamingGenerator, StreamOptions

Job = tuple[Clip, StreamOptions]  # one stream: a clip and how to stream it
Features = Callable[[Clip, int], Tensor]  # (clip, frame) -> [1, tokens_per_frame, H]


@dataclass(frozen=True)
class TorchMode:
    """The state torch keeps per thread that a stream's code may change: grad mode and autocast on one device
    type. Greenlets share their thread, so the scheduler saves and loads it at every switch."""

    grad: bool
    autocast: bool
    autocast_dtype: torch.dtype

    @classmethod
    def current(cls, device_type: str) -> TorchMode:
        return cls(torch.is_grad_enabled(), torch.is_autocast_enabled(device_type),
                   torch.get_autocast_dtype(device_type))

    def load(self, device_type: str) -> None:
        torch.set_grad_enabled(self.grad)
        torch.set_autocast_enabled(device_type, self.autocast)
        torch.set_autocast_dtype(device_type, self.autocast_dtype)


def stream_batched(generator: StreamingGenerator, jobs: Sequence[Job], batch_size: int,
                   features: Features | None = None) -> Iterator[tuple[int, Stream, FrameRecord | None]]:
    """Stream `jobs[i]` = (clip, options) at most `batch_size` at a time, each on a cache made here (a row of one
    store), frame features from `features` (default: the vision encoder); yields (i, stream, record) for every
    frame record as it comes, and (i, stream, None) once stream i has ended. Records of one stream come in order;
    streams interleave. An error in any stream stops all and is raised here."""
    if batch_size == 1:  # the same streams, one after the other, each on its own store
        for i, (clip, options) in enumerate(jobs):
            stream = generator.stream(clip, features, options)
            yield from ((i, stream, record) for record in stream)
            yield i, stream, None
        return
    store = KVStore(generator.vlm, rows=min(batch_size, len(jobs)))
    device = generator.device.type
    scheduler = getcurrent()
    out: list[tuple[int, Stream, FrameRecord | None]] = []  # records since the scheduler last yielded
    running: dict[int, greenlet] = {}  # row -> its stream, suspended until its chunk has run
    modes: dict[int, TorchMode] = {}  # row -> its stream's torch state while it is suspended
    asked: dict[int, Chunk] = {}

    def forward(row: int, embeds: Tensor, positions: Tensor) -> Tensor:
        """A stream's forward pass (CacheState.run): suspend until the scheduler resumes it with the answer."""
        if running.get(row) is not getcurrent():
            raise RuntimeError(f"a forward pass on row {row} of a batched store outside its stream: a stream that "
                               "stream_batched runs feeds its cache only while stream_batched iterates it")
        return scheduler.switch((embeds, positions))

    def run(i: int, stream: Stream) -> None:  # returning to the scheduler: the stream's row is free
        for record in stream:
            out.append((i, stream, record))
        out.append((i, stream, None))

    def resume(row: int, *answer: Tensor) -> None:
        """Start the row's stream, or resume it with its `answer`, under its own torch state, until it asks for a
        forward pass or ends."""
        outside = TorchMode.current(device)
        modes[row].load(device)
        try:
            chunk = running[row].switch(*answer)
            modes[row] = TorchMode.current(device)
        finally:
            outside.load(device)
        if chunk is None:
            del running[row]
            free.append(row)
        else:
            asked[row] = chunk

    waiting, free = list(enumerate(jobs)), list(range(len(store.lengths)))
    try:
        while waiting or running:
            while waiting and free:
                i, (clip, options) = waiting.pop(0)
                row = free.pop(0)
                stream = generator.stream(clip, features, options, CacheState(generator.vlm, store, row, forward))
                running[row] = greenlet(lambda i=i, stream=stream: run(i, stream))
                modes[row] = TorchMode.current(device)
                resume(row)
            if asked:
                for row, hidden in _passes(store, asked, modes, device).items():
                    del asked[row]
                    resume(row, hidden)
            yield from out
            out.clear()
    finally:  # after an error: unwind the suspended streams (their context managers exit) under ours
        outside = TorchMode.current(device)
        for suspended in running.values():
            if suspended:  # started and not dead
                suspended.throw()
        outside.load(device)


def _passes(store: KVStore, asked: dict[int, Chunk], modes: Mapping[int, TorchMode], device: str
            ) -> dict[int, Tensor]:
    """The chunks in as few passes as keep padding at most what is computed, each pass under the autocast its rows
    asked in (a pass is one precision): a pass pads every chunk to its longest, so a generated token joins the
    frames of the other rows (a pass costs more than a few pad tokens), but a restarted prompt of hundreds of tokens
    runs apart from them. Longest first, each pass takes the next chunks while its padded size stays within twice
    its real tokens."""
    hidden: dict[int, Tensor] = {}
    for autocast in dict.fromkeys((modes[row].autocast, modes[row].autocast_dtype) for row in asked):
        rows = sorted((row for row in asked if (modes[row].autocast, modes[row].autocast_dtype) == autocast),
                      key=lambda row: -len(asked[row][0]))
        while rows:
            longest, tokens, take = len(asked[rows[0]][0]), 0, 0
            while take < len(rows) and (take + 1) * longest <= 2 * (tokens + len(asked[rows[take]][0])):
                tokens += len(asked[rows[take]][0])
                take += 1
            with torch.autocast(device, dtype=autocast[1], enabled=autocast[0]):
                hidden.update(store.forward({row: asked[row] for row in rows[:take]}))
            rows = rows[take:]
    return hidden
