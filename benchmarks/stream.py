"""Streaming speed and memory per compression strategy, on a long synthetic video; or, with --batch-sizes,
the throughput of batched streaming.

    python benchmarks/stream.py [--frames 2000] [--frames-large 600] [--models ...] [--strategies ...] [--json PATH]
                                [--smoke]
    python benchmarks/stream.py --batch-sizes 1,4,8,16 [--videos 8] [--videos-large 2] [--models ...] [--json PATH]
                                [--smoke]

For each model (the embedded tiny SmolVLM, random weights in SmolVLM2-256M's true shapes, and SmolVLM-256M's
pretrained language model of model=smolvlm_256m_local) and strategy:
ms per frame over the first and the last 100 frames, peak cache tokens and bytes, peak process RSS, and for
`none` the speed-up over a naive baseline that re-runs the whole context at frame 500. The stream is silent
(thresholds above 1), so the per-frame time is the frame's forward pass on the cache; summarize still
generates its summaries. The 256M model's SigLIP at 512 px costs about 2 s per frame on 2 CPU cores whatever
the strategy, so that model reuses 8 encoded frames in turn: its times are the text model's.

--batch-sizes: synthetic task videos of the demo's kind stream at the settings eval.py uses
(conf/stream/val_default.yaml), as eval.py runs them (stream_batched, every video x setting a stream), once per
batch size, on the same precomputed frame features (the vision encoder is not timed). Per model and batch size:
frames per second over all streams, the speed-up over batch 1 of the same run, and the largest difference of a
head probability from batch 1 (the generated records must otherwise be equal, or the run fails).

--smoke: the tiny model only, `none` on a video just long enough for the naive baseline (or one video with
--batch-sizes), in seconds (no measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import PeakRSS, parse_args
from omegaconf import OmegaConf

from prospect.data.synthetic import synthesize
from prospect.model.backbone import load_backbone
from prospect.model.factory import build_backbone
from prospect.stream import StreamingGenerator, make_strategy
from prospect.stream.cache import bytes_per_token
from prospect.stream.generator import StreamOptions
from prospect.stream.scheduler import stream_batched

STRATEGIES = ["none", "drop_all_1k", "drop_middle_1k", "summarize_1k", "dst_state_1k", "sink_recent_1k"]
REPO = Path(__file__).resolve().parents[1]
EVAL_STREAM = OmegaConf.load(REPO / "conf" / "stream" / "val_default.yaml")  # what eval.py streams with
SMOKE = dict(models="tiny", frames=510, strategies="none", videos=1)  # 510: past the naive baseline's frame 500
MODELS = {"tiny": dict(source="tiny", architecture=None, tokens_per_frame=4),
          "tiny (demo: 16 tokens per frame)": dict(source="tiny", architecture=None, tokens_per_frame=16),
          "smolvlm2-256m (random)": dict(source="tiny", architecture="smolvlm2-256m", tokens_per_frame=16),
          # model=smolvlm_256m_local: SmolLM2-135M-Instruct's weights, its small vision tower encodes every frame
          "smolvlm-256m (SmolLM2)": dict(source=str(REPO / "models" / "smolvlm-256m-smollm2"), build="smollm2",
                                          architecture=None, tokens_per_frame=4)}


def long_video(root: Path, frames: int):
    """One synthetic task video of about `frames` frames: 3 s of lead-in and tail, then 5 equal steps."""
    seconds = (frames / 2 - 6) / 5
    clips = synthesize(root, 1, seed=0, val_videos=0, test_videos=0, num_steps=(5, 5),
                       step_seconds=(seconds, seconds), lead_seconds=(3, 3), tail_seconds=(3, 3), mistake_prob=0.0)
    return clips["train"][0]


def naive_ms(gen: StreamingGenerator, prompt: list[int], clip, frame: int, features) -> float:
    """One full forward over prompt + frames 0..frame (what a cache-less streamer pays at that frame)."""
    ids = list(prompt)
    feats = []
    for f in range(clip.video.start_frame, frame + 1):
        ids += gen.builder.frame_ids() + [t for e in clip.events_after(f) if e.role in ("user", "system")
                                          for t in gen.builder.turn_ids(e)]
        feats.append(features(clip, f))
    from prospect.model.vision import embed_with_frames

    embeds = embed_with_frames(gen.vlm, torch.tensor([ids]), torch.cat(feats))
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            gen.vlm.model.text_model(inputs_embeds=embeds)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def silent_generator(model_name: str, tiny_dir: Path, corpus: list[str]) -> StreamingGenerator:
    """The model with untrained heads and thresholds above 1: every stream is silent."""
    spec = MODELS[model_name]
    if spec.get("build"):
        build_backbone(spec["build"], spec["source"])
    vlm, tok = load_backbone(spec["source"], tiny_dir=tiny_dir, tiny_corpus=corpus, architecture=spec["architecture"])
    return StreamingGenerator.untrained(vlm, tok, spec["tokens_per_frame"], speaking_threshold=2.0,
                                        dst_update_threshold=2.0, max_new_tokens=EVAL_STREAM.max_new_tokens,
                                        max_summary_tokens=EVAL_STREAM.max_summary_tokens,
                                        do_sample=EVAL_STREAM.do_sample)


def frame_features(model_name: str, gen: StreamingGenerator, clip):
    """The vision path, or for the 256M shapes 8 encoded frames reused in turn (see the module docstring)."""
    if not MODELS[model_name]["architecture"]:
        return gen.encode
    with torch.no_grad():
        pool = [gen.encode(clip, f) for f in range(8)]
    return lambda c, f: pool[f % len(pool)]


def run(model_name: str, frames: int, tiny_dir: Path, data_root: Path, strategies: list[str]) -> list[dict]:
    clip = long_video(data_root / model_name.split()[0], frames)
    gen = silent_generator(model_name, tiny_dir, [e.text for e in clip.events])
    features = frame_features(model_name, gen, clip)
    text = gen.vlm.config.text_config
    per_token = bytes_per_token(text.num_hidden_layers, text.num_key_value_heads, text.head_dim,
                                torch.finfo(gen.vlm.dtype).bits // 8)
    rows = []
    for setting in strategies:
        gen.strategy = make_strategy(setting)
        with PeakRSS() as rss:
            stream = gen.stream(clip, features)
            records = list(stream)
        ms = [r.ms for r in records]
        row = {"model": model_name, "strategy": setting, "frames": len(records), "budget": gen.strategy.budget,
               "ms_first_100": statistics.mean(ms[:100]), "ms_last_100": statistics.mean(ms[-100:]),
               "peak_cache_tokens": max(r.cache_tokens for r in records),
               "peak_cache_mb": max(r.cache_bytes for r in records) / 2**20,
               "peak_rss_mb": rss.peak_mb, "compressions": records[-1].compressions,
               "kv_bytes_per_token": per_token}
        if setting == "none" and len(records) > 510:
            naive = naive_ms(gen, stream.initial_prompt, clip, clip.video.start_frame + 500, features)
            row["speedup_vs_naive_at_500"] = naive / statistics.mean(ms[495:505])
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def throughput(model_name: str, videos: int, batch_sizes: list[int], tiny_dir: Path, data_root: Path) -> list[dict]:
    """Frames per second of eval.py's streams (every video at every setting of EVAL_STREAM) at each batch size."""
    clips = synthesize(data_root / f"batch-{model_name.split()[0]}", videos, seed=0, val_videos=0,
                       test_videos=0)["train"]
    gen = silent_generator(model_name, tiny_dir, [e.text for c in clips for e in c.events])
    encode = frame_features(model_name, gen, clips[0])
    with torch.no_grad():
        memo = {(c.id, f): encode(c, f) for c in clips for f in c.frame_indices}
    jobs = [(c, StreamOptions(make_strategy(s))) for c in clips for s in EVAL_STREAM.settings]
    rows, reference = [], None
    for batch_size in batch_sizes:
        records = [[] for _ in jobs]
        start = time.perf_counter()
        for i, _, record in stream_batched(gen, jobs, batch_size, lambda clip, f: memo[clip.id, f]):
            if record is not None:
                records[i].append(record)
        seconds = time.perf_counter() - start
        flat = [r for rs in records for r in rs]
        reference = reference or flat
        same = ("frame", "text", "dst_text", "dst_state", "cache_tokens", "positions", "compressions", "summaries")
        if [[getattr(r, k) for k in same] for r in flat] != [[getattr(r, k) for k in same] for r in reference]:
            raise AssertionError(f"{model_name}: batch {batch_size} streamed other records than batch 1")
        diff = max(abs(getattr(a, k) - getattr(b, k)) for a, b in zip(flat, reference, strict=True)
                   for k in ("speaking_prob", "dst_update_prob"))
        row = {"model": model_name, "batch_size": batch_size, "streams": len(jobs), "frames": len(flat),
               "seconds": seconds, "frames_per_s": len(flat) / seconds, "max_prob_diff": diff}
        row["speedup_vs_batch_1"] = row["frames_per_s"] / (rows[0]["frames_per_s"] if rows else row["frames_per_s"])
        rows.append(row)
        print(f"| {model_name} | {batch_size} | {len(jobs)} | {len(flat)} | {seconds:.1f} | "
              f"{row['frames_per_s']:.1f} | {row['speedup_vs_batch_1']:.2f}x | {diff:.1e} |", flush=True)
    return rows


