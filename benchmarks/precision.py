"""What bf16 does to speed on a CPU for the default model (model=smolvlm_256m_local), fp32 and bf16 side by side
in one run: training steps, then streaming throughput.

    python benchmarks/precision.py [--steps 12] [--warmup 1] [--videos 8] [--frames N] [--dtypes float32,bfloat16]
                                   [--batch-sizes 8,16] [--json PATH] [--smoke] [OVERRIDE ...]

Training: the default run's model and data are built as train.py builds them (`train +experiment=perframe`:
SmolLM2-135M's weights with LoRA, the connector and the heads training; the synthetic data, which must already be
there as that config describes it, or prepare_data generates it; OVERRIDEs change that config as on train.py's
command line). The same first `--steps` training batches (one sequence each, read before timing) go through
forward + the four losses + backward + gradient clipping + AdamW, once in fp32 and once with forward and loss
under `torch.autocast("cpu", dtype=torch.bfloat16)`, backward outside it, as Lightning's bf16-mixed does. Both
start from the same trainable weights and the same seed (LoRA dropout draws the same masks), after `--warmup`
untimed forward + backward passes on the first batch, which change no weight. No learning-rate schedule: it does
not change a step's time. Per precision: steps, tokens (every sequence token, frames included), seconds, ms per
1000 tokens, the time ratio fp32 / this precision, and the first step's losses (before any weight changes), whose
largest difference from fp32 over the terms (total, lm, dst_gen, speaking, dst_update) is reported.

Streaming: `StreamingGenerator.untrained_from_config` of the same model config (untrained heads, thresholds 1.1:
silent streams, but summarize still generates its summaries) streams the first `--videos` test videos (cut to their
first `--frames` frames when given) at the settings eval.py uses (the config's `stream`), through `stream_runs`,
once per dtype (`generator.to(dtype=...)` of a float32 copy) and batch size. Frame features are computed once per
dtype before timing (FeatureMemo), so the vision encoder is not timed. Per row: frames, seconds, frames/s, the
speed-up over float32 at the same batch size, the largest difference of a head probability (speaking_prob,
dst_update_prob over all records) from float32 at the same batch size, and the records whose other fields
(text, DST, cache, compressions, summaries) differ from float32's.

bf16 is fast on a CPU only with native bf16 instructions (avx512_bf16 or AMX); the cpu flags are printed first.
`--smoke`: one step and one short video of the tiny model on `+debug=fast`'s data, in a temporary folder, in
seconds (no measurement).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch
from common import parse_args
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from prospect.data.batch import Batch
from prospect.data.clip import Clip
from prospect.data.datamodule import ProspectDataModule
from prospect.eval.streaming import FeatureMemo, Run, stream_runs
from prospect.model.lit_module import ProspectLitModule
from prospect.model.losses import total_loss
from prospect.stream.generator import FrameRecord, StreamingGenerator

REPO = Path(__file__).resolve().parents[1]
SILENT = (1.1, 1.1)  # (speaking, dst_update) thresholds above any probability
LOSS_TERMS = ("total", "lm", "dst_gen", "speaking", "dst_update")
SAME = ("frame", "text", "dst_text", "dst_state", "cache_tokens", "positions", "compressions", "summaries")
# the tiny model and +debug=fast's data, built in the run's temporary folder rather than under the repository
SMOKE = dict(steps=1, videos=1, frames=20, overrides=["+debug=fast", "paths.root_dir=${paths.output_dir}"])


def default_config(output_dir: Path, overrides: list[str]) -> DictConfig:
    """`python train.py +experiment=perframe [overrides]`'s config, composed as train.py composes it."""
    os.environ.setdefault("PROSPECT_ROOT", str(REPO))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["+experiment=perframe", f"paths.output_dir={output_dir}", *overrides])


