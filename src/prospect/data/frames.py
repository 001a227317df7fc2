"""Frame sources with random access by absolute frame index.

Three kinds, one interface (`FrameSource`): ProAssist frame files (`frames/<video>.arrow`: one row per frame
at the clip's fps, column `frame` holding a base64 JPEG, Arrow IPC stream written by datasets' ArrowWriter),
read memory-mapped; a folder of images, one per frame; a video file, sampled at the clip's fps. Nothing is
decoded until a frame is asked for, so a frame that does not decode is found when read (FrameDecodeError) or by
`validate --decode`. Sources do not resize or normalise: that belongs to the model's image processor.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import av
from datasets import Dataset, Features, Value
from datasets.arrow_writer import ArrowWriter
from PIL import Image, UnidentifiedImageError

ARROW_FEATURES = Features({"frame": Value("string")})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
# what PIL raises for bytes that are not a whole image: OSError (truncated, broken stream, unknown format),
# SyntaxError (broken PNG chunks), ValueError, DecompressionBombError (a corrupt header claiming a huge size)
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class FrameSourceError(ValueError):
    """A frames source that is missing, unreadable or not what its extension says."""


class FrameDecodeError(FrameSourceError):
    """One frame of a readable source does not decode: names the file, the frame and, when read through
    Clip.frame, the clip, so a failure deep in training or streaming says what to fix."""

    def __init__(self, path: Path, index: int, reason: str, clip: str | None = None):
        super().__init__(path, index, reason, clip)  # args as given, so the error pickles (DataLoader workers)
        self.path, self.index, self.reason, self.clip = path, index, reason, clip

    def __str__(self) -> str:
        of_clip = f" of clip {self.clip}" if self.clip is not None else ""
        return f"{self.path}: frame {self.index}{of_clip} does not decode ({self.reason})"


class FrameSource(Protocol):
    """Frames of one video by absolute index: frame i is the picture at time i / fps."""

    path: Path

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Image.Image: ...


class ArrowFrames:
    """ProAssist frame file: row i is frame i."""

    def __init__(self, path: Path):
        try:
            self._table = Dataset.from_file(str(path))
        except Exception as e:  # pyarrow raises several types for a file that is not an Arrow stream
            raise FrameSourceError(f"{path}: not a readable Arrow frames file ({e})") from e
        if "frame" not in self._table.column_names:
            raise FrameSourceError(f"{path}: no 'frame' column (columns: {self._table.column_names})")
        self.path = path

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index: int) -> Image.Image:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} outside [0, {len(self)})")
        b64 = self._table[index]["frame"]
        if b64 is None:
            raise FrameDecodeError(self.path, index, "the frame is null")
        try:
            data = base64.b64decode(b64)
        except ValueError as e:  # binascii.Error, or a non-ASCII character
            raise FrameDecodeError(self.path, index, f"invalid base64: {e}") from e
        return _decode_image(io.BytesIO(data), self.path, index)


def _decode_image(file: Path | io.BytesIO, path: Path, index: int) -> Image.Image:
    """Frame `index` of the source at `path`, stored in `file`, as RGB; raises FrameDecodeError if it does not
    decode."""
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except UnidentifiedImageError as e:  # its message names a BytesIO object, not the file
        raise FrameDecodeError(path, index, "not an image in a known format") from e
    except _IMAGE_ERRORS as e:
        raise FrameDecodeError(path, index, str(e) or type(e).__name__) from e


def encode_jpeg(image: Image.Image, quality: int = 90) -> str:
    buf = io.BytesIO()
    # 4:4:4 chroma: subsampling blurs thin coloured outlines in small synthetic frames
    image.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_arrow_frames(path: Path, images: Iterable[Image.Image]) -> int:
    """Write frames in ProAssist's on-disk format; returns the number written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with ArrowWriter(path=str(path), features=ARROW_FEATURES) as writer:
        n = 0
        for image in images:
            writer.write({"frame": encode_jpeg(image)})
            n += 1
        writer.finalize()
    return n


class ImageFolderFrames:
    """A folder of images: frame i = i-th file in natural order, so frame_2 comes before frame_10."""

    def __init__(self, path: Path):
        self.path = path
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise FrameSourceError(f"{path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder")
        self.files = sorted(files, key=lambda p: _natural_key(p.name))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} outside [0, {len(self)})")
        return _decode_image(self.files[index], self.files[index], index)  # name the image file to fix


def _natural_key(name: str) -> list[Any]:
    # re.split with a group alternates text and digit runs, so keys compare str with str and int with int
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


