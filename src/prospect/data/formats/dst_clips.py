"""Importer for DST clips (docs/data-format.md, DST clips): ProAssist-style clips with task steps and DST_UPDATE turns,
as the DST fork of ProAssist writes them.

Per-turn frame fields (start_frame, end_frame) were computed inconsistently upstream and are ignored: frames come
from `time`. The dialog turns (user, assistant, timed system turns) are placed as ProAssist's
convert_conversation_time_to_index places them: a turn on or before the previous dialog turn's frame moves one
frame later (a question and its answer never share a frame), a turn past the clip's end is attached to its last
frame, and one that cannot move (the previous turn already took the last frame) is dropped with every turn after
it. A DST update is an output of the same decision as a reply, so it is placed at its own time's frame; DST_UPDATE
turns sharing a frame (the fork writes every step change as `S1->complete` and `S2->start` at one time) become
one DST event. Where a file bends a rule the way upstream's data does (times out of order, before the clip),
the clip is read as upstream reads it and a warning says so.

The fork splits a long video into segments (`clip_idx` 0, 1, ... with `segment_stats`) whose own states are not
the start state (`initial_dst_state` holds the state at a non-final segment's end, per-turn `dst_state` is
computed from a blank state, an older version wrote a `DST_CONTEXT` turn): each segment starts from the state the
transitions of the segments before it lead to, and the file's own states are compared with it (warnings).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prospect.data.checks import UPSTREAM_NAMES, check_clip, check_state
from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate, TransitionError, apply_updates, format_updates
from prospect.data.errors import Problems
from prospect.data.formats.fields import field, json_type_ok, objects
from prospect.data.timebase import frame_at, frame_time

_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "DST_UPDATE": "dst"}
CONTEXT_ROLE = "DST_CONTEXT"  # an older fork's state turn at a segment's start: context, not a turn
_TOP_LEVEL = {"video_uid": "string", "conversation": "array", "dst": "array", "frames_file": "string",
              "start_frame_idx": "integer", "end_frame_idx": "integer", "fps": "number"}
_USED = set(_TOP_LEVEL) | {"dataset", "clip_idx", "inferred_goal", "inferred_knowledge", "initial_dst_state"}
# What the fork appends to a segment's system prompt (ConversationSplitter.inject_initial_dst_state).
_PROMPT_STATE = re.compile(r"\n\nDialogue State:\n(.*)\Z", re.S)
_PROMPT_STEP = re.compile(r"Step (\S+): (\w+)")

Key = tuple[float, str, str]  # (time, step id, transition): one transition, as the fork repeats it in overlaps


def is_dst_clip(record: dict) -> bool:
    turns = record.get("conversation")
    return "dst" in record or "inferred_goal" in record or isinstance(turns, list) and any(
        isinstance(t, dict) and t.get("role") in ("DST_UPDATE", CONTEXT_ROLE) for t in turns)


class DstClipReader:
    """Reads the DST clips of one file in file order, remembering each video's segments so that a later segment
    starts from the state that the transitions of the segments before it lead to."""

    def __init__(self) -> None:
        self._segments: dict[str, list[tuple[int, list[Key]]]] = {}  # video -> (clip_idx, transitions) so far

    def __call__(self, record: dict, problems: Problems, root: Path | None) -> Clip | None:
        """Clip from one DST clip record, or None after adding its problems."""
        clip_idx = field(record, "clip_idx", "integer", problems, "clip_idx", default=0)
        if isinstance(record.get("video_uid"), str):
            problems.clip = f"{record['video_uid']}/{clip_idx}"
        top = {key: field(record, key, kind, problems, key) for key, kind in _TOP_LEVEL.items()}
        if None in top.values() or clip_idx is None:
            return None
        steps = _steps(top["dst"], problems)
        segment = clip_idx > 0 or "segment_stats" in record
        before = self._before(top["video_uid"], clip_idx, _transitions(record), problems)
        if steps is None:
            return None
        if segment:
            initial = _recomputed_state(steps, before, problems) if before is not None else None
            if initial is not None:
                _compare_file_states(record, initial, problems)
        else:
            initial = _initial_state(record, steps, problems)
        fps, start = top["fps"], top["start_frame_idx"]
        if not fps > 0:
            problems.add("fps", f"fps must be positive, got {fps}")
        events = _events(top["conversation"], fps, start, top["end_frame_idx"] - 1, initial, segment, problems)
        if problems:
            return None
        if events and events[0].role == "system" and events[0].frame == start - 1:
            events[0].kind = "prompt"
            if segment:  # the state the fork appended is compared above; the prompt renders the recomputed one
                events[0].text = _PROMPT_STATE.sub("", events[0].text)
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

    def _before(self, video: str, clip_idx: int, own: list[Key], problems: Problems) -> list[Key] | None:
        """The transitions of the segments before this one (those this segment repeats excluded), and remember
        this segment's; None after a problem when the earlier segments are not all before it in the file."""
        if clip_idx == 0:
            self._segments[video] = []
        seen = self._segments.setdefault(video, [])
        found = [k for k, _ in seen]
        seen.append((clip_idx, own))
        if found != list(range(clip_idx)):
            problems.add("clip_idx", f"segment {clip_idx} of video {video}: its start state is recomputed from the "
                         f"segments before it, which must come first in this file (found segments {found})")
            return None
        repeated = set(own)
        earlier: list[Key] = []
        for _, keys in seen[:-1]:
            earlier += [k for k in keys if k not in repeated and k not in earlier]
        return earlier


