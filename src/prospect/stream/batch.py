"""Many streams through one model at once (docs/design.md, Batched streaming).

Each stream runs its own frame loop unchanged (its strategy, compressions, thresholds and generated turns) as a
greenlet, a coroutine of its own, on its own row of one shared KVStore. Whenever a stream needs a forward pass
(a frame, a turn header, a generated token, a restarted prompt) it hands the chunk to the scheduler and is
suspended there; once every running stream has asked, the scheduler runs them as one forward pass over the
store and resumes each with its hidden states. It all runs in one thread: a switch costs a microsecond, the
order is fixed and nothing needs a lock. A finished stream's row goes to the next one waiting, so videos of any
length keep the batch full.

The results equal streaming each video alone (tests/test_batch.py): every row sees only its own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from greenlet import getcurrent, greenlet
from torch import Tensor

from prospect.stream.cache import CacheState, Chunk, KVStore
from prospect.stream.generator import FrameRecord, Stream, StreamingGenerator

StartStream = Callable[[CacheState], Stream]  # a stream on the given cache (StreamOptions.cache)


@torch.no_grad()  # also while the streams are suspended mid-frame: grad mode is the thread's, shared by them
def stream_batched(generator: StreamingGenerator, starts: Sequence[StartStream], batch_size: int
                   ) -> Iterator[tuple[int, Stream, FrameRecord | None]]:
    """Run the streams `starts[i](cache)` at most `batch_size` at a time; yields (i, stream, record) for every
    frame record as it comes, and (i, stream, None) once stream i has ended. Records of one stream come in order;
    streams interleave. An error in any stream stops all and is raised here."""
    if batch_size == 1:  # the same streams, one after the other, each on its own store
        for i, start in enumerate(starts):
            stream = start(CacheState(generator.model))
            yield from ((i, stream, record) for record in stream)
            yield i, stream, None
        return
    store = KVStore(generator.model, rows=min(batch_size, len(starts)))
    scheduler = getcurrent()
    out: list[tuple[int, Stream, FrameRecord | None]] = []  # records since the scheduler last yielded
    running: dict[int, greenlet] = {}  # row -> its stream, suspended until its chunk has run
    asked: dict[int, Chunk] = {}

    def forward(row: int, embeds: Tensor, positions: Tensor) -> Tensor:
        """A stream's forward pass (CacheState.run): suspend until the scheduler resumes it with the answer."""
        return scheduler.switch((embeds, positions))

    def run(i: int, stream: Stream) -> None:  # returning to the scheduler: the stream's row is free
        for record in stream:
            out.append((i, stream, record))
        out.append((i, stream, None))

    def resume(row: int, *answer: Tensor) -> None:
        """Start the row's stream, or resume it with its `answer`, until it asks for a forward pass or ends."""
        chunk = running[row].switch(*answer)
        if chunk is None:
            del running[row]
            free.append(row)
        else:
            asked[row] = chunk

    waiting, free = list(enumerate(starts)), list(range(len(store.lengths)))
    try:
        while waiting or running:
            while waiting and free:
                i, start = waiting.pop(0)
                row = free.pop(0)
                stream = start(CacheState(generator.model, store, row, forward))
                running[row] = greenlet(lambda i=i, stream=stream: run(i, stream))
                resume(row)
            if asked:
                for row, hidden in _passes(store, asked).items():
                    del asked[row]
                    resume(row, hidden)
            yield from out
            out.clear()
    finally:  # after an error: unwind the suspended streams
        for suspended in running.values():
            if suspended:  # started and not dead
                suspended.throw()


def _passes(store: KVStore, asked: dict[int, Chunk]) -> dict[int, Tensor]:
    """The chunks in as few passes as keep padding at most what is computed: a pass pads every chunk to its
    longest, so a generated token joins the frames of the other rows (a pass costs more than a few pad tokens),
    but a restarted prompt of hundreds of tokens runs apart from them. Longest first, each pass takes the next
    chunks while its padded size stays within twice its real tokens."""
    rows = sorted(asked, key=lambda row: -len(asked[row][0]))
    hidden: dict[int, Tensor] = {}
    while rows:
        longest, tokens, take = len(asked[rows[0]][0]), 0, 0
        while take < len(rows) and (take + 1) * longest <= 2 * (tokens + len(asked[rows[take]][0])):
            tokens += len(asked[rows[take]][0])
            take += 1
        hidden.update(store.forward({row: asked[row] for row in rows[:take]}))
        rows = rows[take:]
    return hidden
