"""Stream one video through a trained model (a training checkpoint or an exported directory) and show, with
timestamps, what the assistant says and which steps it marks; optionally write the transcript as JSON and as
WebVTT subtitles next to the video. Every turn, generated or given, is shown at its decision time: the end of
the frame it is decided after.

    python -m prospect.stream.demo MODEL --clips data/synthetic/test.jsonl [--index 0] [--reference]
    python -m prospect.stream.demo MODEL --video my.mp4 --task task.json --out
    python -m prospect.stream.demo MODEL --video frames/ --fps 2 --goal "make tea" \\
        --steps "boil water" "add the tea bag" --user "Help me make tea." --say 30 "Is this enough water?"

task.json: {"goal": "...", "steps": ["...", ...], "knowledge": "...", "user": [{"time": 0, "text": "..."}]}
(knowledge and user optional). Thresholds default to the exported model's calibrated ones for --setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.frames import open_frames
from prospect.data.load import load_clips
from prospect.data.timebase import frame_at, frame_end_time
from prospect.stream.generator import DTYPES, StreamingGenerator, pick_device, stream_dtype


@dataclass
class Turn:
    """One line of the transcript: a turn at its decision time."""

    time: float  # seconds: the end of the frame it is decided after
    frame: int
    role: str  # user | system | assistant | dst | reference assistant | reference dst | cache
    text: str
    state: dict[str, str] | None = None  # the tracked DST state after a generated DST update


def clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:04.1f}"


def video_clip(path: Path, fps: float, task: dict, user: list[tuple[float, str]]) -> Clip:
    """A clip around a plain video (file, image folder or .arrow): the task and the user's turns as given."""
    frames = len(open_frames(path.resolve(), fps))
    late = [(t, text) for t, text in user if frame_at(t, fps) >= frames - 1]
    if late:
        raise ValueError(f"{path}: user turn {late[0][1]!r} at {late[0][0]} s is at or after the end of the video "
                         f"({frames} frames at {fps:g} fps: {frames / fps:g} s)")
    ids = [f"S{k + 1}" for k in range(len(task["steps"]))]
    steps = [Step(i, name) for i, name in zip(ids, task["steps"], strict=True)]
    events = [Event("user", t, max(frame_at(t, fps), -1), text) for t, text in sorted(user)]
    return Clip(id=path.stem, video=Video(str(path.resolve()), fps, 0, frames),
                task=Task(goal=task.get("goal", ""), knowledge=task.get("knowledge", ""), steps=steps,
                          initial_state=dict.fromkeys(ids, "not_started")), events=events)


