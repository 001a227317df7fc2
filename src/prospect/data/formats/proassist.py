"""Importer for upstream ProAssist "prepared" clips (docs/data-format.md), keeping their frame alignment exactly.

Each turn is decided after the last frame of the frames turn before it, whatever its `time` says (upstream
pushes a turn one frame later when it would share a frame with the previous one, and attaches a turn past the
video's end to its last frame). Turns without a time (system prompts, the knowledge turn, the trailing summary)
take the later of the previous event's time and the time their frame completes, so times stay monotone.

What the model sees is what upstream's model sees: the clip's own system turn is its prompt (`kind` prompt),
the "Task knowledge: ..." turn stays where upstream put it (`kind` knowledge); the goal and knowledge in
`metadata` are kept there and never rendered (upstream never shows them).
"""

from __future__ import annotations

from pathlib import Path

from prospect.data.checks import UPSTREAM_NAMES, check_clip
from prospect.data.clip import Clip, Event, Task, Video
from prospect.data.errors import Problems
from prospect.data.formats.fields import field, objects
from prospect.data.timebase import frame_end_time

KNOWLEDGE_PREFIX = "Task knowledge:"  # upstream's knowledge turn, and how its streaming finds it again
SUMMARIZE_PREFIX = "Please summarize"  # upstream's summarize request (and how its evaluation drops it)
# Upstream's system prompts (mmassist/datasets/prepare/prompts.py): the proactive ones, sampled per split, and the
# one of its summary-only files. A later split's prompt is one of them, the previous progress and the knowledge.
UPSTREAM_PROMPTS = (
    "You are a proactive assistant. Pay close attention to the user's actions and provide relevant information "
    "proactively.",
    "You are a proactive assistant. Predict the user's needs and provide assistance before being requested.",
    "You are a responsive and proactive assistant. Address questions quickly and offer assistance before it's "
    "needed.",
    "You are a helpful and proactive assistant. Always be ready to assist and provide useful information ahead of "
    "time.",
    "You are a helpful assistant. Be responsive to the user's questions, and provide useful information "
    "proactively when needed.",
    "You are a supportive assistant. Always be ready to help and offer useful advice without being asked.",
    "Watch the user's actons and track the task progress.",  # sic: summary_* files
)

_TOP_LEVEL = {"dataset": "string", "video_uid": "string", "clip_idx": "integer", "frames_file": "string",
              "start_frame_idx": "integer", "end_frame_idx": "integer", "conversation": "array",
              "fps": "number", "metadata": "object"}
_SIZES = ("max_seq_len", "seq_len", "num_tokens_per_img", "use_img_sep_token")


def is_proassist(record: dict) -> bool:
    turns = record.get("conversation")
    return isinstance(turns, list) and any(isinstance(t, dict) and t.get("role") == "frames" for t in turns) \
        or isinstance(record.get("metadata"), dict) and "user_type" in record["metadata"]


def read_proassist(record: dict, problems: Problems, root: Path | None) -> Clip | None:
    """Clip from one prepared ProAssist record, or None after adding its problems."""
    meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    user = meta.get("user_id") or meta.get("user_type")  # one dialog per simulated user of the video
    user = user if isinstance(user, str) else None
    if isinstance(record.get("video_uid"), str):
        problems.clip = f"{record['video_uid']}/{record.get('clip_idx')}" + (f"/{user}" if user else "")
    top = {key: field(record, key, kind, problems, key) for key, kind in _TOP_LEVEL.items()}
    if None in top.values():
        return None
    events = _events(top["conversation"], top["start_frame_idx"], top["end_frame_idx"], top["fps"], problems)
    if events is None:
        return None
    _mark_summary(events, meta, problems)
    _mark_prompt_and_knowledge(events, top["start_frame_idx"])
    for key in ("task_goal", "knowledge"):  # kept in metadata; null means the clip has none
        if meta.get(key) is not None:
            field(meta, key, "string", problems, f"metadata.{key}")
    field(meta, "summary_only", "boolean", problems, "metadata.summary_only", default=False)
    clip = Clip(
        id=problems.clip,
        dataset=top["dataset"],
        video=Video(top["frames_file"], top["fps"], top["start_frame_idx"], top["end_frame_idx"]),
        task=Task(),
        events=events,
        metadata={**meta, "source_format": "proassist", "video_uid": top["video_uid"], "clip_idx": top["clip_idx"],
                  "dialog": top["video_uid"] + (f"/{user}" if user else ""),
                  **{k: record[k] for k in _SIZES if k in record}},
        root=root,
    )
    check_clip(clip, problems, UPSTREAM_NAMES)
    return clip


