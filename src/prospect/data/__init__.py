"""Clip data: our format, importers for ProAssist and DST clips, validation, frame sources, synthetic tasks."""

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate
from prospect.data.errors import ClipFormatError, Problem
from prospect.data.load import load_clips, read_clips
from prospect.data.timebase import frame_at, frame_time

__all__ = ["Clip", "ClipFormatError", "Event", "Problem", "Step", "StepUpdate", "Task", "Video", "frame_at",
           "frame_time", "load_clips", "read_clips"]