def cpu_flags() -> dict:
    """The machine, and whether its CPU has native bf16 (avx512_bf16, AMX)."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        line = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    return {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **{f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}}


# Training

def train_step(module: ProspectLitModule, batch: Batch, bf16: bool) -> dict[str, torch.Tensor]:
    """Forward and the losses (under bf16 autocast when asked), then backward outside autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = total_loss(module.net(batch), batch, module.loss_cfg)
    losses["total"].backward()
    return losses


def time_training(module: ProspectLitModule, batches: list[Batch], bf16: bool, warmup: int, seed: int,
                  clip_norm: float | None) -> dict:
    """`batches` as training steps from the module's current weights; the caller restores them afterwards."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = module.optimizer_factory(params=params)
    module.train()
    for _ in range(warmup):  # oneDNN primitives, allocator: nothing a weight sees
        train_step(module, batches[0], bf16)
        optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same LoRA dropout masks in both precisions
    first: dict[str, float] = {}
    start = time.perf_counter()
    for batch in batches:
        losses = train_step(module, batch, bf16)
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        first = first or {k: float(losses[k].detach()) for k in LOSS_TERMS}
    seconds = time.perf_counter() - start
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    return {"precision": "bf16-mixed" if bf16 else "32-true", "steps": len(batches), "tokens": tokens,
            "seconds": seconds, "ms_per_1k_tokens": seconds * 1e6 / tokens, "first_step_loss": first}


def training(cfg: DictConfig, steps: int, warmup: int) -> tuple[list[dict], ProspectDataModule]:
    """fp32 and bf16-mixed steps on the same batches from the same weights (see the module docstring)."""
    from prospect.train import build  # the model and data exactly as train.py builds them

    torch.manual_seed(cfg.seed)
    module, datamodule = build(cfg)
    datamodule.setup("fit")
    datamodule.set_epoch(0)
    batches = list(islice(datamodule.train_dataloader(), steps))
    initial = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    rows = []
    for bf16 in (False, True):
        with torch.no_grad():  # both precisions start from the same trainable weights
            for name, param in module.named_parameters():
                if name in initial:
                    param.copy_(initial[name])
        row = time_training(module, batches, bf16, warmup, cfg.seed, cfg.trainer.get("gradient_clip_val"))
        reference = rows[0] if rows else row
        row["time_ratio_fp32"] = reference["seconds"] / row["seconds"]
        row["first_step_loss_diff"] = max(abs(row["first_step_loss"][k] - reference["first_step_loss"][k])
                                          for k in LOSS_TERMS)
        rows.append(row)
        print(_train_line(row), flush=True)
    del module, initial
    gc.collect()
    return rows, datamodule


def _train_line(row: dict) -> str:
    return (f"| {row['precision']} | {row['steps']} | {row['tokens']} | {row['seconds']:.1f} | "
            f"{row['ms_per_1k_tokens']:.0f} | {row['time_ratio_fp32']:.2f}x | {row['first_step_loss']['total']:.4f} "
            f"| {row['first_step_loss_diff']:.1e} |")


# Streaming

def cut(clip: Clip, frames: int | None) -> Clip:
    """The clip's first `frames` frames (the events after them are never fed)."""
    if frames is None:
        return clip
    end = min(clip.video.end_frame, clip.video.start_frame + frames)
    return replace(clip, video=replace(clip.video, end_frame=end))