def _events(turns: list, start: int, end: int, fps: float, problems: Problems) -> list[Event] | None:
    events: list[Event] = []
    next_frame = start  # where the next frames turn must start
    seen_frames = False
    last_time = start / fps if fps > 0 else 0.0
    n_before = len(problems)
    for where, turn in objects(turns, problems, "conversation"):
        role = field(turn, "role", "string", problems, f"{where}.role")
        if role == "frames":
            a = field(turn, "start", "integer", problems, f"{where}.start")
            b = field(turn, "end", "integer", problems, f"{where}.end")
            if a is None or b is None:
                continue
            if a != next_frame:
                problems.add(f"{where}.start", f"frames turn starts at {a} but "
                             + (f"the previous frames turn ended at {next_frame}" if seen_frames
                                else f"the clip starts at {start}")
                             + " (frames turns must be contiguous)")
            if b <= a:
                problems.add(f"{where}.end", f"frames turn [{a}, {b}) holds no frame")
            next_frame, seen_frames = b, True
            continue
        if role not in ("system", "user", "assistant"):
            if role is not None:
                problems.add(f"{where}.role", f"unknown role {role!r} (expected system, user, assistant, frames)")
            continue
        text = field(turn, "content", "string", problems, f"{where}.content")
        time = field(turn, "time", "number", problems, f"{where}.time", default=None)
        frame = next_frame - 1
        if time is None:
            time = max(last_time, frame_end_time(frame, fps)) if fps > 0 else last_time
        elif time < last_time:  # upstream places turns by their frames turns; the time is only a label
            problems.warn(f"{where}.time", f"{time} s is " + (
                f"earlier than the previous event ({last_time} s)" if events else
                f"before the clip starts ({last_time:g} s)") + f"; read as {last_time} s at its frames turn "
                f"(after frame {frame}), as upstream reads it")
            time = last_time
        last_time = time
        events.append(Event(
            role=role, time=time, frame=frame, text=text or "",
            labels=_optional(turn, "labels", problems, where), progress=_optional(turn, "progress", problems, where),
            source=where,
        ))
    if not turns:
        problems.add("conversation", "empty conversation")
    elif next_frame != end:
        problems.add("end_frame_idx", f"{end} but the last frames turn ends at {next_frame}")
    return None if len(problems) > n_before else events


def _mark_summary(events: list[Event], meta: dict, problems: Problems) -> None:
    """Split files (`dialog-*-sum`, `summary_*`) end a split whose frames stop before the video's last with a
    system turn "Please summarize the progress." answered by the next assistant turn (after one frame); upstream
    sets `metadata.has_summary` exactly then, the video's last split of a dialog included."""
    for i, e in enumerate(events):
        if e.role == "system" and e.text.startswith(SUMMARIZE_PREFIX):
            answer = next((a for a in events[i + 1:] if a.role != "system"), None)
            if answer is None or answer.role != "assistant":
                problems.add(e.source, "a summarize request that no assistant turn answers")
                continue
            e.kind, answer.kind = "summarize_request", "summary"
    has_summary = field(meta, "has_summary", "boolean", problems, "metadata.has_summary", default=None)
    summarized = any(e.kind == "summary" for e in events)
    if has_summary is not None and has_summary != summarized:
        problems.add("metadata.has_summary", f"is {str(has_summary).lower()} but the clip "
                     + ("ends with no summarize request and summary" if has_summary else "holds a summary"))


def _mark_prompt_and_knowledge(events: list[Event], start: int) -> None:
    """The system turn before the first frame is the clip's system prompt (in later splits it also holds the
    previous progress and the knowledge); a later system turn starting "Task knowledge:" is the knowledge turn."""
    for i, e in enumerate(events):
        if e.role != "system" or e.kind is not None:
            continue
        if i == 0 and e.frame == start - 1:
            e.kind, e.progress = "prompt", _prompt_progress(e.text)
        elif e.text.startswith(KNOWLEDGE_PREFIX):
            e.kind = "knowledge"


def _prompt_progress(text: str) -> str | None:
    """The progress a later split's prompt carries, `{upstream prompt} {progress}[ Task knowledge: ...]`, so that
    a split cut again restarts with the new progress in its place (PromptContext.of); None for other prompts."""
    base = max((p for p in UPSTREAM_PROMPTS if text.startswith(f"{p} ")), key=len, default=None)
    if base is None:
        return None
    return text[len(base) + 1:].partition(KNOWLEDGE_PREFIX)[0].strip() or None


def _optional(turn: dict, key: str, problems: Problems, where: str) -> str | None:
    return field(turn, key, "string", problems, f"{where}.{key}", default=None)
