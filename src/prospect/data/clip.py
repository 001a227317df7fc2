"""Our clip format in memory: a video reference, a task, and time-ordered events aligned to frames.

One JSONL line per clip (docs/data-format.md, clip.schema.json). Event frames are absolute video frame
indices computed once (timebase.frame_at, or the source file's own alignment for ProAssist) and stored.
Reading and checking live in load.py / checks.py; this module only holds the data and its JSON form.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from prospect.data.dst import StepUpdate, format_updates
from prospect.data.timebase import frame_time

FORMAT = "prospect-clip/1"


@dataclass
class Event:
    role: str  # system | user | assistant | dst
    time: float  # seconds from the start of the video
    frame: int  # absolute index of the frame after which the event is decided (start_frame - 1: before any)
    text: str = ""  # for dst events, the text form of `updates`
    updates: list[StepUpdate] = field(default_factory=list)  # dst events only
    # prompt (system: the clip's own system prompt) | knowledge (system: the task knowledge turn) |
    # summarize_request (system) | summary (assistant: its answer) | None
    kind: str | None = None
    labels: str | None = None  # upstream labels such as "initiative|instruction"
    progress: str | None = None  # progress description of the task at this turn (assistant)
    source: str | None = field(default=None, compare=False)  # field path in the file it came from

    def __post_init__(self) -> None:
        if self.role == "dst" and not self.text:
            self.text = format_updates(self.updates)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "time": self.time, "frame": self.frame}
        if self.role == "dst":
            d["updates"] = [{"id": u.id, "transition": u.transition} for u in self.updates]
        else:
            d["text"] = self.text
        for key in ("kind", "labels", "progress"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


@dataclass
class Step:
    id: str
    name: str
    start: float | None = None  # seconds, when annotated
    end: float | None = None


@dataclass
class Task:
    goal: str = ""
    knowledge: str = ""
    steps: list[Step] = field(default_factory=list)
    initial_state: dict[str, str] = field(default_factory=dict)  # step id -> state; empty without steps

    def start_state(self) -> dict[str, str]:
        """The DST state at the clip start: every step, `not_started` unless `initial_state` says otherwise."""
        return {s.id: self.initial_state.get(s.id, "not_started") for s in self.steps}


@dataclass
class Video:
    source: str  # frames source: .arrow file, folder of images, or video file; relative to the clip root
    fps: float
    start_frame: int  # first frame of the clip (absolute index in the video)
    end_frame: int  # exclusive


@dataclass
class Clip:
    id: str
    video: Video
    task: Task
    events: list[Event]
    dataset: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False)  # folder that a relative video.source is under

    @property
    def fps(self) -> float:
        return self.video.fps

    @property
    def frames_path(self) -> Path:
        path = Path(self.video.source)
        return path if path.is_absolute() or self.root is None else self.root / path

    @property
    def system_prompt(self) -> str | None:
        """The clip's own system prompt (its first event, kind `prompt`), if it has one."""
        return self.events[0].text if self.events and self.events[0].kind == "prompt" else None

    @property
    def frame_indices(self) -> range:
        return range(self.video.start_frame, self.video.end_frame)

    def frame(self, index: int) -> Image.Image:
        """Frame `index` (absolute in the video) as an RGB image, read lazily from the frames source; a frame
        that does not decode raises FrameDecodeError naming the frames file, this clip and the frame."""
        from prospect.data.frames import FrameDecodeError, open_frames

        if index not in self.frame_indices:
            raise IndexError(f"clip {self.id}: frame {index} outside [{self.video.start_frame}, "
                             f"{self.video.end_frame})")
        try:
            return open_frames(self.frames_path, self.fps)[index]
        except FrameDecodeError as err:
            raise FrameDecodeError(err.path, err.index, err.reason, clip=self.id) from err

    def frame_timestamp(self, index: int) -> float:
        return frame_time(index, self.fps)

    def events_by_frame(self, keep: Callable[[Event], bool] = lambda e: True) -> dict[int, list[Event]]:
        """The events `keep` accepts, grouped by the frame they are decided after, in file order."""
        grouped: dict[int, list[Event]] = {}
        for e in self.events:
            if keep(e):
                grouped.setdefault(e.frame, []).append(e)
        return grouped

    def events_after(self, frame: int) -> list[Event]:
        """Events decided right after frame `frame` (start_frame - 1 for those before any frame)."""
        return [e for e in self.events if e.frame == frame]

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        """JSON form; with `root`, the frames source is written relative to that folder."""
        source = self.video.source
        if root is not None:
            source = os.path.relpath(self.frames_path.resolve(), Path(root).resolve())
        task = self.task
        return {
            "format": FORMAT,
            "id": self.id,
            "dataset": self.dataset,
            "video": {"source": source, "fps": self.video.fps, "start_frame": self.video.start_frame,
                      "end_frame": self.video.end_frame},
            "task": {
                "goal": task.goal,
                "knowledge": task.knowledge,
                "steps": [{k: v for k, v in vars(s).items() if v is not None} for s in task.steps],
                "initial_state": dict(task.initial_state),
            },
            "events": [e.to_dict() for e in self.events],
            "metadata": self.metadata,
        }
