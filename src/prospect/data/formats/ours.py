"""Reader for our own clip format (docs/data-format.md): JSON Schema for structure, then the common checks."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from jsonschema import Draft202012Validator

from prospect.data.checks import check_clip
from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate
from prospect.data.errors import Problems

SCHEMA = json.loads(resources.files("prospect.data").joinpath("clip.schema.json").read_text())
_VALIDATOR = Draft202012Validator(SCHEMA)


def read_ours(record: dict, problems: Problems, root: Path | None) -> Clip | None:
    """Clip from one record of our format, or None after adding its problems."""
    if isinstance(record.get("id"), str):
        problems.clip = record["id"]
    for err in sorted(_VALIDATOR.iter_errors(record), key=lambda e: list(map(str, e.absolute_path))):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        problems.add(path or None, _schema_message(err))
    if problems:
        return None
    clip = build_clip(record, root)
    check_clip(clip, problems)
    return clip


def build_clip(record: dict, root: Path | None) -> Clip:
    """Clip from a record already known to match the schema (no checks)."""
    video, task = record["video"], record.get("task", {})
    return Clip(
        id=record["id"],
        dataset=record.get("dataset", ""),
        video=Video(video["source"], video["fps"], video["start_frame"], video["end_frame"]),
        task=Task(
            goal=task.get("goal", ""),
            knowledge=task.get("knowledge", ""),
            steps=[Step(s["id"], s["name"], s.get("start"), s.get("end")) for s in task.get("steps", [])],
            initial_state=dict(task.get("initial_state", {})),
        ),
        events=[
            Event(
                role=e["role"], time=e["time"], frame=e["frame"], text=e.get("text", ""),
                updates=[StepUpdate(u["id"], u["transition"]) for u in e.get("updates", [])],
                kind=e.get("kind"), labels=e.get("labels"), progress=e.get("progress"), source=f"events[{i}]",
            )
            for i, e in enumerate(record["events"])
        ],
        metadata=record.get("metadata", {}),
        root=root,
    )


def _schema_message(err) -> str:
    if {"then", "else"} & set(err.schema_path):  # the dst/text rule: say it plainly, not the schema
        return "a dst event needs 'updates' and no 'text'; other events need 'text' and no 'updates'"
    if err.validator == "required":
        return err.message.replace("is a required property", "is missing")
    return err.message
