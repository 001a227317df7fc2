"""Every kind of broken input gets a problem naming file, line, clip, field and reason (docs/data-format.md,
Validation)."""

import copy
import io
import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import DST, PROASSIST, proassist_split, write_frames, write_jsonl
from PIL import Image
from tqdm import tqdm

from prospect.data import ClipFormatError, load_clips, read_clips
from prospect.data.__main__ import main
from prospect.data.decode_check import FrameDecodeCheck
from prospect.data.errors import ClipWarning
from prospect.data.frames import FrameDecodeError


def broken(base: dict, edit) -> dict:
    rec = copy.deepcopy(base)
    edit(rec)
    return rec


def conv(i, **fields):
    return lambda r: r["conversation"][i].update(fields)


def ours_record(root) -> dict:
    (clip,) = load_clips(write_jsonl(root / "base.jsonl", [PROASSIST]))
    return clip.to_dict()


CASES = [
    # (id, base record, edit, field named in the problem, words in the reason)
    ("missing-field", PROASSIST, lambda r: r.pop("fps"), "fps", "missing required field"),
    ("wrong-type", PROASSIST, lambda r: r.update(start_frame_idx="11"), "start_frame_idx", "expected integer"),
    ("wrong-type-turn", PROASSIST, conv(2, content=["I want"]), "conversation[2].content", "expected string"),
    ("bool-is-not-number", PROASSIST, conv(2, time=True), "conversation[2].time", "expected number"),
    ("unknown-role", PROASSIST, conv(2, role="narrator"), "conversation[2].role", "unknown role 'narrator'"),
    ("negative-time", DST, conv(1, time=-1.0), "conversation[1].time", "negative time -1.0"),
    ("non-monotone-dst", DST, conv(4, time=9.9), "conversation[4].time", "earlier than the previous event"),
    ("event-before-clip", DST, conv(1, time=3.0), "conversation[1].time", "before the clip starts"),
    ("frames-gap", PROASSIST, conv(4, start=16, end=17), "conversation[4].start",
     "starts at 16 but the previous frames turn ended at 15"),
    ("frames-overlap", PROASSIST, conv(6, start=15), "conversation[6].start", "must be contiguous"),
    ("frames-not-at-clip-start", PROASSIST, conv(1, start=12), "conversation[1].start",
     "starts at 12 but the clip starts at 11"),
    ("frames-end-mismatch", PROASSIST, lambda r: r.update(end_frame_idx=25), "end_frame_idx",
     "the last frames turn ends at 19"),
    ("empty-frames-turn", PROASSIST, conv(4, end=15), "conversation[4].end", "holds no frame"),
    ("unknown-step", DST, lambda r: r["conversation"][4]["content"].append({"id": "S9", "transition": "start"}),
     "conversation[4].content", "unknown step id 'S9'"),
    ("complete-before-start", DST, lambda r: r["conversation"][1].update(
        content=[{"id": "S1", "transition": "complete"}]) or r["conversation"][1].pop("dst_state"),
     "conversation[1].content", "S1->complete but S1 is not_started"),
    ("start-twice", DST, lambda r: r["conversation"][4]["content"].__setitem__(0, {"id": "S1", "transition": "start"}),
     "conversation[4].content", "S1->start but S1 is in_progress"),
    ("unknown-transition", DST, lambda r: r["conversation"][1].update(content=[{"id": "S1", "transition": "begin"}]),
     "conversation[1].content", "unknown transition 'begin'"),
    ("dst-state-disagrees", DST, conv(2, dst_state={"S1": "completed"}), "conversation[2].dst_state.S1",
     "says completed but the updates so far give in_progress"),
    ("fps-zero", PROASSIST, lambda r: r.update(fps=0), "fps", "fps must be positive, got 0"),
    ("fps-negative-dst", DST, lambda r: r.update(fps=-2), "fps", "fps must be positive"),
    ("empty-conversation", PROASSIST, lambda r: r.update(conversation=[]), "conversation", "empty conversation"),
    ("empty-conversation-dst", DST, lambda r: r.update(conversation=[]), None, "no events"),
    ("empty-text", PROASSIST, conv(5, content="  "), "conversation[5].content", "empty assistant text"),
    ("summary-unanswered", PROASSIST,
     lambda r: r["conversation"].append({"role": "system", "content": "Please summarize the progress."}),
     "conversation[8]", "a summarize request that no assistant turn answers"),
    ("has-summary-without-one", PROASSIST, lambda r: r["metadata"].update(has_summary=True), "metadata.has_summary",
     "is true but the clip ends with no summarize request and summary"),
    ("duplicate-step", DST, lambda r: r["dst"].append(dict(r["dst"][0])), "dst[3].id", "duplicate step id 'S1'"),
    ("bad-initial-state", DST, lambda r: r.update(initial_dst_state={"S1": "done"}), "initial_dst_state.S1",
     "unknown state 'done'"),
]