def _line(row: dict) -> str:
    speedup = f"{row['speedup_vs_naive_at_500']:.1f}x" if "speedup_vs_naive_at_500" in row else "-"
    ratio = row["ms_last_100"] / row["ms_first_100"]
    return (f"| {row['model']} | {row['strategy']} | {row['frames']} | {row['ms_first_100']:.1f} | "
            f"{row['ms_last_100']:.1f} | {ratio:.2f} | {row['peak_cache_tokens']} | {row['peak_cache_mb']:.1f} | "
            f"{row['peak_rss_mb']:.0f} | {row['compressions']} | {speedup} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000, help="frames of the tiny model's video")
    parser.add_argument("--frames-large", type=int, default=600, help="frames for the 256M-shaped models")
    parser.add_argument("--models", default=",".join(m for m in MODELS if "demo" not in m))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batch-sizes", help="measure batched streaming throughput at these batch sizes, e.g. 1,8")
    parser.add_argument("--videos", type=int, default=8, help="videos for the tiny model's throughput")
    parser.add_argument("--videos-large", type=int, default=2, help="videos for the 256M-shaped models' throughput")
    args = parse_args(parser, SMOKE)
    torch.manual_seed(0)
    if args.batch_sizes:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        if sizes[0] != 1:
            parser.error("--batch-sizes must start with 1 (the reference the others are compared with)")
        print("| model | batch size | streams | frames | seconds | frames/s | speed-up vs batch 1 | max prob diff |")
        print("|---|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            rows = [row for name in args.models.split(",") for row in throughput(
                name, args.videos if name.startswith("tiny") else args.videos_large, sizes, Path(tmp) / "tiny",
                Path(tmp) / "data")]
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return
    print("| model | strategy | frames | ms/frame first 100 | ms/frame last 100 | last/first | peak cache tokens "
          "| peak cache MB | peak RSS MB | compressions | speed-up vs naive at 500 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            frames = args.frames if name.startswith("tiny") else args.frames_large
            rows += run(name, frames, Path(tmp) / "tiny", Path(tmp) / "data", args.strategies.split(","))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
