"""What the benchmarks share: peak memory, measuring in a child process, the --smoke sizes."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import psutil


class PeakRSS:
    """Samples this process's resident memory every 10 ms; `peak_mb` is the highest seen since start()."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


class ChildError(RuntimeError):
    """A measuring child process raised, died or ran past its timeout; the message carries its traceback."""


def run_isolated(fn: Callable[..., Any], *args, timeout: float, **kwargs) -> Any:
    """`fn(*args, **kwargs)` in a fresh spawned process, so its peak RSS and caches are its own; returns its result.

    A child that raises, dies or runs past `timeout` seconds raises ChildError at once (uncaught, the benchmark
    exits non-zero with the child's traceback) instead of leaving the parent waiting for a result that never comes.
    """
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs))
    proc.start()
    send.close()  # the child holds the only write end now: its exit reads as end of file here
    try:
        if not receive.poll(timeout):
            raise ChildError(f"{fn.__name__} ran past its timeout of {timeout:g} s and was killed")
        try:
            ok, value = receive.recv()
        except EOFError:
            proc.join()
            raise ChildError(f"{fn.__name__} died without a result (exit code {proc.exitcode})") from None
        proc.join(timeout)  # its own clean-up (temporary files, semaphores) before the next child starts
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    if not ok:
        raise ChildError(f"{fn.__name__} failed in its child process:\n{value}")
    return value


def _child(send: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        message = (True, fn(*args, **kwargs))
    except Exception:  # anything harder (a kill, sys.exit) ends the child without a message: EOF in the parent
        message = (False, traceback.format_exc())
    send.send(message)


def parse_args(parser: argparse.ArgumentParser, smoke: dict[str, Any]) -> argparse.Namespace:
    """The command line, with --smoke: `smoke`'s sizes become the defaults (options given still win).

    Smoke runs go end to end in seconds and measure nothing; tests/test_benchmarks.py runs them, so a package
    change that breaks a benchmark fails `make test`.
    """
    sizes = ", ".join(f"{k}={v}" for k, v in smoke.items())
    parser.add_argument("--smoke", action="store_true", help=f"the smallest sizes ({sizes}), no measurement")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args()