def read_task(path: Path) -> tuple[dict, list[tuple[float, str]]]:
    """A task file: goal, steps (names in order), knowledge, user turns."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ValueError(f"{path}: expected an object with a non-empty list `steps` of step names")
    for i, step in enumerate(data["steps"]):
        if not isinstance(step, str):
            raise ValueError(f"{path}: steps[{i}] must be a step name (a string), got {step!r}")
    user = []
    for i, turn in enumerate(data.get("user", [])):
        if not isinstance(turn, dict) or not isinstance(turn.get("time"), int | float) or "text" not in turn:
            raise ValueError(f"{path}: user[{i}] must be {{\"time\": seconds, \"text\": \"...\"}}, got {turn!r}")
        user.append((float(turn["time"]), str(turn["text"])))
    return data, user


def turns(generator: StreamingGenerator, clip: Clip, reference: bool = False) -> Iterator[Turn]:
    """The transcript's turns, yielded as the stream goes (user turns and, optionally, the reference's)."""
    shown = {"user", "system"} | ({"assistant", "dst"} if reference else set())
    inputs = sorted((e for e in clip.events if e.role in shown), key=lambda e: e.time)
    k, last_compressions = 0, 0
    for record in generator.stream(clip):
        while k < len(inputs) and inputs[k].frame <= record.frame:
            e = inputs[k]
            role = e.role if e.role in ("user", "system") else f"reference {e.role}"
            yield Turn(frame_end_time(e.frame, clip.fps), e.frame, role, e.text)
            k += 1
        at = frame_end_time(record.frame, clip.fps)
        if record.compressions > last_compressions:
            yield Turn(at, record.frame, "cache", f"compressed: {record.cache_tokens} tokens kept")
            last_compressions = record.compressions
        if record.dst_text:
            yield Turn(at, record.frame, "dst", record.dst_text, dict(record.dst_state))
        if record.text:
            yield Turn(at, record.frame, "assistant", record.text)


def line(turn: Turn, clip: Clip) -> str:
    at = f"[{clock(turn.time)}]"
    if turn.role == "cache":
        return f"{at} (cache {turn.text})"
    if turn.role == "dst":
        steps = {s.id: s.name for s in clip.task.steps}
        marks = ", ".join(f"{i} {s} ({steps.get(i, '?')})" for i, s in turn.state.items() if s != "not_started")
        return f"{at} DST: {turn.text}  ->  {marks or 'nothing started'}"
    return f"{at} {turn.role}: {turn.text}"


def webvtt(transcript: list[Turn], seconds: float = 4.0) -> str:
    """Subtitles: each spoken turn (and DST update) from its decision time for `seconds`, cut at the next one."""
    shown = [t for t in transcript if t.role != "cache"]
    cues = ["WEBVTT", ""]
    for n, t in enumerate(shown):
        end = t.time + seconds
        if n + 1 < len(shown) and shown[n + 1].time > t.time:
            end = min(end, shown[n + 1].time)
        label = {"dst": "DST", "assistant": "Assistant", "user": "User", "system": "System"}.get(t.role, t.role)
        cues += [str(n + 1), f"{_vtt_time(t.time)} --> {_vtt_time(end)}", f"{label}: {t.text}", ""]
    return "\n".join(cues)


def _vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    return f"{hours:02d}:{minutes:02d}:{ms // 1000:02d}.{ms % 1000:03d}"


def write_outputs(out_dir: Path, name: str, transcript: list[Turn], clip: Clip, generator: StreamingGenerator,
                  model: str) -> tuple[Path, Path]:
    """<name>.transcript.json and <name>.vtt in `out_dir` (a player shows <name>.vtt beside <name>.mp4)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"model": model, "clip": clip.id, "video": clip.video.source, "fps": clip.fps,
              "setting": generator.strategy.name, "speaking_threshold": generator.speaking_threshold,
              "dst_update_threshold": generator.dst_update_threshold,
              "task": {"goal": clip.task.goal, "steps": {s.id: s.name for s in clip.task.steps}},
              "turns": [asdict(t) for t in transcript]}
    json_path, vtt_path = out_dir / f"{name}.transcript.json", out_dir / f"{name}.vtt"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    vtt_path.write_text(webvtt(transcript))
    return json_path, vtt_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prospect.stream.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a training checkpoint or an exported directory")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--clips", type=Path, help="a clips file (any supported format); streams one of its clips")
    src.add_argument("--video", type=Path, help="a video file, a folder of images or a .arrow frames file")
    parser.add_argument("--index", type=int, default=0, help="which clip of --clips")
    parser.add_argument("--root", type=Path, help="folder the clips' relative frames paths are under")
    parser.add_argument("--fps", type=float, default=2.0, help="frames per second sampled from a video file")
    parser.add_argument("--task", type=Path, help="a task file for --video (see above)")
    parser.add_argument("--goal", default="", help="the task's goal (--video, without --task)")
    parser.add_argument("--steps", nargs="+", default=[], help="the task's step names in order (--video)")
    parser.add_argument("--user", help="what the user says at the start (--video)")
    parser.add_argument("--say", nargs=2, action="append", default=[], metavar=("SECONDS", "TEXT"),
                        help="a user turn at a time (--video; repeatable)")
    parser.add_argument("--setting", default="none",
                        help="none or <strategy>_<budget> (tokens: 512, or 1k = 1024), e.g. drop_middle_1k")
    parser.add_argument("--speaking-threshold", type=float,
                        help="default: the exported model's calibrated one for --setting, else 0.5")
    parser.add_argument("--dst-update-threshold", type=float,
                        help="default: the exported model's calibrated one for --setting, else 0.5")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--reference", action="store_true", help="also print the clip's reference turns")
    parser.add_argument("--out", nargs="?", const="",
                        help="write <name>.transcript.json and <name>.vtt into this folder (no value: beside "
                             "the video, or the clips file)")
    args = parser.parse_args(argv)

    if args.clips:
        clips = load_clips(args.clips, root=args.root)
        if not 0 <= args.index < len(clips):
            parser.error(f"--index {args.index}: {args.clips} holds {len(clips)} clips")
        clip, beside = clips[args.index], args.clips.parent
        name = clip.id.replace("/", "_")
    else:
        if args.task:
            task, user = read_task(args.task)
        elif args.steps:
            task, user = {"goal": args.goal, "steps": args.steps}, []
        else:
            parser.error("--video needs the task: --task FILE or --steps")
        user += [(0.0, args.user)] if args.user else []
        try:
            user += [(float(t), text) for t, text in args.say]
        except ValueError as e:
            parser.error(f"--say SECONDS TEXT: {e}")
        clip, beside, name = video_clip(args.video, args.fps, task, user), args.video.parent, args.video.stem
    thresholds = {k: v for k, v in (("speaking_threshold", args.speaking_threshold),
                                    ("dst_update_threshold", args.dst_update_threshold)) if v is not None}
    generator = StreamingGenerator.from_pretrained(str(args.model), setting=args.setting,
                                                   device=pick_device(args.device),
                                                   max_new_tokens=args.max_new_tokens, **thresholds)
    generator.to(dtype=stream_dtype(args.dtype))
    print(f"task: {clip.task.goal or clip.id} ({len(clip.task.steps)} steps, {clip.fps:g} fps, "
          f"{len(clip.frame_indices)} frames, setting {generator.strategy.name}, device {generator.device}, "
          f"{args.dtype})", flush=True)
    transcript = []
    for turn in turns(generator, clip, args.reference):
        transcript.append(turn)
        print(line(turn, clip), flush=True)
    if args.out is not None:
        out_dir = beside if args.out == "" else Path(args.out)
        paths = write_outputs(out_dir, name, transcript, clip, generator, str(args.model))
        print("written: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
