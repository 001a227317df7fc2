"""Streaming speed and memory per compression strategy, on a long synthetic video.

    python benchmarks/stream.py [--frames 2000] [--frames-large 600] [--models ...] [--strategies ...] [--json PATH]

For each model (the embedded tiny SmolVLM, random weights in SmolVLM2-256M's true shapes, and SmolVLM-256M's
pretrained language model of model=smolvlm_256m_local) and strategy:
ms per frame over the first and the last 100 frames, peak cache tokens and bytes, peak process RSS, and for
`none` the speed-up over a naive baseline that re-runs the whole context at frame 500. The stream is silent
(thresholds above 1), so the per-frame time is the frame's forward pass on the cache; summarize still
generates its summaries. The 256M model's SigLIP at 512 px costs about 2 s per frame on 2 CPU cores whatever
the strategy, so that model reuses 8 encoded frames in turn: its times are the text model's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import PeakRSS

from prospect.data.synthetic import synthesize
from prospect.model.backbone import load_backbone
from prospect.model.factory import build_backbone
from prospect.stream import StreamingGenerator, make_strategy
from prospect.stream.cache import bytes_per_token

STRATEGIES = ["none", "drop_all_1k", "drop_middle_1k", "summarize_1k", "dst_state_1k", "sink_recent_1k"]
REPO = Path(__file__).resolve().parents[1]
MODELS = {"tiny": dict(source="tiny", architecture=None, tokens_per_frame=4),
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

    embeds = embed_with_frames(gen.model, torch.tensor([ids]), torch.cat(feats))
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            gen.model.model.text_model(inputs_embeds=embeds)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(model_name: str, frames: int, tiny_dir: Path, data_root: Path, strategies: list[str]) -> list[dict]:
    spec = MODELS[model_name]
    clip = long_video(data_root / model_name.split()[0], frames)
    corpus = [e.text for e in clip.events]
    if spec.get("build"):
        build_backbone(spec["build"], spec["source"])
    vlm, tok = load_backbone(spec["source"], tiny_dir=tiny_dir, tiny_corpus=corpus, architecture=spec["architecture"])
    gen = StreamingGenerator(vlm, tok, spec["tokens_per_frame"], speaking_threshold=2.0, dst_update_threshold=2.0)
    features = gen.encode
    if spec["architecture"]:  # encode 8 frames once, then reuse them in turn (see the module docstring)
        with torch.no_grad():
            pool = [gen.encode(clip, f) for f in range(8)]
        features = lambda c, f: pool[f % len(pool)]  # noqa: E731
    text = vlm.config.text_config
    per_token = bytes_per_token(text.num_hidden_layers, text.num_key_value_heads, text.head_dim,
                                torch.finfo(vlm.dtype).bits // 8)
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
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model | strategy | frames | ms/frame first 100 | ms/frame last 100 | last/first | peak cache tokens "
          "| peak cache MB | peak RSS MB | compressions | speed-up vs naive at 500 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            frames = args.frames if name == "tiny" else args.frames_large
            rows += run(name, frames, Path(tmp) / "tiny", Path(tmp) / "data", args.strategies.split(","))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