def _transitions(record: dict) -> list[Key]:
    """The (time, id, transition) of every well-formed update in the record's DST_UPDATE turns, in file order."""
    keys: list[Key] = []
    turns = record.get("conversation") if isinstance(record.get("conversation"), list) else []
    for turn in turns:
        if not (isinstance(turn, dict) and turn.get("role") == "DST_UPDATE" and json_type_ok(turn.get("time"), "number")
                and isinstance(turn.get("content"), list)):
            continue
        keys += [(turn["time"], u["id"], u["transition"]) for u in turn["content"]
                 if isinstance(u, dict) and isinstance(u.get("id"), str) and isinstance(u.get("transition"), str)]
    return keys


def _recomputed_state(steps: list[Step], before: list[Key], problems: Problems) -> dict[str, str] | None:
    state = {s.id: "not_started" for s in steps}
    try:
        return apply_updates(state, [StepUpdate(step, transition) for _, step, transition in before])
    except TransitionError as err:
        problems.add("clip_idx", f"the transitions of the segments before this one do not replay: {err}")
        return None


def _compare_file_states(record: dict, state: dict[str, str], problems: Problems) -> None:
    """Warn where the segment's own start states (`initial_dst_state`, `metadata.initial_dst_state`, the state
    appended to its system prompt) contradict the recomputed one, which is used."""
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    given = [("initial_dst_state", record.get("initial_dst_state")),
             ("metadata.initial_dst_state", metadata.get("initial_dst_state"))]
    turns = record.get("conversation") if isinstance(record.get("conversation"), list) else []
    first = turns[0] if turns and isinstance(turns[0], dict) else {}
    if first.get("role") == "system" and isinstance(first.get("content"), str):
        appended = _PROMPT_STATE.search(first["content"])
        if appended:
            given.append(("conversation[0].content", dict(_PROMPT_STEP.findall(appended.group(1)))))
    for where, value in given:
        if isinstance(value, dict):
            _warn_contradiction(value, state, problems, where, "the state before this segment, recomputed from "
                                "the transitions of the segments before it,")


def _warn_contradiction(given: dict, state: dict[str, str], problems: Problems, where: str, what: str) -> None:
    wrong = {k: v for k, v in given.items() if k in state and state[k] != v}
    unknown = sorted(set(given) - set(state))
    if wrong or unknown:
        says = ", ".join(f"{k} {v}" for k, v in wrong.items())
        problems.warn(where, (f"says {says} but {what} is " + ", ".join(f"{k} {state[k]}" for k in wrong)
                              if wrong else f"names unknown steps {', '.join(unknown)}")
                      + "; the recomputed state is used")


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


def _initial_state(record: dict, steps: list[Step], problems: Problems) -> dict[str, str] | None:
    given = field(record, "initial_dst_state", "object", problems, "initial_dst_state", default={})
    if given is None or not check_state(given, {s.id for s in steps}, problems, "initial_dst_state"):
        return None
    return {**{s.id: "not_started" for s in steps}, **given}  # steps it omits have not started


