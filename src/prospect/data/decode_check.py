"""`validate --decode`: decode every frame the clips use, so a corrupt frame is found before training.

Plain validation only opens frames sources and counts their frames; this reads them all, which is slow. It
says whether a frame decodes, not what it shows.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from prospect.data.checks import FieldNames, check_frames
from prospect.data.clip import Clip
from prospect.data.errors import Problems
from prospect.data.frames import FrameDecodeError, open_frames


class FrameDecodeCheck:
    """A `read_clips` check: every frame of the clip that does not decode is a problem on the frames source
    field. A frame that several clips share is decoded once (each of those clips gets the problem); `progress`
    counts the frames decoded."""

    def __init__(self, progress: tqdm):
        self.progress = progress
        # per frames source, as open_frames keys it: frames decoded, and the error of each that failed
        self._decoded: dict[tuple[Path, float], set[int]] = defaultdict(set)
        self._errors: dict[tuple[Path, float], dict[int, str]] = defaultdict(dict)

    def __call__(self, clip: Clip, problems: Problems, names: FieldNames) -> None:
        n_before = len(problems)
        check_frames(clip, problems, names)  # a source that is missing or short has no frames to decode
        if len(problems) > n_before:
            return
        key = (clip.frames_path, clip.fps)
        frames, decoded, errors = open_frames(*key), self._decoded[key], self._errors[key]
        for index in clip.frame_indices:
            if index not in decoded:
                try:
                    frames[index]  # decoded to see that it decodes; the image is not kept
                except FrameDecodeError as err:
                    errors[index] = str(err)
                decoded.add(index)
                self.progress.update()
            if index in errors:
                problems.add(names.source, errors[index])
