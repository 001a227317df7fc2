"""Checks every clip passes, whatever file format it came from.

Importers check what is specific to their format (field types, frames turns) and name fields as their source
file does; `FieldNames` carries those names here so a problem points at the field the user must fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from prospect.data.clip import Clip
from prospect.data.dst import STATES, TransitionError, apply_updates
from prospect.data.errors import Problems
from prospect.data.frames import FrameSourceError, open_frames
from prospect.data.timebase import frame_at, frame_end_time, frame_time

_TEXT_REQUIRED = ("user", "assistant")
_KIND_ROLE = {"summarize_request": "system", "summary": "assistant", "prompt": "system", "knowledge": "system"}


@dataclass(frozen=True)
class FieldNames:
    """Names of clip-level fields, and of event sub-fields (appended to Event.source), in the source file."""

    fps: str = "video.fps"
    start_frame: str = "video.start_frame"
    end_frame: str = "video.end_frame"
    source: str = "video.source"
    steps: str = "task.steps"
    initial_state: str = "task.initial_state"
    time: str = "time"
    text: str = "text"
    updates: str = "updates"


# ProAssist's prepared clips and their DST extension name the fields alike.
UPSTREAM_NAMES = FieldNames(fps="fps", start_frame="start_frame_idx", end_frame="end_frame_idx",
                            source="frames_file", steps="dst", initial_state="initial_dst_state", text="content",
                            updates="content")


def check_clip(clip: Clip, problems: Problems, names: FieldNames = FieldNames()) -> None:
    """Add every problem of `clip` to `problems`: video range, steps, event order, bounds and transitions."""
    video, fps = clip.video, clip.video.fps
    if not fps > 0:
        problems.add(names.fps, f"fps must be positive, got {fps}")
    if video.start_frame < 0:
        problems.add(names.start_frame, f"must be >= 0, got {video.start_frame}")
    if video.end_frame <= video.start_frame:
        problems.add(names.end_frame, f"{video.end_frame} must be greater than the start frame "
                     f"({video.start_frame}); the end frame is exclusive")
    _check_steps(clip, problems, names)
    if not clip.events:
        problems.add(None, "the clip has no events (empty conversation)")
    if fps > 0:
        _check_events(clip, problems, names)


def _check_steps(clip: Clip, problems: Problems, names: FieldNames) -> None:
    seen: set[str] = set()
    for i, step in enumerate(clip.task.steps):
        if step.id in seen:
            problems.add(f"{names.steps}[{i}].id", f"duplicate step id {step.id!r}")
        seen.add(step.id)
    check_state(clip.task.initial_state, seen, problems, names.initial_state)


def check_state(state: dict, step_ids: set[str], problems: Problems, where: str) -> bool:
    """Every entry of a DST state names a known step and a known state; False after adding problems."""
    n_before = len(problems)
    for step_id, value in state.items():
        if step_id not in step_ids:
            problems.add(f"{where}.{step_id}", f"unknown step id {step_id!r}")
        elif value not in STATES:
            problems.add(f"{where}.{step_id}", f"unknown state {value!r} (use {', '.join(STATES)})")
    return len(problems) == n_before


def _check_events(clip: Clip, problems: Problems, names: FieldNames) -> None:
    fps, first, last = clip.fps, clip.video.start_frame, clip.video.end_frame - 1
    state = clip.task.start_state()
    prev = None
    dst_at: dict[int, str] = {}  # frame -> the DST event decided after it
    for i, e in enumerate(clip.events):
        where = e.source or f"events[{i}]"
        if e.time < 0:
            problems.add(f"{where}.{names.time}", f"negative time {e.time}")
        elif frame_at(e.time, fps) < first - 1:
            problems.add(f"{where}.{names.time}", f"{e.time} s is before the clip starts "
                         f"(frame {first} at {frame_time(first, fps):g} s)")
        elif frame_at(e.time, fps) > last:
            # upstream attaches a turn past the video's end to its last frame (docs/data-format.md): read it so,
            # and say so
            report = problems.warn if e.frame == last else problems.add
            report(f"{where}.{names.time}", f"{e.time} s is after the clip ends (last frame {last} completes at "
                   f"{frame_end_time(last, fps):g} s)" + ("; decided after the last frame, as upstream attaches it"
                                                           if e.frame == last else ""))
        if not first - 1 <= e.frame <= last:
            problems.add(where, f"decided after frame {e.frame}, outside the clip's frames [{first}, {last + 1})")
        if prev is not None and e.time < prev.time:
            problems.add(f"{where}.{names.time}", f"{e.time} is earlier than the previous event ({prev.time})")
        if prev is not None and e.frame < prev.frame:
            problems.add(where, f"decided after frame {e.frame}, before the previous event (frame {prev.frame})")
        if e.role in _TEXT_REQUIRED and not e.text.strip():
            problems.add(f"{where}.{names.text}", f"empty {e.role} text")
        if e.kind is not None and _KIND_ROLE.get(e.kind) != e.role:
            problems.add(where, f"kind {e.kind!r} does not fit role {e.role!r}")
        if e.kind == "prompt" and (i > 0 or e.frame != first - 1):
            problems.add(where, "the clip's system prompt (kind 'prompt') must be its first event, decided before "
                         "the first frame")
        if e.role == "dst" and e.frame in dst_at:
            problems.add(where, f"a second DST event decided after frame {e.frame} (the first is {dst_at[e.frame]}): "
                         "one event holds all the updates of a frame, as the model writes them in one turn")
        if e.role == "dst":
            dst_at.setdefault(e.frame, where)
            try:
                state = apply_updates(state, e.updates)
            except TransitionError as err:
                problems.add(f"{where}.{names.updates}", str(err))
        prev = e


def check_frames(clip: Clip, problems: Problems, names: FieldNames = FieldNames()) -> None:
    """The frames source exists, is readable, and holds every frame of the clip."""
    try:
        n = len(open_frames(clip.frames_path, clip.fps))
    except FrameSourceError as err:
        problems.add(names.source, str(err))
        return
    if n < clip.video.end_frame:
        problems.add(names.source, f"{clip.frames_path} has {n} frames but the clip needs frames up to "
                     f"{clip.video.end_frame - 1}")
