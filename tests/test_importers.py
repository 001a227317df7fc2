"""Importers against hand-written clips: alignment kept exactly, nothing dropped, round trip through our format."""

import json
from dataclasses import replace

from conftest import DST, PROASSIST, SYSTEM, proassist_split, write_jsonl

from prospect.data import load_clips
from prospect.data.__main__ import main
from prospect.data.dataset import ClipDataset
from prospect.data.dst import StepUpdate


def test_proassist_keeps_frames_turn_alignment(data_root):
    (clip,) = load_clips(write_jsonl(data_root / "clips.jsonl", [PROASSIST]), check_frames=True)
    assert clip.id == "vid/0/talk_some_1" and clip.fps == 2 and clip.dataset == "ego4d"
    assert (clip.video.start_frame, clip.video.end_frame) == (11, 19)
    got = [(e.role, e.kind, e.frame, e.time, e.text[:12]) for e in clip.events]
    assert got == [
        ("system", "prompt", 10, 5.5, SYSTEM[:12]),  # before any frame: at the clip start; the clip's own prompt
        ("user", None, 14, 7.8, "I want to ma"),  # after frames [11, 15)
        ("system", "knowledge", 14, 7.8, "Task knowled"),  # the knowledge turn shares the user's frame and time
        ("assistant", None, 15, 7.9, "Great, first"),  # pushed: frame_at(7.9) is 14 but the file says after 15
        ("assistant", None, 18, 9.6, "Now steep th"),
    ]
    a = clip.events[3]
    assert a.labels == "initiative|instruction" and a.progress == "The time elapsed is 7.9 seconds."
    # upstream's model never sees the metadata's goal and knowledge (only the knowledge turn): kept, not rendered
    assert clip.task.goal == clip.task.knowledge == "" and clip.metadata["task_goal"] == "make tea"
    assert clip.metadata["knowledge"].startswith("1. Boil water") and clip.metadata["dialog"] == "vid/talk_some_1"
    assert clip.metadata["user_type"] == "talk_some" and clip.metadata["quality"] == 4.0
    assert clip.metadata["num_tokens_per_img"] == 1 and clip.metadata["source_format"] == "proassist"
    assert clip.frame(11).getpixel((0, 0))[0] in range(9, 14)  # frame 11 of the video, not of the clip


def test_proassist_split_keeps_summary(data_root):
    path = write_jsonl(data_root / "clips.jsonl", [proassist_split(1)])
    (clip,) = load_clips(path, check_frames=True)
    assert clip.id == "vid/1/talk_some_1" and clip.events[0].kind == "prompt"
    assert "Progress so far: kettle filled." in clip.events[0].text
    request, summary = clip.events[-2:]
    assert (request.role, request.kind, request.text) == ("system", "summarize_request",
                                                          "Please summarize the progress.")
    assert (summary.role, summary.kind, summary.frame) == ("assistant", "summary", 18)
    assert summary.text == "Water boiled, tea steeping." and summary.time == 9.5
    assert request.frame == 17 and clip.events[-3].frame == 17


def test_proassist_root_is_parent_of_prepared(data_root):
    (data_root / "prepared").mkdir()
    path = write_jsonl(data_root / "prepared" / "dialog_val.jsonl", [PROASSIST])
    (clip,) = load_clips(path, check_frames=True)
    assert clip.frames_path == data_root / "frames" / "vid.arrow"


def test_dst_clip_frames_from_time_and_state(data_root):
    path = data_root / "dst.json"
    path.write_text(json.dumps(DST))
    (clip,) = load_clips(path, check_frames=True)
    assert clip.id == "asm/0" and clip.dataset == "assembly101"
    got = [(e.role, e.frame, e.time) for e in clip.events]
    # the answer to a question at the same second moves one frame later, as upstream places dialog turns
    assert got == [("system", 18, 9.5), ("dst", 19, 10.2), ("user", 19, 10.2), ("assistant", 20, 10.2),
                   ("dst", 28, 14.9), ("assistant", 29, 15.0), ("dst", 38, 19.95)]
    assert clip.events[4].updates == [StepUpdate("S1", "complete"), StepUpdate("S2", "start")]
    assert clip.events[4].text == "S1->complete; S2->start"
    assert [s.id for s in clip.task.steps] == ["S1", "S2", "S3"]
    assert clip.task.steps[1].start == 14.9 and clip.task.steps[1].name == "Attach the wheels."
    assert clip.task.initial_state == {"S1": "not_started", "S2": "not_started", "S3": "not_started"}
    assert clip.task.goal == "Assemble a toy car"
    assert clip.metadata["quality"] == 3.5 and clip.metadata["seq_len"] == 500


def test_dst_initial_state_and_list_and_jsonl(data_root):
    later = dict(DST, clip_idx=1, initial_dst_state={"S1": "in_progress"})
    later["conversation"] = DST["conversation"][4:]
    (data_root / "list.json").write_text(json.dumps([DST, later]))
    clips = load_clips(data_root / "list.json")
    assert [c.id for c in clips] == ["asm/0", "asm/1"]
    assert clips[1].task.initial_state == {"S1": "in_progress", "S2": "not_started", "S3": "not_started"}
    assert [c.id for c in load_clips(write_jsonl(data_root / "d.jsonl", [DST, later]))] == ["asm/0", "asm/1"]


def test_import_command_round_trips_through_our_format(data_root, tmp_path):
    (data_root / "dst.json").write_text(json.dumps(DST))
    for source in [write_jsonl(data_root / "p.jsonl", [PROASSIST, proassist_split(1)]), data_root / "dst.json"]:
        out = tmp_path / "out" / f"{source.stem}.jsonl"
        assert main(["import", str(source), str(out)]) == 0
        originals, ours = load_clips(source), load_clips(out, check_frames=True)
        assert [_portable(c) for c in ours] == [_portable(c) for c in originals]  # every field and event survives
        assert [c.frames_path.resolve() for c in ours] == [c.frames_path.resolve() for c in originals]
        assert json.loads(out.read_text().splitlines()[0])["video"]["source"].endswith(".arrow")
        assert main(["validate", str(out)]) == 0


def test_clip_dataset_is_arrow_backed_and_aligned(data_root, tmp_path):
    path = write_jsonl(data_root / "p.jsonl", [PROASSIST, proassist_split(1)])
    ds = ClipDataset(path, cache_dir=tmp_path / "cache")
    assert len(ds) == 2 and ds.ids() == ["vid/0/talk_some_1", "vid/1/talk_some_1"]
    assert ds.table.cache_files, "the clips table must live in an Arrow cache file"
    clip = ds[0]
    assert _portable(clip) == _portable(load_clips(path)[0])
    assert clip.frames_path == (data_root / "frames" / "vid.arrow").resolve()
    by_frame = {f: [e.role for e in events] for f, events in clip.events_by_frame().items()}
    assert by_frame == {10: ["system"], 14: ["user", "system"], 15: ["assistant"], 18: ["assistant"]}
    assert list(clip.frame_indices) == list(range(11, 19))  # frame 10 is "before the first frame"
    assert clip.frame_timestamp(14) == 7.0 and clip.frame(14).size == (16, 16)
    again = ClipDataset(path, cache_dir=tmp_path / "cache")
    assert again.table.cache_files == ds.table.cache_files  # reused, not rebuilt


def _portable(clip):
    """The clip with its frames source blanked: it is written relative to wherever the clip file lies."""
    return replace(clip, video=replace(clip.video, source=""))
