"""Frame sources: Arrow files, image folders and video files give frame i at time i / fps."""

from __future__ import annotations

import base64
import pickle
import re
from pathlib import Path

import av
import numpy as np
import pytest
from datasets.arrow_writer import ArrowWriter
from PIL import Image

from prospect.data import Clip, Task, Video
from prospect.data.frames import (
    ARROW_FEATURES,
    ArrowFrames,
    FrameDecodeError,
    FrameSourceError,
    ImageFolderFrames,
    VideoFileFrames,
    encode_jpeg,
    open_frames,
    write_arrow_frames,
)


def colour(i: int) -> tuple[int, int, int]:
    """A colour that encodes i, far enough from its neighbours to survive JPEG and video codecs."""
    return (i * 8) % 256, 240 - (i * 8) % 240, (i * 53) % 256


def solid(i: int, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour(i))


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)


def assert_colour(image: Image.Image, i: int, candidates: range) -> None:
    """`image` has colour(i): closest among the candidates, and close in absolute terms."""
    mean = mean_colour(image)
    nearest = min(candidates, key=lambda j: np.abs(mean - colour(j)).sum())
    assert nearest == i, f"expected colour of {i}, got {mean} (nearest {nearest})"
    assert np.abs(mean - colour(i)).max() < 12


def write_video(path: Path, n: int, fps: int, codec: str, format: str | None = None) -> None:
    with av.open(str(path), "w", format=format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 8  # several keyframes, so seeking is exercised
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.asarray(solid(i)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_arrow_roundtrip(tmp_path):
    path = tmp_path / "frames" / "v.arrow"
    assert write_arrow_frames(path, (solid(i) for i in range(5))) == 5
    frames = open_frames(path, 2.0)
    assert isinstance(frames, ArrowFrames) and len(frames) == 5
    for i in range(5):
        assert_colour(frames[i], i, range(5))
    with pytest.raises(IndexError, match="v.arrow"):
        frames[5]


JPEG = base64.b64decode(encode_jpeg(solid(0)))
BAD_FRAMES = [
    # (id, the `frame` cell of frame 2, words in the reason)
    ("garbage", base64.b64encode(b"\x00" * 64).decode(), "not an image in a known format"),
    ("truncated-jpeg", base64.b64encode(JPEG[: len(JPEG) // 2]).decode(), "Truncated File Read"),
    ("bad-base64-padding", encode_jpeg(solid(0))[:-3], "invalid base64"),
    ("non-ascii", "é" + encode_jpeg(solid(0)), "invalid base64"),
    ("null", None, "the frame is null"),
]


@pytest.mark.parametrize(("cell", "reason"), [c[1:] for c in BAD_FRAMES], ids=[c[0] for c in BAD_FRAMES])
def test_undecodable_arrow_frame_names_file_and_frame(tmp_path, cell, reason):
    path = tmp_path / "v.arrow"
    with ArrowWriter(path=str(path), features=ARROW_FEATURES) as writer:
        for i in range(4):
            writer.write({"frame": cell if i == 2 else encode_jpeg(solid(i))})
        writer.finalize()
    frames = open_frames(path, 2.0)
    assert_colour(frames[3], 3, range(4))  # the frames around it still read
    with pytest.raises(FrameDecodeError) as err:
        frames[2]
    assert str(err.value).startswith(f"{path}: frame 2 does not decode (") and reason in str(err.value)
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value), "survives a DataLoader worker"
    clip = Clip("v/0", Video(str(path), 2.0, 0, 4), Task(), [])
    with pytest.raises(FrameDecodeError, match=f"^{re.escape(str(path))}: frame 2 of clip v/0 does not decode"):
        clip.frame(2)


def test_unreadable_image_in_folder(tmp_path):
    for i in range(3):
        solid(i).save(tmp_path / f"frame_{i}.jpg")
    bad = tmp_path / "frame_1.jpg"
    bad.write_bytes(JPEG[:100])
    frames = open_frames(tmp_path, 2.0)
    assert_colour(frames[2], 2, range(3))
    with pytest.raises(FrameDecodeError, match=f"^{re.escape(str(bad))}: frame 1 does not decode"):
        frames[1]


def test_corrupt_video_frames_name_file_and_frame(tmp_path):
    path = tmp_path / "v.mkv"
    write_video(path, n=30, fps=10, codec="libx264")
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()
    rng = np.random.default_rng(0)
    data[rng.integers(len(data) // 4, len(data), 200)] = rng.integers(0, 256, 200)  # past the headers
    path.write_bytes(data.tobytes())
    frames = VideoFileFrames(path, 10.0)
    errors = []
    for i in range(len(frames)):
        try:
            frames[i]
        except FrameDecodeError as err:
            errors.append(err)
    assert errors and all(str(e).startswith(f"{path}: frame {e.index} does not decode (") for e in errors)


def test_image_folder_natural_order(tmp_path):
    for i in range(1, 13):
        solid(i).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = open_frames(tmp_path, 2.0)
    assert isinstance(frames, ImageFolderFrames) and len(frames) == 12
    assert_colour(frames[8], 9, range(1, 13))  # frame_9, not frame_10 as plain string order would give
    assert_colour(frames[10], 11, range(1, 13))
    with pytest.raises(IndexError, match=str(tmp_path)):
        frames[12]


def test_empty_image_folder(tmp_path):
    with pytest.raises(FrameSourceError, match=str(tmp_path)):
        ImageFolderFrames(tmp_path)


@pytest.mark.parametrize(("codec", "ext"), [("mpeg4", "mp4"), ("libx264", "mkv")])
def test_video_sampled_at_clip_fps(tmp_path, codec, ext):
    path = tmp_path / f"v.{ext}"
    write_video(path, n=30, fps=10, codec=codec)  # 3 s
    frames = open_frames(path, 2.0)
    assert isinstance(frames, VideoFileFrames) and len(frames) == 6
    for i in range(6):  # sequential
        assert_colour(frames[i], i * 5, range(30))
    for i in (5, 1, 4, 4, 0, 5):  # random access, both directions
        assert_colour(frames[i], i * 5, range(30))
    with pytest.raises(IndexError, match=ext):
        frames[6]
    copy = pickle.loads(pickle.dumps(frames))  # DataLoader workers get a copy that reopens the file
    assert len(copy) == 6
    assert_colour(copy[3], 15, range(30))


def test_video_at_higher_fps_than_source_holds_frames(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, n=6, fps=2, codec="mpeg4")  # 3 s at 2 fps, read at 4 fps
    frames = VideoFileFrames(path, 4.0)
    assert len(frames) == 12
    for i in (0, 1, 2, 7, 3, 11):
        assert_colour(frames[i], i // 2, range(6))


def test_video_without_duration_in_headers(tmp_path):
    path = tmp_path / "raw.m4v"
    write_video(path, n=30, fps=10, codec="mpeg4", format="m4v")  # raw elementary stream: no durations stored
    frames = open_frames(path, 5.0)
    assert len(frames) == 15  # duration found by decoding
    for i in (0, 3, 14, 5, 1):
        assert_colour(frames[i], i * 2, range(30))


def test_missing_and_unsupported_sources(tmp_path):
    missing = tmp_path / "nope.arrow"
    with pytest.raises(FrameSourceError, match="nope.arrow"):
        open_frames(missing, 2.0)
    text = tmp_path / "frames.txt"
    text.write_text("hello")
    with pytest.raises(FrameSourceError, match="frames.txt.*unsupported"):
        open_frames(text, 2.0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(FrameSourceError, match="broken.mp4"):
        open_frames(broken, 2.0)
