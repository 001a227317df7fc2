"""The benchmarks in smoke mode: every script runs end to end at its smallest sizes and prints and writes rows of
the shape benchmarks/README.md shows, so a package change that breaks a benchmark fails here. Nothing here
measures speed; a measuring child that fails must stop its benchmark at once."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).parents[1]
EVAL_SETTINGS = list(OmegaConf.load(REPO / "conf" / "stream" / "val_default.yaml").settings)

TRAIN_ROW = {"model": str, "tokens_per_frame": int, "features": str, "samples_per_s": float, "tokens_per_s": float,
             "peak_rss_mb": float, "store_seconds": float, "frames": int, "batch": int, "steps": int}
STREAM_ROW = {"model": str, "strategy": str, "frames": int, "budget": type(None), "ms_first_100": float,
              "ms_last_100": float, "peak_cache_tokens": int, "peak_cache_mb": float, "peak_rss_mb": float,
              "compressions": int, "kv_bytes_per_token": int, "speedup_vs_naive_at_500": float}
BATCH_ROW = {"model": str, "batch_size": int, "streams": int, "frames": int, "seconds": float, "frames_per_s": float,
             "max_prob_diff": float, "speedup_vs_batch_1": float}
LATENCY = {"frames": int, "p50": float, "p95": float, "max": float, "mean": float, "rtf": float}
LONG_STREAM_SUMMARY = {"model": str, "setting": str, "budget": int, "minutes": float, "talk_every": int,
                       "torch_threads": int, "compressions": int, "capped_replies": int, "ms": dict,
                       "encoder_ms": float, "window_minutes": float, "settle_minutes": float,
                       "p95_last_over_first": dict, "rss_mb_after_first_minute": float, "rss_mb_max": float,
                       "rss_growth_pct": float, "max_cache_tokens": int, "within_budget": bool, "keeps_up": bool,
                       "max_lag_s": float}
LONG_STREAM_MINUTE = {"minute": int, "frames": int, "talking": int, "p50_ms": float, "p95_ms": float, "max_ms": float,
                      "max_cache_tokens": int, "max_rss_mb": float}
PRECISION_TRAIN_ROW = {"precision": str, "steps": int, "tokens": int, "seconds": float, "ms_per_1k_tokens": float,
                       "first_step_loss": dict, "time_ratio_fp32": float, "first_step_loss_diff": float}
PRECISION_STREAM_ROW = {"dtype": str, "batch_size": int, "videos": int, "streams": int, "frames": int,
                        "seconds": float, "frames_per_s": float, "speedup_vs_float32": float, "max_prob_diff": float,
                        "records_unlike_float32": int}


def smoke(tmp_path: Path, script: str, *args: str) -> tuple[list[int], object]:
    """`python benchmarks/<script> --smoke --json OUT`: (body rows of each table it printed, what it wrote)."""
    out = tmp_path / "out.json"
    # one thread: a smoke run measures nothing, and OpenMP's spinning threads crawl beside other work on 2 cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *args, "--smoke", "--json", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return table_rows(result.stdout), json.loads(out.read_text())


def table_rows(stdout: str) -> list[int]:
    """How many body rows each printed markdown table has; every row as wide as its header."""
    lines, counts = stdout.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width, body = lines[i - 1].count("|"), []
            for row in lines[i + 1:]:
                if not row.startswith("| "):
                    break
                body.append(row)
            assert all(row.count("|") == width for row in body), body
            counts.append(len(body))
    return counts


def assert_rows(rows: list[dict], columns: dict[str, type]) -> None:
    assert rows
    for row in rows:
        assert set(row) == set(columns), row
        wrong = {k: v for k, v in row.items() if type(v) is not columns[k]}
        assert not wrong, wrong


def test_train_smoke(tmp_path):
    tables, rows = smoke(tmp_path, "train.py")
    assert tables == [len(rows)]
    assert_rows(rows, TRAIN_ROW)
    assert [(r["model"], r["features"]) for r in rows] == [("tiny", "raw"), ("tiny", "cached")]


def test_stream_smoke(tmp_path):
    tables, rows = smoke(tmp_path, "stream.py")
    assert tables == [len(rows)]
    assert_rows(rows, STREAM_ROW)
    assert [r["strategy"] for r in rows] == ["none"]


def test_stream_batch_smoke(tmp_path):
    tables, rows = smoke(tmp_path, "stream.py", "--batch-sizes", "1,2")
    assert tables == [len(rows)]
    assert_rows(rows, BATCH_ROW)
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert all(r["streams"] == len(EVAL_SETTINGS) for r in rows)  # one video at eval.py's settings


def test_long_stream_smoke(tmp_path):
    tables, report = smoke(tmp_path, "long_stream.py", "--plot", str(tmp_path / "plot.png"))
    assert tables == [3, 7]  # latency of all / decision / talking frames; the measures against their targets
    assert set(report) == {"args", "summary", "per_minute"}
    summary = report["summary"]
    assert_rows([summary], LONG_STREAM_SUMMARY)
    assert set(summary["ms"]) == {"all", "decision", "talking"}
    assert_rows(list(summary["ms"].values()), LATENCY)
    assert set(summary["p95_last_over_first"]) == {"all", "decision"}
    assert summary["ms"]["talking"]["frames"] == summary["ms"]["all"]["frames"] // summary["talk_every"]
    assert summary["compressions"] > 0 and summary["within_budget"]
    assert_rows(report["per_minute"], LONG_STREAM_MINUTE)
    assert sum(m["frames"] for m in report["per_minute"]) == summary["ms"]["all"]["frames"]
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_precision_smoke(tmp_path):
    tables, report = smoke(tmp_path, "precision.py")
    assert set(report) == {"machine", "args", "train", "stream"}
    assert tables == [len(report["train"]), len(report["stream"])]
    assert_rows(report["train"], PRECISION_TRAIN_ROW)
    assert [r["precision"] for r in report["train"]] == ["32-true", "bf16-mixed"]
    assert all(set(r["first_step_loss"]) == {"total", "lm", "dst_gen", "speaking", "dst_update"}
               for r in report["train"])
    assert_rows(report["stream"], PRECISION_STREAM_ROW)
    assert all(r["streams"] == len(EVAL_SETTINGS) for r in report["stream"])


@pytest.mark.parametrize("call, timeout, message", [
    ("math.sqrt, -1.0", 60, "ValueError: math domain error"),  # raises
    ("os._exit, 3", 60, "died without a result (exit code 3)"),
    ("time.sleep, 600", 1, "ran past its timeout of 1 s"),
])
def test_failing_child_stops_the_benchmark(call, timeout, message):
    """What the benchmarks' run_isolated does with a child that fails: the parent exits non-zero at once, with the
    child's error."""
    code = f"import math, os, time; from common import run_isolated; run_isolated({call}, timeout={timeout})"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO / "benchmarks", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert time.perf_counter() - start < 30