def _events(turns: list, fps: float, start: int, last: int, state: dict[str, str] | None, segment: bool,
            problems: Problems) -> list[Event] | None:
    events: list[Event] = []
    fps = fps if fps > 0 else 1.0  # a bad fps is reported by the caller; read on to list every other problem
    dialog_frame = start - 1  # of the previous dialog turn: upstream starts at the clip's start
    n_before = len(problems)
    for where, turn in objects(turns, problems, "conversation"):
        role = field(turn, "role", "string", problems, f"{where}.role")
        if role == CONTEXT_ROLE:
            _check_context(turn, where, state, problems)
            continue
        if role is None:
            continue
        if role not in _ROLES:
            problems.add(f"{where}.role", f"unknown role {role!r} (expected {', '.join(_ROLES)}, {CONTEXT_ROLE})")
            continue
        previous = events[-1] if events else None
        # System prompts carry no time: they hold from the clip start (or the previous event) on.
        untimed = role == "system" and "time" not in turn
        time = field(turn, "time", "number", problems, f"{where}.time",
                     **({"default": previous.time if previous else start / fps} if untimed else {}))
        if time is None:
            continue
        frame = min(frame_at(time, fps), last)
        if role == "DST_UPDATE":
            # after a dialog turn pushed past its time, an update of that time follows it
            frame = max(frame, previous.frame) if previous and time >= previous.time else frame
            event = Event("dst", time, frame, updates=_updates(turn, where, problems) or [], source=where)
        else:
            if untimed:
                frame = previous.frame if previous else start - 1
            else:
                placed = _place_dialog_turn(time, frame, previous, dialog_frame, last, start, fps, where, problems)
                if placed is None:
                    rest = len(turns) - next(i for i, t in enumerate(turns) if t is turn) - 1
                    problems.warn(where, f"no frame left after the previous turn's (the clip's last); this turn and "
                                  f"the {rest} after it are dropped, as upstream drops them")
                    break
                time, frame = placed
                dialog_frame = frame
            text = field(turn, "content", "string", problems, f"{where}.content")
            event = Event(_ROLES[role], time, frame, text=text or "",
                          labels=field(turn, "labels", "string", problems, f"{where}.labels", default=None),
                          progress=field(turn, "progress", "string", problems, f"{where}.progress", default=None),
                          source=where)
        _check_dst_state(turn, where, state, segment, problems)
        if event.role == "dst" and state is not None:
            try:
                state = apply_updates(state, event.updates)
            except TransitionError:
                state = None  # reported by check_clip; later dst_state fields can no longer be compared
        if event.role == "dst" and previous and previous.role == "dst" and previous.frame == event.frame:
            previous.updates = previous.updates + event.updates  # one DST event per frame (one decision)
            previous.text = format_updates(previous.updates)
            continue
        events.append(event)
    return None if len(problems) > n_before else events


def _place_dialog_turn(time: float, frame: int, previous: Event | None, dialog_frame: int, last: int, start: int,
                       fps: float, where: str, problems: Problems) -> tuple[float, int] | None:
    """(time, frame) of a dialog turn as upstream places it: on or before the previous dialog turn's frame it moves
    one frame later; None when no frame is left for it. A time before the clip or before the previous event is
    bent to that time, with a warning."""
    floor = previous.time if previous else start / fps
    bent = time < floor
    if bent:
        frame = max(frame, previous.frame if previous else start - 1)
    if frame <= dialog_frame:
        if dialog_frame >= last:
            return None
        frame = dialog_frame + 1
    if bent:
        problems.warn(f"{where}.time", f"{time} s is " + (
            f"before the clip starts (frame {start} at {frame_time(start, fps):g} s)" if time < start / fps
            else f"earlier than the previous turn ({floor} s)") + f"; read as {floor} s after frame {frame}, as "
            "upstream moves it")
    return max(time, floor), frame


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


def _check_dst_state(turn: dict, where: str, state: dict[str, str] | None, segment: bool,
                     problems: Problems) -> None:
    """A turn's `dst_state` (the state before it) against the tracked one: an error, or in a fork segment (whose
    states the fork computes from a blank state) a warning."""
    if turn.get("dst_state") is None:  # absent or null: nothing to compare
        return
    given = field(turn, "dst_state", "object", problems, f"{where}.dst_state")
    if given is None or state is None or not check_state(given, set(state), problems, f"{where}.dst_state"):
        return
    if segment:
        _warn_contradiction(given, state, problems, f"{where}.dst_state", "the state tracked from the recomputed "
                            "start")
        return
    for step_id, value in given.items():
        if state[step_id] != value:
            problems.add(f"{where}.dst_state.{step_id}", f"says {value} but the updates so far give "
                         f"{state[step_id]}")


def _check_context(turn: dict, where: str, state: dict[str, str] | None, problems: Problems) -> None:
    """An older fork's `DST_CONTEXT` turn ("Previous state: {...}"): context, compared with the tracked state."""
    text = field(turn, "content", "string", problems, f"{where}.content")
    if text is None or state is None:
        return
    try:
        given = ast.literal_eval(text.removeprefix("Previous state:").strip())
    except (ValueError, SyntaxError):
        given = None
    if not isinstance(given, dict):
        problems.warn(f"{where}.content", "a DST_CONTEXT turn whose state does not read as a dict; not compared")
        return
    _warn_contradiction(given, state, problems, f"{where}.content", "the state tracked from the recomputed start")
