"""Many streams through one model at once (docs/design.md, Batched streaming).

Each stream runs its own frame loop unchanged (its strategy, compressions, thresholds and generated turns) in a
thread of its own, on its own row of one shared KVStore. Whenever a stream needs a forward pass (a frame, a turn
header, a generated token, a restarted prompt) it asks and waits; once every running stream has asked, the
runner does all of them as one forward pass over the store and hands each its hidden states. The streams' own
Python runs in turn between forward passes (the GIL), so batching shares the model's work, not theirs. A
finished stream's row goes to the next one waiting, so videos of any length keep the batch full.

The results equal streaming each video alone (tests/test_batch.py): every row sees only its own tokens.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

from torch import Tensor

from prospect.stream.cache import CacheState, Chunk, KVStore
from prospect.stream.generator import FrameRecord, Stream, StreamingGenerator

StartStream = Callable[[CacheState], Stream]  # a stream on the given cache (StreamOptions.cache)
SHORT_CHUNK = 4  # tokens: a generated token or a turn header, run apart from frames and prompts


class _Closed(Exception):
    """The runner stopped (another stream failed): the waiting streams unwind."""


class _Rendezvous:
    """The forward passes the running streams ask for, run together once each running stream has asked. Only
    the runner waits on `changed`; each stream waits on its row's own event, so an answer wakes one thread."""

    def __init__(self, store: KVStore):
        self.store = store
        self.changed = threading.Condition()
        self.asked: dict[int, Chunk] = {}
        self.answers: dict[int, Tensor] = {}
        self.answered = [threading.Event() for _ in store.lengths]
        self.running = 0  # streams started and not finished
        self.closed = False

    def run(self, row: int, embeds: Tensor, positions: Tensor) -> Tensor:
        """A stream's forward pass (CacheState.run): ask, then wait for the answer."""
        with self.changed:
            self.asked[row] = (embeds, positions)
            self.changed.notify()
        self.answered[row].wait()
        self.answered[row].clear()
        if self.closed:
            raise _Closed
        return self.answers.pop(row)

    def next_batch(self) -> dict[int, Chunk]:
        """Wait until every running stream has asked or finished; what they asked for."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.asked) == self.running)
            asked, self.asked = self.asked, {}
            return asked

    def answer(self, asked: dict[int, Chunk]) -> None:
        """Short chunks (a generated token, a turn header) and long ones (a frame, a prompt) run in separate
        passes: padded to the longest chunk, a generated token would pay for a frame's worth of attention."""
        short = {row: chunk for row, chunk in asked.items() if len(chunk[0]) <= SHORT_CHUNK}
        for group in (short, {row: chunk for row, chunk in asked.items() if row not in short}):
            if group:
                self.answers.update(self.store.forward(group))
        for row in asked:
            self.answered[row].set()

    def started(self) -> None:
        with self.changed:
            self.running += 1

    def finished(self) -> None:
        with self.changed:
            self.running -= 1
            self.changed.notify()

    def close(self) -> None:
        self.closed = True
        for event in self.answered:
            event.set()


def stream_batched(generator: StreamingGenerator, starts: Sequence[StartStream], batch_size: int
                   ) -> Iterator[tuple[int, Stream, FrameRecord | None]]:
    """Run the streams `starts[i](cache)` at most `batch_size` at a time; yields (i, stream, record) for every
    frame record as it comes, and (i, stream, None) once stream i has ended. Records of one stream come in order;
    streams interleave. An error in any stream stops all and is raised here."""
    if batch_size == 1:  # no threads: the same streams, one after the other, each on its own store
        for i, start in enumerate(starts):
            stream = start(CacheState(generator.model))
            yield from ((i, stream, record) for record in stream)
            yield i, stream, None
        return
    rendezvous = _Rendezvous(KVStore(generator.model, rows=min(batch_size, len(starts))))
    out: queue.Queue = queue.Queue()
    errors: list[BaseException] = []

    def work(i: int, stream: Stream, row: int) -> None:
        try:
            for record in stream:
                out.put((i, stream, record))
            out.put((i, stream, None))
        except _Closed:
            pass
        except BaseException as error:  # raised in the caller's thread
            errors.append(error)
        finally:
            out.put(row)  # the row is free
            rendezvous.finished()

    threads, waiting, free = [], list(enumerate(starts)), list(range(len(rendezvous.store.lengths)))
    try:
        while waiting or rendezvous.running:
            while waiting and free:
                i, start = waiting.pop(0)
                row = free.pop(0)
                stream = start(CacheState(generator.model, rendezvous.store, row, rendezvous.run))
                rendezvous.started()
                threads.append(threading.Thread(target=work, args=(i, stream, row), daemon=True))
                threads[-1].start()
            asked = rendezvous.next_batch()
            while not out.empty():
                item = out.get()
                if isinstance(item, int):
                    free.append(item)
                else:
                    yield item
            if errors:
                raise errors[0]
            if asked:
                rendezvous.answer(asked)
    finally:
        rendezvous.close()
        for thread in threads:
            thread.join()