@pytest.mark.parametrize(("base", "edit", "field", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_clip_is_named_precisely(data_root, base, edit, field, reason):
    path = write_jsonl(data_root / "clips.jsonl", [PROASSIST if base is DST else DST, broken(base, edit)])
    clips, problems = read_clips(path)
    assert len(clips) == 1, "the good clip on line 1 still reads"
    clip_id = "vid/0/talk_some_1" if base is PROASSIST else "asm/0"
    texts = [str(p) for p in problems]
    expected = f"{path}, line 2, clip {clip_id}" + (f", {field}: " if field else ": ")
    assert any(t.startswith(expected) and reason in t for t in texts), texts
    with pytest.raises(ClipFormatError) as err:
        load_clips(path)
    assert any(p.line == 2 and p.field == field and reason in p.reason for p in err.value.problems)


def test_invalid_json_line_and_non_object(data_root):
    path = write_jsonl(data_root / "clips.jsonl", [PROASSIST, '{"dataset": "ego4d",', "[1, 2]", DST])
    clips, problems = read_clips(path)
    assert [c.id for c in clips] == ["vid/0/talk_some_1", "asm/0"]
    assert [str(p) for p in problems][0].startswith(f"{path}, line 2: invalid JSON")
    assert str(problems[1]) == f"{path}, line 3: expected a JSON object per clip, got list"


def test_unrecognised_record(data_root):
    _, problems = read_clips(write_jsonl(data_root / "clips.jsonl", [{"video": "x"}]))
    assert "not a clip in any supported format" in str(problems[0])


def test_duplicate_clip_ids(data_root):
    """Our format and DST clips: a repeated id is an error. ProAssist: a repeated video and clip_idx is another
    dialog of the same video (tests/test_upstream.py)."""
    path = write_jsonl(data_root / "clips.jsonl", [ours_record(data_root), DST, ours_record(data_root), DST])
    _, problems = read_clips(path)
    assert [str(p) for p in problems] == [
        f"{path}, line 3, clip vid/0/talk_some_1, id: duplicate clip id (first seen at line 1)",
        f"{path}, line 4, clip asm/0, id: duplicate clip id (first seen at line 2)"]


def test_frames_source_missing_or_short(data_root):
    short = broken(DST, lambda r: r.update(frames_file="frames/short.arrow"))
    missing = broken(PROASSIST, lambda r: r.update(frames_file="frames/nope.arrow"))
    write_frames(data_root, "short", 40)  # the clip needs frames up to 43
    path = write_jsonl(data_root / "clips.jsonl", [short, missing])
    assert read_clips(path)[1] == [], "frames are only opened when asked"
    texts = [str(p) for p in read_clips(path, check_frames=True)[1]]
    assert texts[0].startswith(f"{path}, line 1, clip asm/0, frames_file: ")
    assert "short.arrow has 40 frames but the clip needs frames up to 43" in texts[0]
    assert texts[1].startswith(f"{path}, line 2, clip vid/0/talk_some_1, frames_file: ")
    assert "does not exist" in texts[1]


OURS_CASES = [
    ("missing", lambda r: r["video"].pop("fps"), "video", "'fps' is missing"),
    ("wrong-type", lambda r: r["events"][1].update(time="7.8"), "events[1].time", "is not of type 'number'"),
    ("role", lambda r: r["events"][1].update(role="narrator"), "events[1].role", "'narrator' is not one of"),
    ("dst-with-text", lambda r: r["events"][1].update(role="dst"), "events[1]", "a dst event needs 'updates'"),
    ("fps", lambda r: r["video"].update(fps=0), "video.fps", "less than or equal to the minimum of 0"),
    ("frame-outside", lambda r: r["events"][4].update(frame=19), "events[4]",
     "decided after frame 19, outside the clip's frames [11, 19)"),
    ("frame-order", lambda r: r["events"][2].update(frame=16), "events[3]", "before the previous event (frame 16)"),
    ("unknown-step", lambda r: r["events"].append({"role": "dst", "time": 9.6, "frame": 18,
                                                   "updates": [{"id": "S1", "transition": "start"}]}),
     "events[5].updates", "unknown step id 'S1'"),
    ("kind-role", lambda r: r["events"][1].update(kind="summary"), "events[1]", "kind 'summary' does not fit role"),
]


@pytest.mark.parametrize(("edit", "field", "reason"), [c[1:] for c in OURS_CASES], ids=[c[0] for c in OURS_CASES])
def test_our_format_problems(data_root, edit, field, reason):
    path = write_jsonl(data_root / "ours.jsonl", [broken(ours_record(data_root), edit)])
    texts = [str(p) for p in read_clips(path)[1]]
    assert any(t.startswith(f"{path}, line 1, clip vid/0/talk_some_1, {field}: ") and reason in t for t in texts), texts


def test_two_dst_events_at_one_frame_in_our_format(data_root):
    """One DST event per frame holds every update decided there (the model writes one DST turn per decision)."""
    (clip,) = load_clips(write_jsonl(data_root / "dst.jsonl", [DST]))
    record = clip.to_dict()
    both = record["events"][4]
    assert both["frame"] == 28 and len(both["updates"]) == 2
    record["events"][4:5] = [{**both, "updates": both["updates"][:1]}, {**both, "updates": both["updates"][1:]}]
    texts = [str(p) for p in read_clips(write_jsonl(data_root / "ours.jsonl", [record]))[1]]
    assert any(", events[5]: a second DST event decided after frame 28 (the first is events[4])" in t for t in texts)


def test_validate_command_lists_every_problem(data_root, capsys):
    bad = broken(DST, lambda r: (r.update(fps=0), r["conversation"].__setitem__(2, "oops")))
    path = write_jsonl(data_root / "clips.jsonl", [PROASSIST, bad, broken(PROASSIST, conv(2, role="x"))])
    good = write_jsonl(data_root / "good.jsonl", [PROASSIST])
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{path}, line 2, clip asm/0, fps: fps must be positive, got 0" in out
    assert f"{path}, line 2, clip asm/0, conversation[2]: expected an object, got str" in out
    assert f"{path}, line 3, clip vid/0/talk_some_1, conversation[2].role: unknown role 'x' (expected system, user, " \
           "assistant, frames)" in out


def test_turn_after_the_last_frame_is_a_warning(data_root, capsys):
    """Upstream attaches a turn past the video's end to its last frame: read so, reported as a warning."""
    path = write_jsonl(data_root / "clips.jsonl", [broken(DST, conv(6, time=30.0))])
    clips, problems = read_clips(path)
    assert [c.events[-1].frame for c in clips] == [43]  # the clip's last frame
    assert [str(p) for p in problems] == [
        f"warning: {path}, line 1, clip asm/0, conversation[6].time: 30.0 s is after the clip ends (last frame 43 "
        "completes at 22 s); decided after the last frame, as upstream attaches it"]
    with pytest.warns(ClipWarning, match="after the clip ends"):
        load_clips(path)
    assert main(["validate", str(path)]) == 0  # warnings do not fail validation
    assert "warning: " in capsys.readouterr().out


def test_dst_json_document_problem_names_item(data_root):
    path = data_root / "clips.json"
    path.write_text(json.dumps([DST, broken(DST, lambda r: r.update(fps="2"))]))
    (problem,) = read_clips(path)[1]
    assert str(problem) == f"{path}, item 1, clip asm/0, fps: expected number, got str '2'"


def corrupt_frame(path: Path, index: int) -> None:
    """Overwrite frame `index` of an Arrow frames file in place with as many bytes of garbage, as a bad disk or
    an interrupted copy would (all 'A': valid base64 of zero bytes, which is not an image)."""
    data = path.read_bytes()
    cells = [c.encode() for c in pa.ipc.open_stream(data).read_all()["frame"].to_pylist()[: index + 1]]
    start = 0
    for cell in cells[:-1]:  # cells lie in row order in the file, and neighbours may be equal
        start = data.index(cell, start) + len(cell)
    with path.open("r+b") as f:
        f.seek(data.index(cells[-1], start))
        f.write(b"A" * len(cells[-1]))


def test_validate_decode_names_undecodable_frame(data_root, capsys):
    frames = data_root / "frames" / "vid.arrow"
    corrupt_frame(frames, 13)
    path = write_jsonl(data_root / "clips.jsonl", [DST, PROASSIST])
    (_, clip) = load_clips(path)
    assert main(["validate", str(path)]) == 0, "without --decode, frames are counted, not decoded"
    capsys.readouterr()
    assert main(["validate", "--decode", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}, line 2, clip {clip.id}, frames_file: {frames}: frame 13 does not decode (not an image in a known "
        "format)"]
    with pytest.raises(FrameDecodeError, match=f"vid.arrow: frame 13 of clip {clip.id} does not decode"):
        clip.frame(13)  # as training and streaming read it
    with pytest.raises(SystemExit):
        main(["validate", "--decode", "--no-frames", str(path)])


def test_decode_shared_frames_once(data_root):
    corrupt_frame(data_root / "frames" / "vid.arrow", 13)
    path = write_jsonl(data_root / "clips.jsonl", [PROASSIST, proassist_split(1)])  # both: frames 11..18
    with tqdm(file=io.StringIO()) as bar:
        clips, problems = read_clips(path, extra_check=FrameDecodeCheck(bar))
    assert bar.n == 8
    assert clips == [] and [p.line for p in problems if p.field == "frames_file"] == [1, 2]


def test_validate_decode_image_folder(data_root, capsys):
    folder = data_root / "frames" / "vid_images"
    folder.mkdir()
    for i in range(19):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(folder / f"{i:03d}.png")
    (folder / "012.png").write_bytes(b"\x89PNG but nothing after")
    record = ours_record(data_root)
    record["video"]["source"] = "frames/vid_images"
    path = write_jsonl(data_root / "ours.jsonl", [record])
    assert main(["validate", "--decode", str(path)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{path}, line 1, clip {record['id']}, video.source: {folder / '012.png'}: frame 12 "
                           "does not decode (")