def streamed_records(generator: StreamingGenerator, clips: list[Clip], settings: list[str], memo: FeatureMemo,
                     batch_size: int) -> tuple[list[FrameRecord], float]:
    """Every clip at every setting, silent; (all records, setting by setting, seconds)."""
    runs: list[Run] = [(s, SILENT) for s in settings]
    start = time.perf_counter()
    streamed = stream_runs(generator, clips, runs, memo, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return [r for run in runs for s in streamed[run] for r in s.records], seconds


def streaming(cfg: DictConfig, clips: list[Clip], dtypes: list[str], batch_sizes: list[int]) -> list[dict]:
    """Frames per second of eval.py's streams per dtype and batch size, against float32 at the same batch size."""
    stream = cfg.stream
    settings = list(stream.settings)
    base = StreamingGenerator.untrained_from_config(OmegaConf.to_container(cfg.model, resolve=True),
                                                    max_new_tokens=stream.max_new_tokens,
                                                    max_summary_tokens=stream.max_summary_tokens,
                                                    do_sample=stream.do_sample)
    reference: dict[int, tuple[dict, list[FrameRecord]]] = {}  # batch size -> float32's row and records
    rows = []
    for name in sorted(dtypes, key=lambda d: d != "float32"):  # float32 first: the others are compared with it
        generator = copy.deepcopy(base).to(dtype=getattr(torch, name))
        memo = FeatureMemo(generator)
        for clip in clips:  # features once per dtype, before timing
            for f in clip.frame_indices:
                memo(clip, f)
        stream_runs(generator, [cut(clips[0], 4)], [("none", SILENT)], memo)  # warm-up, untimed
        for batch_size in batch_sizes:
            records, seconds = streamed_records(generator, clips, settings, memo, batch_size)
            row = {"dtype": name, "batch_size": batch_size, "videos": len(clips), "streams": len(clips) * len(settings),
                   "frames": len(records), "seconds": seconds, "frames_per_s": len(records) / seconds}
            if name == "float32":
                reference[batch_size] = (row, records)
            if batch_size in reference:
                ref_row, ref_records = reference[batch_size]
                pairs = list(zip(records, ref_records, strict=True))
                row["speedup_vs_float32"] = row["frames_per_s"] / ref_row["frames_per_s"]
                row["max_prob_diff"] = max((abs(getattr(a, k) - getattr(b, k)) for a, b in pairs
                                            for k in ("speaking_prob", "dst_update_prob")), default=0.0)
                row["records_unlike_float32"] = sum(any(getattr(a, k) != getattr(b, k) for k in SAME)
                                                    for a, b in pairs)
            rows.append(row)
            print(_stream_line(row), flush=True)
        del generator, memo
        gc.collect()
    return rows


def _stream_line(row: dict) -> str:
    compared = "speedup_vs_float32" in row
    return (f"| {row['dtype']} | {row['batch_size']} | {row['streams']} | {row['frames']} | {row['seconds']:.1f} | "
            f"{row['frames_per_s']:.1f} | " + (f"{row['speedup_vs_float32']:.2f}x | {row['max_prob_diff']:.1e} | "
                                               f"{row['records_unlike_float32']} |" if compared else "- | - | - |"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward + backward passes per precision")
    parser.add_argument("--videos", type=int, default=8, help="test videos to stream")
    parser.add_argument("--frames", type=int, help="cut each test video to its first N frames (default: whole)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="streaming dtypes")
    parser.add_argument("--batch-sizes", default="8,16", help="streaming batch sizes")
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="config overrides, e.g. data.num_videos=40")
    args = parse_args(parser, SMOKE)
    dtypes = args.dtypes.split(",")
    if unknown := [d for d in dtypes if d not in ("float32", "bfloat16", "float16")]:
        parser.error(f"--dtypes: unknown {unknown}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    machine = cpu_flags()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = default_config(Path(tmp) / "output", args.overrides)
        print("\n| precision | steps | tokens | seconds | ms per 1k tokens | fp32 / this (time) | first-step loss "
              "| max first-step loss diff vs fp32 |")
        print("|---|---|---|---|---|---|---|---|")
        train_rows, datamodule = training(cfg, args.steps, args.warmup)
        clips = [cut(c, args.frames) for c in datamodule.videos("test")[:args.videos]]
        print("\n| dtype | batch size | streams | frames | seconds | frames/s | speed-up vs float32 "
              "| max prob diff vs float32 | records unlike float32 |")
        print("|---|---|---|---|---|---|---|---|---|")
        stream_rows = streaming(cfg, clips, dtypes, batch_sizes)
    if args.json:
        report = {"machine": machine, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "train": train_rows, "stream": stream_rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
