"""An hour-long stream: one synthetic task video of `--minutes` at 2 frames per second through StreamingGenerator
under one bounded setting, to see whether latency, cache and memory stay flat and whether it keeps up with 2 fps.

    python benchmarks/long_stream.py [--minutes 60] [--model "smolvlm2-256m (random)"] [--setting drop_middle_1k]
                                     [--talk-every 30] [--plot benchmarks/long_stream.png] [--json PATH] [--smoke]

Per frame: wall time (ms), cache tokens, the process's RSS, and whether the assistant talked. The heads are
untrained, so the benchmark decides when the assistant talks: the DST head is off (threshold above 1) and the
speaking threshold is set on the Stream before each frame, 0 on every `--talk-every`-th frame (the head fires and
a reply is decoded, up to max_new_tokens; the summary counts the replies cut at that cap) and above 1
elsewhere (a decision frame: the frame's forward pass and the heads). Compressions, and summarize's summaries,
count in the frame they happen on. Frames are 8 encoded frames reused in turn (SigLIP at 512 px costs about
2 s per frame on 2 CPU cores), so frame times are the text side's; the encoder's time per frame is measured
apart and reported beside them.

Reported: p50 / p95 / max ms over all, decision and talking frames and their real-time factor (mean ms over the
500 ms between frames; <= 1 keeps up), the p95 of the last ten minutes over the first ten's (target <= 1.2),
RSS growth after the first minute (target <= 5%), the largest cache against the budget (must not exceed it);
the windows shrink to a sixth and a tenth of shorter streams. How late a live camera's frames would be answered
(lag_seconds) says whether the replies' delays are caught up. --json writes the summary and per-minute rows;
--plot draws latency, cache tokens and RSS over time. The stream runs in a spawned child (common.run_isolated),
which logs one line per minute of video to stderr.

--smoke: the tiny model, 30 s of video (a few compressions), a reply every 5th frame, in seconds (no measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from common import parse_args, run_isolated
from stream import MODELS, long_video, silent_generator

from prospect.stream import make_strategy
from prospect.stream.generator import StreamingGenerator, StreamOptions

FPS = 2  # frames per second of the video (the synthetic data's)
POOL = 8  # encoded frames reused in turn
SMOKE = dict(model="tiny", minutes=0.5, talk_every=5, plot=None)


def encoded_frames(gen: StreamingGenerator, clip) -> tuple[list[torch.Tensor], float]:
    """The first POOL frames through the vision encoder and connector, and the median ms one took."""
    pool, ms = [], []
    for f in range(POOL):
        start = time.perf_counter()
        pool.append(gen.encode(clip, clip.video.start_frame + f))
        ms.append((time.perf_counter() - start) * 1e3)
    return pool, float(np.median(ms))


def measure(model: str, frames: int, setting: str, talk_every: int, root: str) -> dict:
    """Stream a video of about `frames` frames (in the child process); the per-frame series and what the summary
    needs beside them."""
    clip = long_video(Path(root) / "data", frames)
    gen = silent_generator(model, Path(root) / "tiny", [e.text for e in clip.events])
    pool, encoder_ms = encoded_frames(gen, clip)
    stream = gen.stream(clip, lambda c, f: pool[(f - c.video.start_frame) % POOL],
                        StreamOptions(make_strategy(setting)))
    process, total = psutil.Process(), len(clip.frame_indices)
    trace = {"ms": [], "cache_tokens": [], "rss_mb": [], "talking": [], "capped": []}
    start = time.perf_counter()
    for i in range(total):
        talking = (i + 1) % talk_every == 0
        stream.speaking_threshold = 0.0 if talking else 2.0  # read by the frame about to run
        record = next(stream)
        values = (record.ms, record.cache_tokens, process.memory_info().rss / 2**20, talking, record.reply_capped)
        for key, value in zip(trace, values, strict=True):
            trace[key].append(value)
        if (i + 1) % (60 * FPS) == 0 or i + 1 == total:
            log_progress(trace, total, time.perf_counter() - start)
    return {"trace": trace, "budget": stream.strategy.budget, "compressions": stream.compressions,
            "encoder_ms": encoder_ms, "torch_threads": torch.get_num_threads()}


def log_progress(trace: dict, frames: int, elapsed: float) -> None:
    """One line on stderr (stdout carries the tables): the last minute's p95, the cache, RSS, time left."""
    done, minute = len(trace["ms"]), 60 * FPS
    print(f"minute {done / minute:.1f} of {frames / minute:.1f}: p95 {np.percentile(trace['ms'][-minute:], 95):.0f} "
          f"ms, cache {trace['cache_tokens'][-1]} tokens, RSS {trace['rss_mb'][-1]:.0f} MB, {elapsed / 60:.1f} min "
          f"elapsed, about {elapsed / done * (frames - done) / 60:.1f} min left", file=sys.stderr, flush=True)


