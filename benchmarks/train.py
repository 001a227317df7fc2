"""Training throughput with frame features cached vs encoded on the fly, side by side.

    python benchmarks/train.py [--steps 4] [--frames 8] [--batch 2] [--models tiny,smolvlm2-256m] [--timeout 1800]
                               [--json PATH] [--smoke]

For each model (the embedded tiny SmolVLM; random weights in SmolVLM2-256M's true shapes) and tokens per frame,
one training step is forward + backward + AdamW on a batch of synthetic clips cut to `--frames` frames, with
the connector frozen (what caching requires). `raw` encodes the frames with the vision encoder and connector
at every step; `cached` reads them from a feature store written once beforehand (its one-time cost is printed
apart). Every configuration runs in a fresh process, so its peak RSS is its own; one that fails or runs past
`--timeout` seconds stops the benchmark with its error. Reports samples/s, tokens/s (sequence tokens, frames
included), the cached/raw ratio and peak RSS. `--smoke`: one step of the tiny model at its smallest tokens per
frame, in seconds (no measurement).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import PeakRSS, parse_args, run_isolated

MODELS = {"tiny": dict(architecture=None, tokens_per_frame=[4, 16]),
          "smolvlm2-256m": dict(architecture="smolvlm2-256m", tokens_per_frame=[16, 64])}
SMOKE = dict(steps=1, frames=2, batch=1, models="tiny", timeout=120)  # its children take seconds


def measure(model: str, tokens_per_frame: int, features: str, steps: int, frames: int, batch: int,
            work: str) -> dict:
    """One configuration, in the calling (fresh) process."""
    from prospect.data.batch import collate
    from prospect.data.datamodule import SequenceDataset
    from prospect.data.sequence import SequenceBuilder
    from prospect.data.synthetic import synthesize
    from prospect.model.backbone import load_backbone
    from prospect.model.features import SampleFrames, write_features
    from prospect.model.losses import LossConfig, total_loss
    from prospect.model.prospect_model import ProspectModel

    torch.manual_seed(0)
    work = Path(work)
    clips = synthesize(work / "data", batch, seed=0, val_videos=0, test_videos=0)["train"]
    for clip in clips:  # cut to `frames` frames: steps of similar length whatever the video
        clip.video.end_frame = clip.video.start_frame + frames
        clip.events = [e for e in clip.events if e.frame < clip.video.end_frame]
    corpus = [e.text for c in clips for e in c.events]
    vlm, tok = load_backbone("tiny", tiny_dir=work / "tiny", tiny_corpus=corpus,
                             architecture=MODELS[model]["architecture"])
    setup = 0.0
    store = None
    if features == "cached":
        start = time.perf_counter()
        store = write_features(work / f"store-{model}-{tokens_per_frame}", clips, vlm.eval(), tokens_per_frame)
        setup = time.perf_counter() - start
    net = ProspectModel(vlm, tokens_per_frame, train_connector=False)
    builder = SequenceBuilder(tok, tokens_per_frame)
    data = SequenceDataset(clips, builder, SampleFrames(vlm.config.vision_config.image_size, store), 1.0, "perframe", 0)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step() -> int:
        b = collate([data[i] for i in range(batch)], tok.pad_token_id)  # frames read (or looked up) every step
        total_loss(net(b), b, LossConfig())["total"].backward()
        optimizer.step()
        optimizer.zero_grad()
        return int(b.attention_mask.sum())

    step()  # warm-up
    with PeakRSS() as rss:
        start = time.perf_counter()
        tokens = sum(step() for _ in range(steps))
        elapsed = time.perf_counter() - start
    return {"model": model, "tokens_per_frame": tokens_per_frame, "features": features,
            "samples_per_s": steps * batch / elapsed, "tokens_per_s": tokens / elapsed, "peak_rss_mb": rss.peak_mb,
            "store_seconds": setup, "frames": frames, "batch": batch, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8, help="frames per training sample")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one configuration may take")
    parser.add_argument("--json", type=Path)
    args = parse_args(parser, SMOKE)
    rows = []
    print("| model | tokens/frame | features | samples/s | tokens/s | cached/raw | peak RSS MB | store s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for model in args.models.split(","):
            sizes = MODELS[model]["tokens_per_frame"]
            for tpf in sizes[:1] if args.smoke else sizes:
                pair = {}
                for features in ("raw", "cached"):
                    row = run_isolated(measure, model=model, tokens_per_frame=tpf, features=features,
                                       steps=args.steps, frames=args.frames, batch=args.batch, work=work,
                                       timeout=args.timeout)
                    pair[features] = row
                    rows.append(row)
                    ratio = row["samples_per_s"] / pair["raw"]["samples_per_s"]
                    print(f"| {model} | {tpf} | {features} | {row['samples_per_s']:.3f} | {row['tokens_per_s']:.0f} "
                          f"| {ratio:.1f}x | {row['peak_rss_mb']:.0f} | {row['store_seconds']:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
