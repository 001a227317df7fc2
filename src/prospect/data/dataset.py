"""Clips as an Arrow-backed HF `datasets.Dataset`.

The Arrow table (one row per clip) is built once per annotation file content, after full validation with
frames sources checked, and reused from the datasets cache afterwards. Frames are never stored here: they are
read lazily from the frames source by `Clip.frame`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets

from prospect import __version__
from prospect.data.clip import Clip
from prospect.data.formats.ours import build_clip
from prospect.data.load import load_clips

FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "dataset": datasets.Value("string"),
    "frames_path": datasets.Value("string"),
    "fps": datasets.Value("float64"),
    "start_frame": datasets.Value("int64"),
    "end_frame": datasets.Value("int64"),
    "num_events": datasets.Value("int64"),
    "clip": datasets.Value("string"),  # the clip in our JSON format, frames source made absolute
})


def _rows(path: str, root: str | None, digest: str):
    # `digest` is unused here: it is part of gen_kwargs so that the cache key changes with the file content.
    for clip in load_clips(path, root, check_frames=True):
        frames_path = str(clip.frames_path.resolve())
        clip.video.source = frames_path  # absolute, so the cached row does not depend on where it is read
        yield {"id": clip.id, "dataset": clip.dataset, "frames_path": frames_path,
               "fps": clip.fps, "start_frame": clip.video.start_frame, "end_frame": clip.video.end_frame,
               "num_events": len(clip.events), "clip": json.dumps(clip.to_dict())}


class ClipDataset:
    """The clips of one annotation file (any supported format), Arrow-backed and cached."""

    def __init__(self, path: str | Path, root: str | Path | None = None, cache_dir: str | Path | None = None):
        path = Path(path).resolve()
        digest = hashlib.sha256(path.read_bytes() + f"{root}|{__version__}".encode()).hexdigest()
        self.table = datasets.Dataset.from_generator(
            _rows, features=FEATURES, cache_dir=str(cache_dir) if cache_dir else None,
            gen_kwargs={"path": str(path), "root": str(root) if root else None, "digest": digest},
        )

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Clip:
        return build_clip(json.loads(self.table[index]["clip"]), root=None)

    def ids(self) -> list[str]:
        return self.table["id"]