def latency(ms: np.ndarray) -> dict:
    """p50 / p95 / max / mean ms of some frames and their real-time factor (mean over the time between frames)."""
    return {"frames": int(ms.size), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "max": float(ms.max()), "mean": float(ms.mean()), "rtf": float(ms.mean() / (1e3 / FPS))}


def summarize(result: dict, model: str, setting: str, talk_every: int) -> dict:
    """The figures of the module docstring from the per-frame series."""
    trace = {k: np.asarray(v) for k, v in result["trace"].items()}
    ms, talking, rss = trace["ms"], trace["talking"], trace["rss_mb"]
    window = min(10 * 60 * FPS, ms.size // 6)  # frames in the first / last ten minutes
    settle = min(60 * FPS, ms.size // 10)  # frames in the first minute
    head, tail = slice(None, window), slice(-window, None)
    drift = {kind: float(np.percentile(ms[tail][keep[tail]], 95) / np.percentile(ms[head][keep[head]], 95))
             for kind, keep in (("all", np.full(ms.size, True)), ("decision", ~talking))}
    peak_cache, base, peak_rss = int(trace["cache_tokens"].max()), rss[settle - 1], rss[settle:].max()
    return {"model": model, "setting": setting, "budget": result["budget"], "minutes": ms.size / FPS / 60,
            "talk_every": talk_every, "torch_threads": result["torch_threads"], "compressions": result["compressions"],
            "capped_replies": int(trace["capped"].sum()),
            "ms": {"all": latency(ms), "decision": latency(ms[~talking]), "talking": latency(ms[talking])},
            "encoder_ms": result["encoder_ms"], "window_minutes": window / FPS / 60,
            "settle_minutes": settle / FPS / 60, "p95_last_over_first": drift,
            "rss_mb_after_first_minute": float(base), "rss_mb_max": float(peak_rss),
            "rss_growth_pct": float((peak_rss - base) / base * 100),
            "max_cache_tokens": peak_cache, "within_budget": peak_cache <= result["budget"],
            "keeps_up": bool(ms.mean() <= 1e3 / FPS), "max_lag_s": float(lag_seconds(ms).max())}


def lag_seconds(ms: np.ndarray) -> np.ndarray:
    """How late each frame's record would come behind a live camera: frames arrive every 1 / FPS s and wait while
    earlier frames (a reply) still run. Bounded lag means the stream keeps up; a growing one, that it falls behind."""
    lags, done = np.empty(ms.size), 0.0
    for i, seconds in enumerate(ms / 1e3):
        done = max(done, i / FPS) + seconds
        lags[i] = done - i / FPS
    return lags


def per_minute(trace: dict) -> list[dict]:
    """One row per minute of video: its frames' latency, largest cache and RSS."""
    rows, step = [], 60 * FPS
    for start in range(0, len(trace["ms"]), step):
        part = {k: np.asarray(v[start:start + step]) for k, v in trace.items()}
        ms = part["ms"]
        rows.append({"minute": start // step, "frames": int(ms.size), "talking": int(part["talking"].sum()),
                     "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                     "max_ms": float(ms.max()), "max_cache_tokens": int(part["cache_tokens"].max()),
                     "max_rss_mb": float(part["rss_mb"].max())})
    return rows


def plot(trace: dict, summary: dict, path: Path) -> None:
    """Three panels over video time: per-frame ms (decision and talking frames apart), cache tokens, RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = np.arange(len(trace["ms"])) / FPS / 60
    ms, talking = np.asarray(trace["ms"]), np.asarray(trace["talking"])
    fig, (lat, cache, rss) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    lat.scatter(minutes[~talking], ms[~talking], s=2, label="decision frames")
    lat.scatter(minutes[talking], ms[talking], s=6, color="tab:red", label="talking frames")
    lat.axhline(1e3 / FPS, color="grey", linestyle="--", label="500 ms (2 fps)")
    lat.set(yscale="log", ylabel="ms per frame")
    lat.legend(loc="upper right", fontsize="small")
    cache.plot(minutes, trace["cache_tokens"], linewidth=0.8)
    cache.axhline(summary["budget"], color="grey", linestyle="--", label=f"budget {summary['budget']}")
    cache.set(ylabel="cache tokens")
    cache.legend(loc="lower right", fontsize="small")
    rss.plot(minutes, trace["rss_mb"], linewidth=0.8)
    rss.set(ylabel="process RSS (MB)", xlabel="video time (min)")
    fig.suptitle(f"{summary['model']}, {summary['setting']}, a reply every {summary['talk_every']} frames, "
                 f"torch threads: {summary['torch_threads']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_tables(summary: dict) -> None:
    print("| frames | count | p50 ms | p95 ms | max ms | mean ms | real-time factor |")
    print("|---|---|---|---|---|---|---|")
    for kind, s in summary["ms"].items():
        print(f"| {kind} | {s['frames']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['max']:.1f} | {s['mean']:.1f} | "
              f"{s['rtf']:.2f} |")
    print()
    print("| measure | value | target |")
    print("|---|---|---|")
    window, settle = f"{summary['window_minutes']:.3g} min", f"{summary['settle_minutes']:.3g} min"
    drift = summary["p95_last_over_first"]
    print(f"| p95 last {window} / first {window}: all frames (decision frames) | {drift['all']:.2f} "
          f"({drift['decision']:.2f}) | <= 1.2 |")
    print(f"| RSS growth after the first {settle} | {summary['rss_growth_pct']:.1f}% "
          f"({summary['rss_mb_after_first_minute']:.0f} -> {summary['rss_mb_max']:.0f} MB) | <= 5% |")
    print(f"| max cache tokens | {summary['max_cache_tokens']} | <= {summary['budget']} |")
    print(f"| keeps up with {FPS} fps (all frames, text side) | {'yes' if summary['keeps_up'] else 'no'} "
          f"(real-time factor {summary['ms']['all']['rtf']:.2f}) | <= 1 |")
    print(f"| replies cut at max_new_tokens | {summary['capped_replies']} of {summary['ms']['talking']['frames']} "
          "| - |")
    print(f"| largest lag behind a live {FPS} fps camera | {summary['max_lag_s']:.1f} s | - |")
    print(f"| vision encoder per frame (not in the times above) | {summary['encoder_ms']:.0f} ms | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the video")
    parser.add_argument("--model", default="smolvlm2-256m (random)", choices=list(MODELS))
    parser.add_argument("--setting", default="drop_middle_1k", help="a bounded setting, <strategy>_<1k|2k|4k>")
    parser.add_argument("--talk-every", type=int, default=30, help="the assistant replies on every n-th frame")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("long_stream.png"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds before the measuring child is killed")
    args = parse_args(parser, SMOKE)
    try:
        budget = make_strategy(args.setting).budget
    except ValueError as e:
        parser.error(str(e))
    if budget is None:
        parser.error(f"--setting {args.setting} is unbounded: an hour-long stream needs a budget")
    frames = round(args.minutes * 60 * FPS)
    if frames < 20 or not 2 <= args.talk_every <= frames:
        parser.error(f"need at least 20 frames ({frames} at --minutes {args.minutes:g}) and 2 <= --talk-every <= "
                     "the frames, so every figure has decision and talking frames to stand on")
    with tempfile.TemporaryDirectory() as tmp:
        result = run_isolated(measure, args.model, frames, args.setting, args.talk_every, tmp, timeout=args.timeout)
    summary = summarize(result, args.model, args.setting, args.talk_every)
    print_tables(summary)
    if args.plot:
        plot(result["trace"], summary, args.plot)
    if args.json:
        report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "summary": summary, "per_minute": per_minute(result["trace"])}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
