import pytest

from prospect.data.timebase import frame_at, frame_end_time, frame_time


@pytest.mark.parametrize(("time", "fps", "frame"), [
    (7.8, 2, 14),  # ProAssist: the frames turn before a turn at 7.8 s ends (exclusive) at floor(15.6) = 15
    (7.5, 2, 14),  # frame 15 starts at 7.5 s and is not complete yet
    (7.49, 2, 13),
    (0.0, 2, -1),  # before any frame
    (0.5, 2, 0),
    (2.3, 10, 22),  # 2.3 * 10 is 22.999999999999996 in floating point
    (1.1, 10, 10),
])
def test_frame_at_worked_examples(time, fps, frame):
    assert frame_at(time, fps) == frame


@pytest.mark.parametrize("fps", [1, 2, 2.5, 10, 29.97, 30])
def test_frame_end_time_inverts_frame_at(fps):
    for i in range(0, 2000, 7):
        assert frame_at(frame_end_time(i, fps), fps) == i
        assert frame_time(i + 1, fps) == pytest.approx(frame_end_time(i, fps))
