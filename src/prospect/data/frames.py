"""Frame sources with random access by absolute frame index.

ProAssist frame files (`frames/<video>.arrow`: one row per frame at the clip's fps, column `frame` holding a
base64 JPEG, Arrow IPC stream written by datasets' ArrowWriter) are read memory-mapped; nothing is decoded
until a frame is asked for.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from datasets import Dataset, Features, Value
from datasets.arrow_writer import ArrowWriter
from PIL import Image

ARROW_FEATURES = Features({"frame": Value("string")})


class FrameSourceError(ValueError):
    """A frames source that is missing, unreadable or not what its extension says."""


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
        return decode_jpeg(self._table[index]["frame"])


def decode_jpeg(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def encode_jpeg(image: Image.Image, quality: int = 90) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
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


@lru_cache(maxsize=64)
def open_frames(path: Path, fps: float) -> ArrowFrames:
    """The frames source at `path` (cached: clips of one video share it). `fps` matters for video files."""
    path = Path(path)
    if not path.exists():
        raise FrameSourceError(f"{path}: frames source does not exist")
    return ArrowFrames(path)
