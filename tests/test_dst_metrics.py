"""DST matching and state accuracy on hand-worked cases."""

import pytest

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate
from prospect.eval.dst_metrics import dst_scores, reference_states, state_accuracy, update_similarity


def test_update_similarity_needs_same_ids_and_transitions():
    sims = update_similarity(["S1->complete; S2->start", "S1->start", "garbage"],
                             ["S2->start; S1->complete", "S1->complete"])
    assert sims.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]


def test_dst_scores_worked_example():
    # reference updates at frames 4 and 9 (fps 1, decision time = frame + 1); predictions at 4 (right update),
    # 10 (wrong transition for the frame-9 update) and 20 (nothing near)
    ref = [(5.0, "S1->start"), (10.0, "S1->complete; S2->start")]
    pred = [(5.0, "S1->start"), (11.0, "S1->complete"), (21.0, "S2->complete")]
    s = dst_scores([(pred, ref)], (-2, 2), 1.0)
    # frame 4: the right update on its frame, cost 0 -> good match. Frame 10: the frame-9 reference costs
    # (1 - 0) + 0.3 * (1/2)^1.5 = 1.106, its own silent frame 1.0 -> redundant, and the frame-9 update is missed.
    # Frame 20: nothing within 2 frames -> redundant.
    assert (s["matched"], s["good_matched"], s["redundant"], s["missed"]) == (1, 1, 2, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)


def test_reference_states_and_accuracy():
    clip = Clip(id="c", video=Video("x.arrow", 1.0, 0, 4),
                task=Task(steps=[Step("S1", "a"), Step("S2", "b")]),
                events=[Event("dst", 1.5, 0, updates=[StepUpdate("S1", "start")]),
                        Event("dst", 3.2, 2, updates=[StepUpdate("S1", "complete"), StepUpdate("S2", "start")])])
    ref = reference_states(clip)
    assert ref == [{"S1": "in_progress", "S2": "not_started"}, {"S1": "in_progress", "S2": "not_started"},
                   {"S1": "completed", "S2": "in_progress"}, {"S1": "completed", "S2": "in_progress"}]
    late = [{"S1": "not_started", "S2": "not_started"}, ref[1], ref[1], ref[3]]  # one frame late each time
    # frame 0: S1 wrong; frame 2: both wrong -> 3 of 8 pairs wrong
    assert state_accuracy(late, ref) == pytest.approx(5 / 8)
    assert state_accuracy(ref, ref) == 1.0
    with pytest.raises(ValueError, match="3 predicted states for 4"):
        state_accuracy(ref[:3], ref)
