"""The one place where times (seconds) become frame indices.

Frame i of a video has timestamp i / fps and covers [i / fps, (i + 1) / fps); it is complete at (i + 1) / fps.
An event at time t is decided after the last frame complete by t, which is ProAssist's alignment: the frames
turn before a turn at time t ends (exclusive) at floor(t * fps). Everything else calls these functions.
"""

import math

# Times in annotation files are decimal seconds (7.8, 106.8); 7.8 * 2 is 15.600000000000001 but 2.3 * 10 is
# 22.999999999999996, so floor needs a tolerance far below a frame and far above float noise.
_EPS = 1e-6


def frame_at(time: float, fps: float) -> int:
    """Index of the frame after which an event at `time` seconds is decided (-1: before frame 0)."""
    return math.floor(time * fps + _EPS) - 1


def frame_time(frame: int, fps: float) -> float:
    """Timestamp in seconds of frame `frame`."""
    return frame / fps


def frame_end_time(frame: int, fps: float) -> float:
    """Time in seconds at which frame `frame` is complete; frame_at(frame_end_time(i)) == i."""
    return (frame + 1) / fps
