"""Frame feature cache: with the vision encoder and the connector frozen, a frame's features (vision encoder,
connector, pooling to tokens_per_frame) never change during training, so they are computed once per frame and
stored in an Arrow table keyed by video (absolute frames path) and absolute frame index.

The store records the identity of what produced it (a fingerprint of the vision encoder and connector weights,
tokens per frame, image size, hidden size); opening it for another model or other settings is refused. It also
records each video's frames file size and modification time: frames rewritten since (regenerated synthetic data,
say) are refused instead of silently read with stale features.
`python -m prospect.data features CLIPS... --out DIR --model ...` writes one. `SampleFrames` hands the
datamodule either the store's features or the pixels to encode, so that data/ needs no model code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from prospect.data.clip import Clip
from prospect.model.hashing import fingerprint
from prospect.model.vision import encode_frames, pixels

IDENTITY_FILE = "identity.json"
VIDEOS_FILE = "videos.json"  # video key -> [size, mtime_ns] of its frames when they were encoded


def feature_identity(vlm, tokens_per_frame: int) -> dict:
    """What the features depend on: the frozen vision encoder and connector, and the frame settings."""
    m = vlm.model
    weights = [(f"vision.{n}", p) for n, p in m.vision_model.named_parameters()]
    weights += [(f"connector.{n}", p) for n, p in m.connector.named_parameters()]
    return {"fingerprint": fingerprint(weights), "tokens_per_frame": tokens_per_frame,
            "image_size": vlm.config.vision_config.image_size, "hidden": vlm.config.text_config.hidden_size}


def _video_key(clip: Clip) -> str:
    return str(clip.frames_path.resolve())


def _video_stamp(video: str) -> list[int]:
    stat = Path(video).stat()
    return [stat.st_size, stat.st_mtime_ns]


class FeatureStore:
    """`store(clip, frame)` -> [1, tokens_per_frame, H]; `store.frames(clip, frames)` -> [F, tokens_per_frame, H]."""

    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path)
        if not (self.path / IDENTITY_FILE).exists():
            raise FileNotFoundError(f"{self.path}: no feature store here (write one with python -m prospect.data "
                                    "features)")
        stored = json.loads((self.path / IDENTITY_FILE).read_text())
        if stored != identity:
            diff = {k: (stored.get(k), identity.get(k)) for k in identity.keys() | stored.keys()
                    if stored.get(k) != identity.get(k)}
            raise ValueError(f"{self.path}: features of another model or settings (stored vs this model: {diff}); "
                             "write a new store for this model")
        self.identity = identity
        self.table = datasets.load_from_disk(str(self.path / "table")).with_format("numpy")
        self.rows = {(v, int(f)): i for i, (v, f) in enumerate(zip(self.table["video"], self.table["frame"],
                                                                     strict=True))}
        self.stamps = json.loads((self.path / VIDEOS_FILE).read_text())
        self.checked: set[str] = set()

    def _check(self, clip: Clip, video: str) -> None:
        """Refuse a video whose frames changed since they were encoded (once per video and process)."""
        if video not in self.checked:
            if video in self.stamps and _video_stamp(video) != self.stamps[video]:
                raise ValueError(f"{self.path}: clip {clip.id}: the frames {video} changed since this store was "
                                 "written (size or modification time); write the store again")
            self.checked.add(video)

    def frames(self, clip: Clip, frames: list[int]) -> Tensor:
        video = _video_key(clip)
        self._check(clip, video)
        missing = [f for f in frames if (video, f) not in self.rows]
        if missing:
            raise KeyError(f"{self.path}: clip {clip.id}: frames {missing[:5]} of {video} are not in the feature "
                           "store (write it for these clips)")
        rows = self.table[[self.rows[video, f] for f in frames]]["features"]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32))

    def __call__(self, clip: Clip, frame: int) -> Tensor:
        return self.frames(clip, [frame])


def write_features(path: str | Path, clips: Iterable[Clip], vlm, tokens_per_frame: int,
                   batch_size: int = 16) -> FeatureStore:
    """Encode every frame of `clips` once (frames shared by clips of one video are encoded once)."""
    path = Path(path)
    todo: dict[tuple[str, int], Clip] = {}
    for clip in clips:
        for f in clip.frame_indices:
            todo.setdefault((_video_key(clip), f), clip)
    identity = feature_identity(vlm, tokens_per_frame)
    size = identity["image_size"]

    def rows() -> Iterator[dict]:
        keys = list(todo)
        with torch.no_grad(), tqdm(total=len(keys), desc="encoding frames", unit="frame") as bar:
            for start in range(0, len(keys), batch_size):
                batch = keys[start:start + batch_size]
                images = pixels([todo[k].frame(k[1]) for k in batch], size).to(vlm.device)
                feats = encode_frames(vlm, images, tokens_per_frame).float().cpu().numpy()
                for (video, frame), x in zip(batch, feats, strict=True):
                    yield {"video": video, "frame": frame, "features": x}
                bar.update(len(batch))

    schema = datasets.Features({"video": datasets.Value("string"), "frame": datasets.Value("int64"),
                                "features": datasets.Array2D((tokens_per_frame, identity["hidden"]), "float32")})
    table = datasets.Dataset.from_generator(rows, features=schema, cache_dir=str(path / ".build"))
    path.mkdir(parents=True, exist_ok=True)
    table.save_to_disk(str(path / "table"))
    shutil.rmtree(path / ".build", ignore_errors=True)
    (path / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n")
    stamps = {video: _video_stamp(video) for video in {v for v, _ in todo}}
    (path / VIDEOS_FILE).write_text(json.dumps(stamps, indent=1, sort_keys=True) + "\n")
    return FeatureStore(path, identity)


def open_feature_store(path: str | Path | None, vlm, tokens_per_frame: int) -> FeatureStore | None:
    """The store at `path` (data.feature_store), checked against this model's vision path; None without one."""
    return FeatureStore(path, feature_identity(vlm, tokens_per_frame)) if path else None


class SampleFrames:
    """What the model takes for a clip's frames, as the datamodule's samples carry them: the pixel values to
    encode, or, with a feature store, no pixels and the stored features. A class (not a closure) so that
    DataLoader workers can pickle it."""

    def __init__(self, image_size: int, store: FeatureStore | None = None):
        self.image_size, self.store = image_size, store

    def __call__(self, clip: Clip, frames: list[int]) -> tuple[Tensor, Tensor | None]:
        """-> (pixel values [F, 3, S, S] or empty, frame features [F, tokens_per_frame, H] or None)."""
        if self.store is not None:
            return torch.zeros(0), self.store.frames(clip, frames)
        return pixels([clip.frame(f) for f in frames], self.image_size), None