class VideoFileFrames:
    """A video file sampled at `fps`: frame i is the last decoded picture shown at or before time i / fps.

    Video decodes only forward from a keyframe, so random access seeks to the keyframe before the target and
    decodes on; the decoder position is kept so that reading i, i+1, ... (the common case) never re-seeks.
    """

    EPS = 1e-4  # seconds; absorbs the rounding of timestamps to the stream's time base
    MAX_FORWARD = 2.0  # seconds; decoding further forward than this usually costs more than a seek

    def __init__(self, path: Path, fps: float):
        if not fps > 0:
            raise FrameSourceError(f"{path}: fps must be > 0 to sample a video file, got {fps}")
        self.path = path
        self.fps = fps
        self._open()
        self._length = math.floor(self._duration() * fps + self.EPS)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Image.Image:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} outside [0, {len(self)})")
        if self._pid != os.getpid():  # forked (DataLoader worker): the file offset is shared with the parent
            self._open()
        target = index / self.fps + self.EPS
        try:
            if self._current is None or not self._current[0] <= target <= self._current[0] + self.MAX_FORWARD:
                self._seek(target, index)
            while self._next is not None and self._next[0] <= target:
                self._current, self._next = self._next, next(self._frames, None)
        except av.FFmpegError as e:
            self._current = None  # the decoder is past the failure: the next read seeks afresh
            raise FrameDecodeError(self.path, index, str(e)) from e
        assert self._current is not None  # _seek raises when nothing decodes
        return self._current[1].to_image()

    def __getstate__(self) -> dict[str, Any]:
        # a decoder cannot be pickled; the copy reopens the file on first use
        return {"path": self.path, "fps": self.fps, "_length": self._length, "_pid": None}

    def _open(self) -> None:
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as e:
            raise FrameSourceError(f"{self.path}: not a readable video file ({e})") from e
        if not self._container.streams.video:
            self._container.close()
            raise FrameSourceError(f"{self.path}: no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._start = self._stream.start_time or 0  # pts of time 0, in stream time base
        self._pid = os.getpid()
        self._frames: Iterator[tuple[float, av.VideoFrame]] = iter(())
        self._current: tuple[float, av.VideoFrame] | None = None  # last decoded (time, frame)
        self._next: tuple[float, av.VideoFrame] | None = None  # the one after, pulled from the decoder

    def _decode(self) -> Iterator[tuple[float, av.VideoFrame]]:
        for frame in self._container.decode(self._stream):
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is not None:
                yield float((pts - self._start) * self._stream.time_base), frame

    def _seek(self, target: float, index: int) -> None:
        # seek lands on the keyframe at or before target; if an imprecise index lands after it, start over
        for seconds in (target, 0.0):
            self._container.seek(self._start + int(seconds / self._stream.time_base), stream=self._stream)
            self._frames = self._decode()
            self._current, self._next = next(self._frames, None), next(self._frames, None)
            if self._current is not None and self._current[0] <= target:
                return
        if self._current is None:
            raise FrameDecodeError(self.path, index, "no decodable video frame at or before it")

    def _duration(self) -> float:
        """Seconds of video: from the stream header, else the container's, else by decoding it all."""
        stream, container = self._stream, self._container
        if stream.duration:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / av.time_base
        rate = stream.guessed_rate or self.fps  # for a frame that does not say how long it is shown
        end = None
        try:
            for time, frame in self._decode():
                end = time + float(frame.duration * frame.time_base if frame.duration else 1 / rate)
        except av.FFmpegError as e:
            raise FrameSourceError(f"{self.path}: not a readable video file ({e})") from e
        container.close()
        self._open()  # rewind: the next read starts from a fresh decoder
        if end is None:
            raise FrameSourceError(f"{self.path}: no decodable video frame")
        return end


@lru_cache(maxsize=64)
def open_frames(path: Path, fps: float) -> FrameSource:
    """The frames source at `path` (cached: clips of one video share it). `fps` matters for video files only:
    Arrow files and image folders already hold one picture per frame."""
    path = Path(path)
    if not path.exists():
        raise FrameSourceError(f"{path}: frames source does not exist")
    if path.is_dir():
        return ImageFolderFrames(path)
    suffix = path.suffix.lower()
    if suffix == ".arrow":
        return ArrowFrames(path)
    if suffix in VIDEO_EXTENSIONS:
        return VideoFileFrames(path, fps)
    raise FrameSourceError(
        f"{path}: unsupported frames source; expected a .arrow frames file, a folder of images or a video "
        f"({', '.join(sorted(VIDEO_EXTENSIONS))})"
    )
