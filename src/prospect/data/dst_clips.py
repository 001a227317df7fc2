"""Importer for DST clips (docs/data-format.md, DST clips): ProAssist-style clips with task steps and DST_UPDATE turns.

Per-turn frame fields (start_frame, end_frame) were computed inconsistently upstream and are ignored: every
event's frame comes from its `time` through timebase.frame_at (a turn past the clip's end is attached to its
last frame, as upstream does; check_clip warns about it). A first system turn before any frame is the clip's
system prompt. A turn's `dst_state` (the state before it) must
agree with the state tracked from the initial state and the updates so far.
"""

from __future__ import annotations

from pathlib import Path

from prospect.data.checks import UPSTREAM_NAMES, check_clip, check_state
from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate, TransitionError, apply_updates
from prospect.data.errors import Problems
from prospect.data.fields import field, objects
from prospect.data.timebase import frame_at

_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "DST_UPDATE": "dst"}
_TOP_LEVEL = {"video_uid": "string", "conversation": "array", "dst": "array", "frames_file": "string",
              "start_frame_idx": "integer", "end_frame_idx": "integer", "fps": "number"}
_USED = set(_TOP_LEVEL) | {"dataset", "clip_idx", "inferred_goal", "inferred_knowledge", "initial_dst_state"}


def is_dst_clip(record: dict) -> bool:
    turns = record.get("conversation")
    return "dst" in record or "inferred_goal" in record or isinstance(turns, list) and any(
        isinstance(t, dict) and t.get("role") == "DST_UPDATE" for t in turns)


def read_dst_clip(record: dict, problems: Problems, root: Path | None) -> Clip | None:
    """Clip from one DST clip record, or None after adding its problems."""
    clip_idx = field(record, "clip_idx", "integer", problems, "clip_idx", default=0)
    if isinstance(record.get("video_uid"), str):
        problems.clip = f"{record['video_uid']}/{clip_idx}"
    top = {key: field(record, key, kind, problems, key) for key, kind in _TOP_LEVEL.items()}
    if None in top.values() or clip_idx is None:
        return None
    steps = _steps(top["dst"], problems)
    initial = _initial_state(record, steps, problems)
    fps, start = top["fps"], top["start_frame_idx"]
    if not fps > 0:
        problems.add("fps", f"fps must be positive, got {fps}")
    events = _events(top["conversation"], fps, start, top["end_frame_idx"] - 1, initial, problems)
    if problems:
        return None
    if events and events[0].role == "system" and events[0].frame == start - 1:
        events[0].kind = "prompt"
    clip = Clip(
        id=problems.clip,
        dataset=field(record, "dataset", "string", problems, "dataset", default="") or "",
        video=Video(top["frames_file"], fps, start, top["end_frame_idx"]),
        task=Task(
            goal=field(record, "inferred_goal", "string", problems, "inferred_goal", default="") or "",
            knowledge=field(record, "inferred_knowledge", "string", problems, "inferred_knowledge", default="")
            or "",
            steps=steps,
            initial_state=initial,
        ),
        events=events,
        metadata={"source_format": "dst", **{k: v for k, v in record.items() if k not in _USED}},
        root=root,
    )
    check_clip(clip, problems, UPSTREAM_NAMES)
    return clip


def _steps(items: list, problems: Problems) -> list[Step] | None:
    steps = []
    for where, item in objects(items, problems, "dst"):
        kind = field(item, "type", "string", problems, f"{where}.type", default="step")
        if kind not in ("step", None):
            problems.add(f"{where}.type", f"unsupported DST item type {kind!r} (expected 'step')")
        step_id = field(item, "id", "string", problems, f"{where}.id")
        name = field(item, "name", "string", problems, f"{where}.name")
        t0 = field(item, "start_ts", "number", problems, f"{where}.start_ts", default=None)
        t1 = field(item, "end_ts", "number", problems, f"{where}.end_ts", default=None)
        if t0 is not None and t1 is not None and t1 < t0:
            problems.add(f"{where}.end_ts", f"{t1} is earlier than start_ts ({t0})")
        if step_id is not None and name is not None:
            steps.append(Step(step_id, name, t0, t1))
    return steps if len(steps) == len(items) else None


def _initial_state(record: dict, steps: list[Step] | None, problems: Problems) -> dict[str, str] | None:
    given = field(record, "initial_dst_state", "object", problems, "initial_dst_state", default={})
    if given is None or steps is None or not check_state(given, {s.id for s in steps}, problems, "initial_dst_state"):
        return None
    return {**{s.id: "not_started" for s in steps}, **given}  # steps it omits have not started


def _events(turns: list, fps: float, start: int, last: int, state: dict[str, str] | None,
            problems: Problems) -> list[Event] | None:
    events: list[Event] = []
    fps = fps if fps > 0 else 1.0  # a bad fps is reported by the caller; read on to list every other problem
    last_time = start / fps
    n_before = len(problems)
    for where, turn in objects(turns, problems, "conversation"):
        role = field(turn, "role", "string", problems, f"{where}.role")
        if role is None:
            continue
        if role not in _ROLES:
            problems.add(f"{where}.role", f"unknown role {role!r} (expected {', '.join(_ROLES)})")
            continue
        # System prompts carry no time: they hold from the clip start (or the previous event) on.
        time = field(turn, "time", "number", problems, f"{where}.time",
                     **({"default": last_time} if role == "system" else {}))
        if time is None:
            continue
        last_time = max(last_time, time)
        frame = min(frame_at(time, fps), last)
        if role == "DST_UPDATE":
            updates = _updates(turn, where, problems)
            event = Event("dst", time, frame, updates=updates or [], source=where)
        else:
            text = field(turn, "content", "string", problems, f"{where}.content")
            event = Event(_ROLES[role], time, frame, text=text or "",
                          labels=field(turn, "labels", "string", problems, f"{where}.labels", default=None),
                          progress=field(turn, "progress", "string", problems, f"{where}.progress", default=None),
                          source=where)
        _check_dst_state(turn, where, state, problems)
        if event.role == "dst" and state is not None:
            try:
                state = apply_updates(state, event.updates)
            except TransitionError:
                state = None  # reported by check_clip; later dst_state fields can no longer be compared
        events.append(event)
    return None if len(problems) > n_before else events


def _updates(turn: dict, where: str, problems: Problems) -> list[StepUpdate] | None:
    items = field(turn, "content", "array", problems, f"{where}.content")
    if items is None:
        return None
    if not items:
        problems.add(f"{where}.content", "a DST_UPDATE turn with no updates")
    updates = []
    for w, item in objects(items, problems, f"{where}.content"):
        step_id = field(item, "id", "string", problems, f"{w}.id")
        transition = field(item, "transition", "string", problems, f"{w}.transition")
        if step_id is not None and transition is not None:
            updates.append(StepUpdate(step_id, transition))
    return updates


def _check_dst_state(turn: dict, where: str, state: dict[str, str] | None, problems: Problems) -> None:
    if turn.get("dst_state") is None:  # absent or null: nothing to compare
        return
    given = field(turn, "dst_state", "object", problems, f"{where}.dst_state")
    if given is None or state is None or not check_state(given, set(state), problems, f"{where}.dst_state"):
        return
    for step_id, value in given.items():
        if state[step_id] != value:
            problems.add(f"{where}.dst_state.{step_id}", f"says {value} but the updates so far give "
                         f"{state[step_id]}")
