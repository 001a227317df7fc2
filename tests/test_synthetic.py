"""Synthetic task videos: deterministic by seed, aligned by the one time-base rule, transitions visible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prospect.data.clip import Clip
from prospect.data.dst import apply_updates
from prospect.data.frames import open_frames
from prospect.data.synthetic import SyntheticTurn, read_turn, slot_box, synthesize
from prospect.data.timebase import frame_at

SIZE = 64  # the default; the determinism tests use 32 to stay fast


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, list[Clip]]]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, synthesize(root, 8, seed=3)


def all_clips(clips: dict[str, list[Clip]]) -> list[Clip]:
    return [clip for split in clips.values() for clip in split]


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthesize(tmp_path / name, 2, seed, val_videos=1, test_videos=1, image_size=32)
        runs[name] = file_bytes(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert "train.jsonl" in runs["a"] and "frames/syn5-train-0001.arrow" in runs["a"]
    assert runs["a"]["train.jsonl"] != runs["c"]["train.jsonl"]
    assert runs["a"]["frames/syn5-train-0000.arrow"] != runs["c"]["frames/syn6-train-0000.arrow"]


def test_split_unchanged_when_other_split_count_changes(tmp_path):
    synthesize(tmp_path / "a", 2, 5, val_videos=1, test_videos=1, image_size=32)
    synthesize(tmp_path / "b", 3, 5, val_videos=1, test_videos=2, image_size=32)
    for name in ("val.jsonl", "frames/syn5-val-0000.arrow", "frames/syn5-train-0001.arrow"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_training_alone_draws_mistake_cues_at_its_own_rate(tmp_path):
    """mistake_prob is training's rate, eval_mistake_prob the val and test splits' (the same when not given):
    a held-out video is the same bytes whatever training's rate."""
    def corrections(root, split):
        return sum(e.get("labels") == "initiative|correction" for line in (root / f"{split}.jsonl").open()
                   for e in json.loads(line)["events"])
    synthesize(tmp_path / "a", 4, 5, val_videos=0, test_videos=4, image_size=32, mistake_prob=0.3)
    synthesize(tmp_path / "b", 4, 5, val_videos=0, test_videos=4, image_size=32, mistake_prob=1.0,
               eval_mistake_prob=0.3)
    synthesize(tmp_path / "c", 4, 5, val_videos=0, test_videos=4, image_size=32, mistake_prob=0.0)
    assert (tmp_path / "a" / "test.jsonl").read_bytes() == (tmp_path / "b" / "test.jsonl").read_bytes()
    assert corrections(tmp_path / "c", "test") == corrections(tmp_path / "c", "train") == 0
    assert corrections(tmp_path / "b", "train") > corrections(tmp_path / "a", "train")
    with pytest.raises(ValueError, match="eval_mistake_prob"):
        synthesize(tmp_path / "d", 1, 0, eval_mistake_prob=1.5)


