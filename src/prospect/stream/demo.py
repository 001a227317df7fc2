"""Transcript demo: stream one video through a checkpoint and print, with timestamps, what the assistant says
and which steps it marks. Every turn, generated or given, is shown at its decision time: the end of the frame it
is decided after.

    python -m prospect.stream.demo CHECKPOINT --clips data/synthetic/test.jsonl [--index 0] [--reference]
    python -m prospect.stream.demo CHECKPOINT --video my.mp4 --fps 2 --goal "make tea" \\
        --steps "boil water" "add the tea bag" --user "Help me make tea."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.frames import open_frames
from prospect.data.load import load_clips
from prospect.data.timebase import frame_end_time
from prospect.stream.generator import StreamingGenerator


def clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:04.1f}"


def video_clip(path: Path, fps: float, goal: str, steps: list[str], user: str | None) -> Clip:
    """A clip around a plain video file: the task from the command line, an optional user turn at the start."""
    frames = len(open_frames(path.resolve(), fps))
    ids = [f"S{k + 1}" for k in range(len(steps))]
    task = Task(goal=goal, steps=[Step(i, name) for i, name in zip(ids, steps, strict=True)],
                initial_state=dict.fromkeys(ids, "not_started"))
    events = [Event("user", 0.0, -1, user)] if user else []
    return Clip(id=path.stem, video=Video(str(path.resolve()), fps, 0, frames), task=task, events=events)


def transcript(generator: StreamingGenerator, clip: Clip, reference: bool = False):
    """Lines of the transcript, yielded as the stream goes (user turns and, optionally, the reference's)."""
    shown = {"user", "system"} | ({"assistant", "dst"} if reference else set())
    inputs = sorted((e for e in clip.events if e.role in shown), key=lambda e: e.time)
    steps = {s.id: s.name for s in clip.task.steps}
    yield (f"task: {clip.task.goal or clip.id} ({len(clip.task.steps)} steps, {clip.fps:g} fps, "
           f"{len(clip.frame_indices)} frames, setting {generator.strategy.name})")
    k, last_compressions = 0, 0
    for record in generator.stream(clip):
        while k < len(inputs) and inputs[k].frame <= record.frame:
            e = inputs[k]
            tag = e.role if e.role in ("user", "system") else f"reference {e.role}"
            yield f"[{clock(frame_end_time(e.frame, clip.fps))}] {tag}: {e.text}"
            k += 1
        at = f"[{clock(frame_end_time(record.frame, clip.fps))}]"
        if record.compressions > last_compressions:
            yield f"{at} (cache compressed: {record.cache_tokens} tokens kept)"
            last_compressions = record.compressions
        if record.dst_text:
            marks = ", ".join(f"{i} {s} ({steps.get(i, '?')})" for i, s in record.dst_state.items()
                              if s != "not_started")
            yield f"{at} DST: {record.dst_text}  ->  {marks or 'nothing started'}"
        if record.text:
            yield f"{at} assistant: {record.text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prospect.stream.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint or an exported directory")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--clips", type=Path, help="a clips file (JSONL / JSON); streams one of its clips")
    src.add_argument("--video", type=Path, help="a video file (or frames folder / .arrow) with --steps")
    parser.add_argument("--index", type=int, default=0, help="which clip of --clips")
    parser.add_argument("--root", type=Path, help="folder the clips' relative frames paths are under")
    parser.add_argument("--fps", type=float, default=2.0, help="frames per second sampled from --video")
    parser.add_argument("--goal", default="", help="the task's goal (--video)")
    parser.add_argument("--steps", nargs="+", default=[], help="the task's step names in order (--video)")
    parser.add_argument("--user", help="what the user says at the start (--video)")
    parser.add_argument("--setting", default="none", help="none or <strategy>_<1k|2k|4k>, e.g. drop_middle_1k")
    parser.add_argument("--speaking-threshold", type=float,
                        help="default: the exported model's calibrated one for --setting, else 0.5")
    parser.add_argument("--dst-update-threshold", type=float,
                        help="default: the exported model's calibrated one for --setting, else 0.5")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--reference", action="store_true", help="also print the clip's reference turns")
    args = parser.parse_args(argv)

    if args.clips:
        clips = load_clips(args.clips, root=args.root)
        if not 0 <= args.index < len(clips):
            parser.error(f"--index {args.index}: {args.clips} holds {len(clips)} clips")
        clip = clips[args.index]
    else:
        if not args.steps:
            parser.error("--video needs the task's --steps")
        clip = video_clip(args.video, args.fps, args.goal, args.steps, args.user)
    thresholds = {k: v for k, v in (("speaking_threshold", args.speaking_threshold),
                                    ("dst_update_threshold", args.dst_update_threshold)) if v is not None}
    generator = StreamingGenerator.load(str(args.checkpoint), setting=args.setting,
                                        max_new_tokens=args.max_new_tokens, **thresholds)
    for line in transcript(generator, clip, args.reference):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