def test_splits_written_in_clip_format(dataset):
    root, clips = dataset
    assert {split: len(c) for split, c in clips.items()} == {"train": 8, "val": 2, "test": 2}
    assert json.loads((root / "manifest.json").read_text())["videos"] == {"train": 8, "val": 2, "test": 2}
    for split, split_clips in clips.items():
        lines = (root / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [c.to_dict(root=root) for c in split_clips]
        for clip, line in zip(split_clips, lines, strict=True):
            record = json.loads(line)
            video_id = clip.id.removesuffix("/0")
            assert record["video"]["source"] == f"frames/{video_id}.arrow"
            assert clip.dataset == "synthetic" and clip.video.start_frame == 0
            assert len(open_frames(root / record["video"]["source"], clip.fps)) == clip.video.end_frame
            assert np.asarray(clip.frame(0)).shape == (SIZE, SIZE, 3)


def test_events_aligned_inside_clip_and_ordered(dataset):
    _, clips = dataset
    for clip in all_clips(clips):
        times = [e.time for e in clip.events]
        assert times == sorted(times)
        assert {e.role for e in clip.events} == {"user", "assistant", "dst"}
        assert clip.events[0].role == "user" and clip.events[0].frame <= 2
        for e in clip.events:
            assert e.frame == frame_at(e.time, clip.fps), (clip.id, e)
            assert e.frame in clip.frame_indices, (clip.id, e)
            assert e.role != "assistant" or e.progress


def test_dst_updates_apply_and_complete_every_step(dataset):
    _, clips = dataset
    durations = set()
    for clip in all_clips(clips):
        state = dict(clip.task.initial_state)
        assert set(state.values()) == {"not_started"} and 3 <= len(state) <= 5
        for e in clip.events:
            if e.role == "dst":
                state = apply_updates(state, e.updates)
        assert set(state.values()) == {"completed"}, clip.id
        for step in clip.task.steps:
            durations.add(round(step.end - step.start))
            assert step.id in state and 4 - 0.5 <= step.end - step.start <= 12 + 0.5
        # every dst event is followed, at the same frame, by the assistant saying what comes next
        for e, after in zip(clip.events, clip.events[1:], strict=False):
            if e.role == "dst":
                assert after.role == "assistant" and after.frame == e.frame
    assert len(durations) > 3  # transition times are not a fixed rhythm


def test_no_two_steps_of_a_task_share_a_word(tmp_path):
    """Each shape and each colour at most once per task, at the most steps a board holds (6): a step name shares no
    word with another of its task's, so a reply that copies a word of the wrong step is wrong in every word."""
    clips = synthesize(tmp_path, 30, seed=5, num_steps=(6, 6), eval_num_steps=(6, 6), image_size=32)
    shapes, colours = set(), set()
    for clip in all_clips(clips):
        pieces = [read_turn(f"Next, {s.name}.") for s in clip.task.steps]
        assert len(pieces) == 6 and len({p.shape for p in pieces}) == len({p.colour for p in pieces}) == 6, clip.id
        shapes |= {p.shape for p in pieces}
        colours |= {p.colour for p in pieces}
    assert "star" in shapes and "purple" in colours


def test_progress_names_the_instructed_step_alone(dataset):
    """A summary is learned as the progress: the step the last instruction named, as the DST events left the state;
    the steps before it are completed, which the state says (docs/synthetic-tasks.md, "Summaries")."""
    _, clips = dataset
    for clip in all_clips(clips):
        names = [s.name for s in clip.task.steps]
        state, instructed = dict(clip.task.initial_state), None  # the index of the step the last instruction named
        for e in clip.events:
            if e.role == "dst":
                state = apply_updates(state, e.updates)
            if e.role != "assistant":
                continue
            if e.labels == "initiative|instruction":
                instructed = next(k for k, n in enumerate(names) if n in e.text.lower())
            elif e.text.startswith("All steps are done"):
                instructed = len(names)
            assert instructed is not None, (clip.id, e)
            doing = names[instructed] if instructed < len(names) else "none"
            done = [n for n, st in zip(names, state.values(), strict=True) if st == "completed"]
            assert done == names[:instructed], (clip.id, e)
            assert e.progress == f"In progress: {doing}.", (clip.id, e)


def slot_change(a: np.ndarray, b: np.ndarray, slot: int) -> float:
    """Fraction of the slot's pixels whose colour changed by far more than the per-frame noise."""
    x0, y0, x1, y1 = slot_box(slot, SIZE)
    diff = np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1].astype(np.int16))
    return float((diff.max(-1) > 60).mean())


def test_changes_appear_exactly_at_event_frames(dataset):
    """Frame f (an event's frame) is the first to show the change; frames f-2 and f-1 look alike there."""
    _, clips = dataset
    checked = {"dst": 0, "correction": 0}
    for clip in all_clips(clips):
        frames = [np.asarray(clip.frame(i)) for i in clip.frame_indices]
        in_progress = None
        for e in clip.events:
            if e.role == "dst":
                slots = [int(u.id[1:]) - 1 for u in e.updates]
                in_progress = next((int(u.id[1:]) - 1 for u in e.updates if u.transition == "start"), None)
                kind = "dst"
            elif e.labels == "initiative|correction":
                slots, kind = [in_progress], "correction"
            else:
                continue
            f = e.frame
            for slot in slots:
                change = slot_change(frames[f], frames[f - 1], slot)
                before = slot_change(frames[f - 1], frames[f - 2], slot)
                assert change > 0.12 and change > 2 * before, (clip.id, e, slot, change, before)
            checked[kind] += 1
    assert checked["dst"] >= 40 and checked["correction"] >= 3, checked


def orange_pixels(frame: np.ndarray) -> int:
    """Pixels of the frame in the mistake cue's orange (255, 140, 0), after noise, jitter and JPEG."""
    r, g, b = (frame.astype(np.int16)[..., c] for c in range(3))
    return int(((r > 215) & (abs(g - 140) < 40) & (b < 70)).sum())


def test_cue_marks_grow_triangle_ring_board_and_show_on_the_cue_frame_only(tmp_path):
    """The three cue marks draw the same videos but for the mark (its drawing draws nothing random); the ring
    lights up several times the triangle's pixels and the board's edge several times the ring's, on the cue's
    first frame only; the ring and the triangle in the slot of the step in progress, the edge in every quarter of
    the frame (each of the pretrained default's 4 tokens sees one: docs/synthetic-tasks.md)."""
    counts = {}
    for mark in ("triangle", "ring", "board"):
        clips = synthesize(tmp_path / mark, 2, seed=3, val_videos=0, test_videos=0, mistake_prob=1.0, cue_mark=mark)
        counts[mark] = []
        for clip in clips["train"]:
            frames = [np.asarray(clip.frame(i)) for i in clip.frame_indices]
            slots = {e.frame: int(u.id[1:]) - 1 for e in clip.events if e.role == "dst" for u in e.updates
                     if u.transition == "start"}
            for e in clip.events:
                if e.labels == "initiative|correction":
                    frame = frames[e.frame]
                    assert orange_pixels(frames[e.frame - 1]) == orange_pixels(frames[e.frame + 1]) == 0, e.frame
                    counts[mark].append(orange_pixels(frame))
                    x0, y0, x1, y1 = slot_box(slots[max(f for f in slots if f < e.frame)], SIZE)
                    in_slot = orange_pixels(frame[y0:y1, x0:x1])
                    half = SIZE // 2
                    quarters = [orange_pixels(frame[y:y + half, x:x + half]) for y in (0, half) for x in (0, half)]
                    if mark == "board":
                        assert min(quarters) > counts[mark][-1] / 8, (e.frame, quarters)
                    else:
                        assert in_slot == counts[mark][-1], (mark, e.frame)
    assert len(counts["ring"]) >= 6
    assert all(0 < 2 * t < r and 2 * r < b for t, r, b in zip(*counts.values(), strict=True)), counts
    with pytest.raises(ValueError, match="cue_mark"):
        synthesize(tmp_path / "bad", 1, 0, cue_mark="star")


def test_only_the_tasks_slots_are_outlined(dataset):
    """How many steps a task has is visible: its slots have an outline, the others are bare board."""
    _, clips = dataset
    seen = set()
    for clip in all_clips(clips):
        first = np.asarray(clip.frame(clip.video.start_frame)).astype(np.int16)
        for slot in range(6):
            x0, y0, x1, y1 = slot_box(slot, SIZE)
            edge = np.concatenate([first[y0, x0:x1], first[y1 - 1, x0:x1], first[y0:y1, x0], first[y0:y1, x1 - 1]])
            outlined = bool(np.median(edge.mean(-1)) > 85)  # outline about 111, bare board about 52 (+ noise)
            assert outlined == (slot < len(clip.task.steps)), (clip.id, slot, np.median(edge.mean(-1)))
        seen.add(len(clip.task.steps))
    assert len(seen) > 1


def test_slot_boxes_tile_the_board():
    boxes = [slot_box(s, 64) for s in range(6)]
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and x1 - x0 >= 16
    assert len(set(boxes)) == 6


def test_bad_settings_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_steps"):
        synthesize(tmp_path, 1, 0, num_steps=(3, 9))
    with pytest.raises(ValueError, match="step_seconds"):
        synthesize(tmp_path, 1, 0, step_seconds=(5.0, 2.0))


def test_ensure_synthetic_regenerates_only_on_change(tmp_path):
    from prospect.data.synthetic import ensure_synthetic

    assert ensure_synthetic(tmp_path, 2, seed=3, image_size=32, val_videos=1, test_videos=1)
    before = (tmp_path / "train.jsonl").read_bytes()
    assert not ensure_synthetic(tmp_path, 2, seed=3, image_size=32, val_videos=1, test_videos=1)
    assert ensure_synthetic(tmp_path, 2, seed=4, image_size=32, val_videos=1, test_videos=1)
    assert (tmp_path / "train.jsonl").read_bytes() != before
    assert all(p.name.startswith("syn4-") for p in (tmp_path / "frames").iterdir()), "old videos removed"


def test_never_generates_into_a_folder_of_other_data(tmp_path):
    from prospect.data.synthetic import ensure_synthetic

    (tmp_path / "train.jsonl").write_text("{}\n")  # someone's real clips
    with pytest.raises(FileExistsError, match="no synthetic manifest.json"):
        ensure_synthetic(tmp_path, 2, seed=0)
    assert (tmp_path / "train.jsonl").read_text() == "{}\n"


def test_every_assistant_turn_reads_back_as_what_it_says(dataset):
    """read_turn (the content metrics' parser) reads every reply the generator writes: the instructions name the
    step they start, in order, the last reply says the task is done."""
    _, clips = dataset
    kinds = set()
    for clip in all_clips(clips):
        replies = [e for e in clip.events if e.role == "assistant"]
        turns = [read_turn(e.text) for e in replies]
        assert None not in turns, [e.text for e, t in zip(replies, turns, strict=True) if t is None]
        instructions = [t for t in turns if t.kind in ("first", "next", "finally")]
        assert [f"place the {t.colour} {t.shape}" for t in instructions] == [s.name for s in clip.task.steps]
        assert [t.kind for t in instructions] == ["first", *["next"] * (len(instructions) - 2), "finally"]
        assert turns[-1].kind == "done"
        kinds |= {t.kind for t in turns}
    assert kinds == {"first", "next", "finally", "correction", "done"}
    assert read_turn("Careful, the cross should be pink.") == SyntheticTurn("correction", "pink", "cross")
    assert read_turn("Next, place the red.") is None and read_turn("place the red cross") is None
