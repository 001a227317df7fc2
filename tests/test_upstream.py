"""Real annotation files end to end (issue 12): fixtures shaped like upstream's (tests/upstream.py) are imported,
rendered (pinned against hand-written text), scored reference-against-itself, trained and streamed."""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections import Counter

import numpy as np
import pytest
from counts import compressions_due, restarts
from test_stream import record_generations_and_restarts
from upstream import (
    DST_CLIP,
    FORK_CLIP,
    FORK_PROMPT,
    KNOWLEDGE,
    PROGRESS,
    PROMPT_A,
    PROMPT_B,
    SUMMARY_PROMPT,
    SYSTEM,
    fork_segments,
    l0_records,
    write_upstream,
)

from prospect.data import load_clips
from prospect.data.__main__ import main
from prospect.data.clip import Clip
from prospect.data.errors import ClipWarning
from prospect.data.load import read_clips
from prospect.data.sequence import IGNORE, SequenceBuilder, decision_mask
from prospect.data.splits import whole_videos
from prospect.data.timebase import frame_at
from prospect.eval.dst_metrics import reference_states
from prospect.eval.streaming import StreamedClip, reference_events, score, stream_runs
from prospect.model.backbone import load_backbone
from prospect.stream.decoder import Turn
from prospect.stream.generator import FrameRecord, StreamingGenerator, StreamOptions
from prospect.stream.strategies import make_strategy


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_upstream(tmp_path_factory.mktemp("upstream"))


def _load(path) -> list[Clip]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClipWarning)
        return load_clips(path, check_frames=True)


def fed(gen, clip) -> list[int]:
    """Tokens a stream feeds at each frame of an upstream dialog: the frame and the user and system turns decided
    after it (never the clip's prompt, nor the reference's summary requests)."""
    b = gen.builder
    return [len(b.frame_ids()) + sum(len(b.turn_ids(e)) for e in clip.events_after(f) if e.role in ("user", "system")
                                     and e.kind not in ("prompt", "summarize_request")) for f in clip.frame_indices]


def prompt_tokens(gen, clip, knowledge: bool = False) -> int:
    """Tokens of PROMPT_A's dialog's prompt (upstream's system prompt alone) or, with `knowledge`, of a restarted
    one (the prompt and the knowledge turn)."""
    return len(gen.builder.prompt_ids(clip.task, clip.task.start_state(), system_prompt=PROMPT_A,
                                      knowledge=f"Task knowledge: {KNOWLEDGE}" if knowledge else None))


def test_three_dialogs_of_one_video_are_three_clips_on_one_frames_source(files):
    clips = _load(files["l0"])
    assert [c.id for c in clips] == ["abc/0/no_talk_0", "abc/0/talk_some_1", "abc/0/talk_more_2"]
    assert len({c.frames_path for c in clips}) == 1
    assert [c.metadata["dialog"] for c in clips] == ["abc/no_talk_0", "abc/talk_some_1", "abc/talk_more_2"]
    # without a user in the metadata, the order of appearance tells them apart, stably
    record = json.loads(files["l0"].read_text().splitlines()[0])
    del record["metadata"]["user_type"], record["metadata"]["user_id"]
    anonymous = files["l0"].parent / "anonymous.jsonl"
    anonymous.write_text("".join(json.dumps(record) + "\n" for _ in range(3)))
    assert [c.id for c in _load(anonymous)] == ["abc/0", "abc/0/2", "abc/0/3"]


def test_pushed_turn_and_turn_after_the_last_frame_keep_upstreams_frames(files):
    with pytest.warns(ClipWarning, match=r"conversation\[15\].time: 25.0 s is after the clip ends"):
        clips = load_clips(files["l0"])
    talk_some = clips[1]
    pushed, last = talk_some.events[3], talk_some.events[-1]
    assert (pushed.time, frame_at(pushed.time, 2), pushed.frame) == (1.3, 1, 2)  # the file's frame, not the time's
    assert (last.time, last.frame, talk_some.video.end_frame) == (25.0, 38, 39)
    assert main(["validate", str(files["l0"])]) == 0  # warnings only


def test_split_file_prompt_knowledge_and_summary(files):
    no_talk, first, later = _load(files["splits"])
    assert [c.id for c in (first, later)] == ["abc/0/talk_some_1", "abc/1/talk_some_1"]
    assert [(e.kind, e.frame) for e in first.events if e.kind] == [
        ("prompt", -1), ("knowledge", 1), ("summarize_request", 11), ("summary", 12)]
    assert later.system_prompt == f"{PROMPT_B} {PROGRESS[1]} Task knowledge: {KNOWLEDGE}"
    assert later.video.start_frame == 6  # upstream re-shows context frames before the next turn


def test_splits_merged_are_the_whole_video(files):
    merged = {c.id: c for c in whole_videos(_load(files["splits"]))}
    whole = {c.id: c for c in _load(files["l0"])}
    for clip_id in ("abc/0/no_talk_0", "abc/0/talk_some_1"):
        a, b = merged[clip_id], whole[clip_id]
        assert (a.video.start_frame, a.video.end_frame) == (b.video.start_frame, b.video.end_frame)
        # the same turns at the same frames; only the sampled prompt differs (upstream samples one per split)
        assert [(e.role, e.kind, e.frame, e.text) for e in a.events[1:]] == [
            (e.role, e.kind, e.frame, e.text) for e in b.events[1:]]
    assert merged["abc/0/talk_some_1"].system_prompt == PROMPT_A  # the first split's, never the leaked summary
    broken = [c for c in _load(files["splits"]) if c.id != "abc/0/talk_some_1"]
    with pytest.raises(ValueError, match=r"dialog abc/talk_some_1, clip abc/1/talk_some_1, clip_idx: .* \[1\]"):
        whole_videos(broken)


@pytest.fixture(scope="module")
def render(tiny_dir, files):
    def run(path, *args) -> str:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", ClipWarning)
            assert main(["render", str(path), "--model", str(tiny_dir), "--tokens-per-frame", "1", *args]) == 0
        return out.getvalue()
    return run


EOT = "<end_of_utterance>"


def test_render_whole_video(render, files):
    assert render(files["l0"], "--clip", "abc/0/talk_some_1") == f"""\
== abc/0/talk_some_1: sequence 1/1, frames 0..38, {{n}} tokens ==
<|im_start|>System: {PROMPT_A}{EOT}
frame 0 @ 0.0s [-]
frame 1 @ 0.5s [unlabeled]: <|im_start|>User: I want to make tea.{EOT}<|im_start|>System: Task knowledge: {{K}}{EOT}
frame 2 @ 1.0s [speak]: <|im_start|>Assistant:{{lm: Great, first fill the kettle.{EOT}}}
frame 3 .. 10 [-] (8 silent frames)
frame 11 @ 5.5s [speak]: <|im_start|>Assistant:{{lm: Now boil the water.{EOT}}}
frame 12 .. 14 [-] (3 silent frames)
frame 15 @ 7.5s [unlabeled]: <|im_start|>User: Is it hot enough?{EOT}
frame 16 @ 8.0s [speak]: <|im_start|>Assistant:{{lm: Yes, it is boiling now.{EOT}}}
frame 17 .. 26 [-] (10 silent frames)
frame 27 @ 13.5s [speak]: <|im_start|>Assistant:{{lm: Put the tea bag in the cup.{EOT}}}
frame 28 .. 37 [-] (10 silent frames)
frame 38 @ 19.0s [speak]: <|im_start|>Assistant:{{lm: Enjoy your tea.{EOT}}}
""".replace("{K}", KNOWLEDGE).replace("{n} tokens", _tokens(render(files["l0"], "--clip", "abc/0/talk_some_1")))


def _tokens(rendered: str) -> str:
    return rendered.splitlines()[0].rsplit(", ", 1)[1].removesuffix(" ==")


def test_a_requested_summary_is_no_head_target(tiny_dir, files):
    _, tok = load_backbone(str(tiny_dir))
    (seq,) = SequenceBuilder(tok, 1).build(_load(files["splits"])[1])
    assert (seq.frames[-1], seq.speaking[-1], seq.supervised[-1]) == (12, 0, 0)
    assert decision_mask(seq, 1.0, np.random.default_rng(0))[-1] is False  # every negative counts, not this one
    assert sum(seq.speaking) == 2  # the two proactive replies before it


def test_render_split_with_summary(render, files):
    lines = render(files["splits"], "--clip", "abc/0/talk_some_1").splitlines()
    # the request follows the frame's reply; the summary follows one more frame, which is no head target
    assert lines[-2:] == [
        f"frame 11 @ 5.5s [speak]: <|im_start|>Assistant:{{lm: Now boil the water.{EOT}}}"
        f"<|im_start|>System: Please summarize the progress.{EOT}",
        f"frame 12 @ 6.0s [requested]: <|im_start|>Assistant:{{lm: {PROGRESS[1]}{EOT}}}"]
    later = render(files["splits"], "--clip", "abc/1/talk_some_1").splitlines()
    assert later[1] == f"<|im_start|>System: {PROMPT_B} {PROGRESS[1]} Task knowledge: {KNOWLEDGE}{EOT}"
    assert later[2] == "frame 6 .. 14 [-] (9 silent frames)"


def test_render_dst_clip_with_a_step_started_before_the_first_frame(render, files):
    steps = "S1 = Attach the chassis.; S2 = Attach the wheels.; S3 = Add the cabin."
    assert render(files["dst"]).split("\n", 1)[1] == "\n".join([
        f"<|im_start|>System: {SYSTEM}\nGoal: Assemble a toy car\nKnowledge: {DST_CLIP['inferred_knowledge']}\n"
        f"Steps: {steps}\nState: S1 not_started; S2 not_started; S3 not_started{EOT}"
        f"<|im_start|>DST:{{dst: S1->start{EOT}}}",
        f"frame 4 @ 2.0s [unlabeled]: <|im_start|>User: I want to assemble the toy car.{EOT}",
        f"frame 5 @ 2.5s [speak]: <|im_start|>Assistant:{{lm: Start by attaching the chassis.{EOT}}}",
        "frame 6 .. 10 [-] (5 silent frames)",
        f"frame 11 @ 5.5s [speak dst]: <|im_start|>DST:{{dst: S1->complete; S2->start{EOT}}}"
        f"<|im_start|>Assistant:{{lm: Now attach the wheels.{EOT}}}",
        "frame 12 .. 22 [-] (11 silent frames)",
        f"frame 23 @ 11.5s [speak dst]: <|im_start|>DST:{{dst: S2->complete; S3->start{EOT}}}"
        f"<|im_start|>Assistant:{{lm: Finally, add the cabin.{EOT}}}",
        "frame 24 .. 27 [-] (4 silent frames)",
        f"frame 28 @ 14.0s [dst]: <|im_start|>DST:{{dst: S3->complete{EOT}}}",
        f"frame 29 @ 14.5s [speak]: <|im_start|>Assistant:{{lm: All done, well built!{EOT}}}", ""])
    # split short, the later part's prompt carries the state tracked from S1's start before the first frame
    parts = render(files["dst"], "--max-seq-len", "400").split("== toy/0: sequence ")
    assert len(parts) == 3 and "State: S1 completed; S2 in_progress; S3 not_started" in parts[2]


def test_render_fork_clip_one_dst_turn_per_step_change(render, files):
    """The fork writes a step change as two DST_UPDATE turns at one time: one DST turn, one decision. The answer to
    the user's goal at the same second comes a frame later, as upstream places it, and the frame the user's turn
    follows is no speaking target."""
    steps = "S1 = Attach the chassis.; S2 = Attach the wheels.; S3 = Add the cabin."
    assert render(files["fork"]).split("\n", 1)[1] == "\n".join([
        f"<|im_start|>System: {FORK_PROMPT}\nGoal: Assemble a toy car\nKnowledge: {FORK_CLIP['inferred_knowledge']}\n"
        f"Steps: {steps}\nState: S1 not_started; S2 not_started; S3 not_started{EOT}",
        f"frame 3 @ 1.5s [dst]: <|im_start|>User: I want to assemble the toy car.{EOT}<|im_start|>DST:{{dst: S1->start"
        f"{EOT}}}",
        f"frame 4 @ 2.0s [speak]: <|im_start|>Assistant:{{lm: Great! First, attach the chassis parts together.{EOT}}}",
        "frame 5 .. 8 [-] (4 silent frames)",
        f"frame 9 @ 4.5s [speak dst]: <|im_start|>DST:{{dst: S1->complete; S2->start{EOT}}}"
        f"<|im_start|>Assistant:{{lm: Now attach the wheels to the chassis.{EOT}}}",
        "frame 10 .. 12 [-] (3 silent frames)",
        f"frame 13 @ 6.5s [speak]: <|im_start|>Assistant:{{lm: Screw the other wheels on too.{EOT}}}",
        "frame 14 .. 18 [-] (5 silent frames)",
        f"frame 19 @ 9.5s [speak dst]: <|im_start|>DST:{{dst: S2->complete; S3->start{EOT}}}"
        f"<|im_start|>Assistant:{{lm: Finally, add the cabin.{EOT}}}",
        "frame 20 .. 25 [-] (6 silent frames)",
        f"frame 26 @ 13.0s [dst]: <|im_start|>DST:{{dst: S3->complete{EOT}}}",
        "frame 27 @ 13.5s [-]", ""])


def test_fork_step_changes_stream_and_score_as_one_unit(tiny_dir, files, monkeypatch):
    """Streaming decodes one DST turn per frame: the fork's two same-time transitions, written as the model writes
    them ("S1->complete; S2->start"), move the tracked state by both, and each step change is one scored unit."""
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, 1, speaking_threshold=2.0, dst_update_threshold=0.0)
    (clip,) = _load(files["fork"])
    reference = {e.frame: e.text for e in reference_events(clip, "dst")}
    assert reference == {3: "S1->start", 9: "S1->complete; S2->start", 19: "S2->complete; S3->start",
                         26: "S3->complete"}
    frames = iter(clip.frame_indices)
    monkeypatch.setattr(gen.decoder, "turn",
                        lambda cache, role, max_new_tokens=None: Turn(reference.get(next(frames), ""), False))
    records = list(gen.stream(clip))
    assert [r.dst_state for r in records] == reference_states(clip)
    assert records[9 - 3].dst_state == {"S1": "completed", "S2": "in_progress", "S3": "not_started"}
    m = score("none", (0.5, 0.0), [StreamedClip(clip, records, 0)], _exact).metrics
    assert (m["dst_f1"], m["dst_matched"], m["dst_missed"], m["dst_redundant"]) == (1.0, 4, 0, 0)


def test_fork_segments_start_from_the_state_their_predecessors_reach(files):
    with pytest.warns(ClipWarning) as caught:
        first, later = load_clips(files["fork_segments"])
    assert first.task.initial_state == {"S1": "not_started", "S2": "not_started", "S3": "not_started"}
    assert later.task.initial_state == {"S1": "completed", "S2": "in_progress", "S3": "not_started"}
    assert first.system_prompt == FORK_PROMPT  # the end state the fork appended is not shown
    # the file's own states, where they contradict: segment 0 gives its end state three times, segment 1 a turn's
    # state from a blank one
    said = [(str(w.message).split(", ")[2], str(w.message).split(", ")[3].split(":")[0]) for w in caught]
    assert said == [("clip toy/0", "initial_dst_state"), ("clip toy/0", "metadata.initial_dst_state"),
                    ("clip toy/0", "conversation[0].content"), ("clip toy/1", "conversation[2].dst_state")]
    assert "says S1 completed, S2 in_progress but the state before this segment" in str(caught[0].message)
    assert main(["validate", "--no-frames", str(files["fork_segments"])]) == 0
    # both train from their own start: the later one's prompt carries the recomputed state
    assert [e.text for e in later.events if e.role == "dst"] == ["S2->complete; S3->start", "S3->complete"]
    reversed_file = files["fork_segments"].with_name("reversed.json")
    reversed_file.write_text(json.dumps(fork_segments()[::-1]))
    with pytest.raises(ValueError, match=r"clip toy/1, clip_idx: segment 1 of video toy: its start state is "
                       r"recomputed from the segments before it, which must come first in this file"):
        _load(reversed_file)


@pytest.mark.parametrize(("context", "warned"), [
    ({"S1": "completed", "S2": "in_progress", "S3": "not_started"}, False),
    ({"S1": "in_progress", "S2": "not_started", "S3": "not_started"}, True)])
def test_an_older_forks_dst_context_turn_is_context(files, context, warned):
    path = files["fork_segments"].with_name("context.json")
    path.write_text(json.dumps(fork_segments(context)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ClipWarning)
        _, later = load_clips(path)
    about = [str(w.message) for w in caught if "conversation[1].content" in str(w.message)]
    assert len(about) == int(warned) and (not warned or "says S1 in_progress, S2 not_started but" in about[0])
    assert not any("DST_CONTEXT" in e.text or "Previous state" in e.text for e in later.events)
    assert later.task.initial_state == {"S1": "completed", "S2": "in_progress", "S3": "not_started"}


def test_summary_files_train_summaries_only(tiny_dir, files, render):
    """upstream's summary_* files (summary_only): no head target anywhere, the summary learned as text."""
    (clip,) = _load(files["summary"])
    assert clip.metadata["summary_only"] is True and clip.system_prompt == SUMMARY_PROMPT
    _, tok = load_backbone(str(tiny_dir))
    (seq,) = SequenceBuilder(tok, 1).build(clip)
    assert set(seq.supervised) == {0} and not any(decision_mask(seq, 1.0, np.random.default_rng(0)))
    learned = [t for t in seq.lm_targets if t != IGNORE]
    assert learned == SequenceBuilder(tok, 1).body_ids(PROGRESS[1])
    assert render(files["summary"]).splitlines()[2:] == [
        "frame 0 @ 0.0s [unlabeled]",
        f"frame 1 @ 0.5s [unlabeled]: <|im_start|>User: I want to make tea.{EOT}",
        "frame 2 .. 10 [unlabeled] (9 silent frames)",
        f"frame 11 @ 5.5s [unlabeled]: <|im_start|>System: Please summarize the progress.{EOT}",
        f"frame 12 @ 6.0s [requested]: <|im_start|>Assistant:{{lm: {PROGRESS[1]}{EOT}}}"]


def test_a_later_split_cut_again_restarts_as_upstream_writes_it(tiny_dir, files):
    """`{P} {progress1} Task knowledge: K` cut again by our builder restarts as `{P} {progress2} Task knowledge: K`."""
    later = _load(files["splits"])[2]
    assert later.system_prompt == f"{PROMPT_B} {PROGRESS[1]} Task knowledge: {KNOWLEDGE}"
    _, tok = load_backbone(str(tiny_dir))
    builder = SequenceBuilder(tok, 1)
    (whole,) = builder.build(later)
    parts = builder.build(later, max_seq_len=len(whole) - 30)  # cut once, after the reply at frame 16
    assert len(parts) == 2
    texts = [tok.decode(p.input_ids) for p in parts]
    assert texts[0].startswith(f"<|im_start|>System: {later.system_prompt}{EOT}<fake_token_around_image>")
    cut = parts[1].frames[0]
    progress = [e.progress for e in later.events if e.role == "assistant" and e.frame < cut][-1]
    assert progress not in (None, PROGRESS[1])
    assert texts[1].startswith(f"<|im_start|>System: {PROMPT_B} {progress} Task knowledge: {KNOWLEDGE}{EOT}"
                               "<fake_token_around_image>")
    # streamed, it starts from its own prompt and a summarize restart replaces the progress likewise
    vlm, _ = load_backbone(str(tiny_dir))
    stream = StreamingGenerator.untrained(vlm, tok, 1).stream(later)
    assert tok.decode(stream.initial_prompt) == f"<|im_start|>System: {later.system_prompt}{EOT}"
    stream.context.progress = "The water is boiling."  # what summarize() leaves for the restart
    assert tok.decode(stream.prompt()) == (f"<|im_start|>System: {PROMPT_B} The water is boiling. Task knowledge: "
                                           f"{KNOWLEDGE}{EOT}")


def test_times_upstream_accepts_are_warnings(files, tmp_path, capsys):
    """An answer timed before the question, a turn before the clip's start, a ProAssist turn timed before the
    previous one: read as upstream reads them, each a `warning:` naming file, line, clip and turn."""
    early = copy.deepcopy(FORK_CLIP)
    early["conversation"][3]["time"] = 2.0  # the answer before the user's 2.2 s
    before = copy.deepcopy(FORK_CLIP)
    before["conversation"][2]["time"] = 1.0  # the clip starts at 1.5 s
    proassist = l0_records()[1]
    proassist["conversation"][5]["time"] = 1.0  # "Great, first fill the kettle." before the user's 1.2 s
    for name, record in (("early.json", early), ("before.json", before)):
        (tmp_path / name).write_text(json.dumps(record))
    (tmp_path / "p.jsonl").write_text(json.dumps(proassist) + "\n")
    (tmp_path / "frames").symlink_to(files["dst"].parent / "frames")
    clips = {}
    for name in ("early.json", "before.json", "p.jsonl"):
        with pytest.warns(ClipWarning) as caught:
            clips[name] = load_clips(tmp_path / name)[0]
        clips[name].warned = [str(w.message) for w in caught]
    assert (f"warning: {tmp_path / 'early.json'}, clip toy/0, conversation[3].time: 2.0 s is earlier than the "
            "previous turn (2.2 s); read as 2.2 s after frame 4, as upstream moves it") in clips["early.json"].warned
    assert [(e.role, e.frame) for e in clips["early.json"].events[1:4]] == [("dst", 3), ("user", 3), ("assistant", 4)]
    assert any(m.startswith(f"warning: {tmp_path / 'before.json'}, clip toy/0, conversation[2].time: 1.0 s is before "
                            "the clip starts (frame 3 at 1.5 s)") for m in clips["before.json"].warned)
    assert any(m.startswith(f"warning: {tmp_path / 'p.jsonl'}, line 1, clip abc/0/talk_some_1, conversation[5].time: "
                            "1.0 s is earlier than the previous event") for m in clips["p.jsonl"].warned)
    capsys.readouterr()
    assert main(["validate", "--no-frames", str(tmp_path / "early.json"), str(tmp_path / "p.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert [m for m in clips["early.json"].warned + clips["p.jsonl"].warned if m not in printed] == []


def test_a_turn_with_no_frame_left_is_dropped_as_upstream_drops_it(tmp_path):
    short = copy.deepcopy(FORK_CLIP)
    short["end_frame_idx"] = 5  # frames 3 and 4: the first answer takes the last frame
    (tmp_path / "short.json").write_text(json.dumps(short))
    (clip,), problems = read_clips(tmp_path / "short.json")
    assert [(e.role, e.frame) for e in clip.events] == [("system", 2), ("dst", 3), ("user", 3), ("assistant", 4),
                                                        ("dst", 4)]
    assert [(p.field, p.reason.split(";")[0]) for p in problems] == [
        ("conversation[6]", "no frame left after the previous turn's (the clip's last)"),
        ("conversation[4].time", "5.3 s is after the clip ends (last frame 4 completes at 2.5 s)")]
    assert all(p.warning for p in problems) and "the 5 after it are dropped" in problems[0].reason


def _perfect_stream(clip: Clip) -> StreamedClip:
    """The reference itself as the model's output: a reply / DST update at exactly the frames the clip assigns."""
    replies = {e.frame: e.text for e in reference_events(clip, "assistant")}
    updates = {e.frame: e.text for e in reference_events(clip, "dst")}
    records = [FrameRecord(time=clip.frame_timestamp(f), frame=f, speaking_prob=float(f in replies),
                           dst_update_prob=float(f in updates), text=replies.get(f, ""), dst_text=updates.get(f, ""),
                           dst_state=state, cache_tokens=0, cache_bytes=0, positions=(0, 0),
                           beyond_max_positions=False, compressions=0, ms=0.0)
               for f, state in zip(clip.frame_indices, reference_states(clip), strict=True)]
    return StreamedClip(clip, records, 0)


def _exact(a: list[str], b: list[str]) -> np.ndarray:
    return np.array([[float(x == y) for y in b] for x in a]).reshape(len(a), len(b))


def test_reference_scored_against_itself_is_perfect(files):
    """Catches any misplacement between reference and prediction (pushed turns, turns after the end, DST updates
    before the first frame, summaries, merged splits)."""
    clips = whole_videos(_load(files["l0"])) + whole_videos(_load(files["splits"])) + _load(files["dst"])
    for clip in clips:
        m = score("none", (0.5, 0.5), [_perfect_stream(clip)], _exact).metrics
        assert (m["f1"], m["time_diff"], m["missed"], m["redundant"]) == (1.0, 0.0, 0, 0), clip.id
        if clip.task.steps:
            assert (m["dst_f1"], m["dst_state_accuracy"]) == (1.0, 1.0), clip.id


def test_streaming_uses_the_clips_prompt_and_starts_from_the_given_state(tiny_dir, files):
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, 1, speaking_threshold=2.0, dst_update_threshold=2.0)
    (dst_clip,) = _load(files["dst"])
    stream = gen.stream(dst_clip)
    first = next(stream)
    assert first.dst_state == {"S1": "in_progress", "S2": "not_started", "S3": "not_started"}
    text = tok.decode(stream.cache.token_ids.tolist())
    assert text.count("System:") == 1 and text.startswith(f"<|im_start|>System: {SYSTEM}\nGoal: Assemble")
    l0 = _load(files["l0"])[1]
    stream = gen.stream(l0)
    list(stream)
    text = tok.decode(stream.cache.token_ids.tolist())
    assert text.count("System:") == 2 and "Please summarize" not in text  # the prompt, then the knowledge turn
    assert text.startswith(f"<|im_start|>System: {PROMPT_A}{EOT}<fake_token_around_image>")
    stream = gen.stream(_load(files["splits"])[1])  # a split that ends with the reference's summary request
    list(stream)
    assert "Please summarize" not in tok.decode(stream.cache.token_ids.tolist()), "the reference's request is never fed"


def test_summarize_restarts_with_the_summary_and_the_knowledge(tiny_dir, files, monkeypatch):
    vlm, tok = load_backbone(str(tiny_dir))
    from prospect.stream.strategies import SummarizeAndDrop

    gen = StreamingGenerator.untrained(vlm, tok, 1, strategy=SummarizeAndDrop(budget=400), max_new_tokens=4,
                             max_summary_tokens=5, speaking_threshold=2.0, dst_update_threshold=2.0)
    limits, before_restart = record_generations_and_restarts(gen, monkeypatch)
    stream = gen.stream(_load(files["l0"])[1])
    records = list(stream)
    compressed = [r for r in records if r.summaries]
    assert compressed and limits == [5] * len(compressed)  # summaries have their own limit
    # what the cache held when it restarted: [request][the next frame][Assistant: summary<eot>], as trained
    b = gen.builder
    layout = b.turn_ids_of("system", "Please summarize the progress.") + b.frame_ids() + b.header_ids("assistant")
    for held in before_restart[1:]:  # the first restart is the stream's start
        at = max(i for i in range(len(held)) if held[i:i + len(layout)] == layout)
        assert held[-1] == b.end_of_turn_id and b.end_of_turn_id not in held[at + len(layout):-1]
    last = compressed[-1].summaries[0]
    text = tok.decode(stream.cache.token_ids.tolist())
    prompt = " ".join(t for t in (PROMPT_A, last, f"Task knowledge: {KNOWLEDGE}") if t)  # upstream's layout
    assert text.startswith(f"<|im_start|>System: {prompt}{EOT}<fake_token_around_image>")


def test_dst_state_restarts_as_training_cuts_for_it(tiny_dir, files):
    """After a dst_state restart the cache starts as a clip cut for that restart starts its later sequences: the
    prompt and the knowledge turn, and no progress, though upstream's assistant turns carry one (summarize's cut
    keeps it; this strategy generates none), then the last reply said before the cut (the stream's own; the
    reference's in training: upstream's dialogs have no DST update to prefer a reply at)."""
    vlm, tok = load_backbone(str(tiny_dir))
    from prospect.stream.strategies import DstStateRefresh

    clip = _load(files["l0"])[1]
    assert any(e.progress for e in clip.events if e.role == "assistant")
    gen = StreamingGenerator.untrained(vlm, tok, 1, strategy=DstStateRefresh(budget=300), max_new_tokens=4,
                                       speaking_threshold=0.0, dst_update_threshold=2.0)  # a reply every frame
    stream = gen.stream(clip)
    records = list(stream)
    b, restarted = gen.builder, f"<|im_start|>System: {PROMPT_A} Task knowledge: {KNOWLEDGE}{EOT}"
    last = max(i for i, r in enumerate(records) if r.compressions > (records[i - 1].compressions if i else 0))
    assert last > 0 and records[-1].compressions >= 2
    said = [r.text for r in records[:last] if r.text][-1]
    held = stream.cache.token_ids.tolist()
    assert tok.decode(held[:held.index(b.around_image_id)]) == f"{restarted}<|im_start|>Assistant: {said}{EOT}"
    parts = b.build(clip, 300, restart="dst_state")
    replies = [e for e in clip.events if e.role == "assistant" and e.kind != "summary"]
    pieces = [len(b.frame_ids()) + sum(len(b.turn_ids(e)) for e in clip.events_after(f) if e.kind != "prompt")
              for f in clip.frame_indices]  # a frame and every turn after it, the reference's replies too

    def kept(tokens: int, i: int) -> int:  # the restarted prompt and the last reply decided after an earlier frame
        before = [e for e in replies if e.frame < clip.frame_indices[i]]
        return prompt_tokens(gen, clip, knowledge=True) + (len(b.turn_ids(before[-1])) if before else 0)
    assert len(parts) == 1 + restarts(prompt_tokens(gen, clip), pieces, 300, kept) >= 3
    kept_replies = []
    for part in parts[1:]:
        text = tok.decode(part.input_ids[:part.input_ids.index(b.around_image_id)])
        before = [e.text for e in replies if e.frame < part.frames[0]]
        kept_replies += before[-1:]
        assert text == restarted + (f"<|im_start|>Assistant: {before[-1]}{EOT}" if before else "")
    assert len(set(kept_replies)) >= 2


def test_drop_middle_keeps_the_knowledge_turn_and_says_when_it_cannot(tiny_dir, files):
    vlm, tok = load_backbone(str(tiny_dir))
    from prospect.stream.strategies import DropMiddle

    gen = StreamingGenerator.untrained(vlm, tok, 1, strategy=DropMiddle(budget=280, keep_recent=16), max_new_tokens=4,
                             speaking_threshold=2.0, dst_update_threshold=2.0)
    clip = _load(files["l0"])[1]
    stream = gen.stream(clip)
    records = list(stream)
    # silent: a compression keeps the prompt, the first user turn, the knowledge turn and 16 recent tokens
    first_user = next(e for e in clip.events if e.role == "user")
    knowledge = next(e for e in clip.events if e.kind == "knowledge")
    kept = prompt_tokens(gen, clip) + len(gen.builder.turn_ids(first_user)) + len(gen.builder.turn_ids(knowledge)) + 16
    sizes = fed(gen, clip)
    due = restarts(prompt_tokens(gen, clip), sizes, 280, lambda tokens, i: kept,
                   [s + 2 * stream.turn_reserve for s in sizes])
    assert records[-1].compressions == due and due >= 2
    assert f"Task knowledge: {KNOWLEDGE}" in tok.decode(stream.cache.token_ids.tolist())
    gen.strategy = DropMiddle(budget=280, keep_recent=100)  # the prompt and knowledge alone are ~200 tokens
    stream = gen.stream(_load(files["l0"])[1])
    with pytest.raises(ValueError, match="the prefix it keeps .* holds"):
        next(stream)


def test_upstream_settings_on_upstreams_dialog(tiny_dir, files):
    """The upstream_* settings on a ProAssist dialog (the knowledge turn after the first user turn): drop_middle
    keeps the cache as it stood after the frame that fed the first user turn, knowledge included; drop_all keeps
    not even the prompt; summarize restarts from `{prompt} {summary} Task knowledge: ...`, as upstream's runner."""
    from prospect.stream.generator import StreamOptions
    from prospect.stream.strategies import UpstreamDropAll, UpstreamDropMiddle, UpstreamSummarize

    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, 1, max_new_tokens=4, speaking_threshold=2.0, dst_update_threshold=2.0)
    clip = _load(files["l0"])[1]
    plain = gen.stream(clip)
    next(plain), next(plain)  # frames 0 and 1: the user's goal and the knowledge came with frame 1
    first_user_step = plain.cache.token_ids.tolist()
    assert tok.decode(first_user_step).endswith(f"User: I want to make tea.{EOT}<|im_start|>System: Task knowledge: "
                                                f"{KNOWLEDGE}{EOT}")
    # after each frame but the first, once the cache holds 300 - 128 tokens: silent, each frame adds what it feeds;
    # drop_middle keeps the cache up to the first user turn's frame and 40 recent tokens (all of it before then)
    sizes, prompt = fed(gen, clip), prompt_tokens(gen, clip)
    first_user_end = prompt + sizes[0] + sizes[1]
    assert len(first_user_step) == first_user_end

    def by_hand(kept):  # 300 - 128 tokens or more: more than 171 (the next frame needs nothing more)
        return restarts(prompt + sizes[0], sizes[1:], 171, kept, [0] * (len(sizes) - 1))
    due = {"upstream_drop_all": by_hand(lambda tokens, i: 0),
           "upstream_drop_middle": by_hand(lambda tokens, i: first_user_end + min(40, tokens - first_user_end)
                                           if tokens >= first_user_end else 0)}
    runs = {}
    for strategy in (UpstreamDropMiddle(budget=300, keep_recent=40), UpstreamDropAll(budget=300),
                     UpstreamSummarize(budget=300, max_summary_tokens=5)):
        stream = gen.stream(clip, options=StreamOptions(strategy))
        runs[strategy.name] = (stream, list(stream))
        records = runs[strategy.name][1]
        # summarize's restarted prompt carries a generated summary: counted from the tokens each frame left
        expected = due[strategy.name] if strategy.name in due else compressions_due(
            300, [prompt] + [r.cache_tokens for r in records[:-1]], upstream_reserved=128)
        assert records[-1].compressions == expected and expected > 0, strategy.name
    kept = runs["upstream_drop_middle"][0].cache.token_ids.tolist()
    assert kept[:len(first_user_step)] == first_user_step
    assert "System:" not in tok.decode(runs["upstream_drop_all"][0].cache.token_ids.tolist())
    stream, records = runs["upstream_summarize"]
    summary = [r.summaries for r in records if r.summaries][-1][0]
    prompt = " ".join(t for t in (PROMPT_A, summary, f"Task knowledge: {KNOWLEDGE}") if t)
    assert tok.decode(stream.cache.token_ids.tolist()).startswith(f"<|im_start|>System: {prompt}{EOT}")


def test_positions_past_the_models_maximum_are_reported(tiny_dir, files):
    vlm, tok = load_backbone(str(tiny_dir))
    vlm.config.text_config.max_position_embeddings = 300  # a long stream, shortened
    gen = StreamingGenerator.untrained(vlm, tok, 1, speaking_threshold=2.0, dst_update_threshold=2.0)
    clip = _load(files["l0"])[0]
    with pytest.warns(UserWarning, match="past the model's max_position_embeddings"):
        records = list(gen.stream(clip))
    beyond = sum(r.beyond_max_positions for r in records)
    assert 0 < beyond < len(records)
    m = score("none", (0.5, 0.5), [StreamedClip(clip, records, 0)], _exact).metrics
    assert m["frames_beyond_max_positions"] == beyond


def test_dialogs_of_one_video_stream_batched_as_alone(tiny_dir, files):
    """The three dialogs of one video (knowledge, a summary request) and the DST clip (state given before the
    first frame), each speaking at every frame or writing a DST update at every frame, at batch 3 (the dialogs
    of one video in flight together) equal batch 1; every frame is encoded once though its video's features are
    forgotten when its last stream ends."""
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, 1, max_new_tokens=3)
    clips = _load(files["l0"]) + _load(files["dst"])
    encoded = Counter()

    def encode(clip, frame):
        encoded[clip.frames_path, frame] += 1
        return StreamingGenerator.encode(gen, clip, frame)
    gen.encode = encode
    runs = [("none", (0.0, 2.0)), ("drop_middle_1k", (2.0, 0.0))]
    alone = stream_runs(gen, clips, runs, batch_size=1)
    assert set(encoded.values()) == {1}
    encoded.clear()
    batched = stream_runs(gen, clips, runs, batch_size=3)
    assert set(encoded.values()) == {1} and len(encoded) == len({(c.frames_path, f) for c in clips
                                                                 for f in c.frame_indices})
    exact = ("frame", "text", "dst_text", "dst_state", "cache_tokens", "positions", "compressions")
    for run in runs:
        for a, b in zip(alone[run], batched[run], strict=True):
            assert [[getattr(r, k) for k in exact] for r in a.records] == [[getattr(r, k) for k in exact]
                                                                           for r in b.records], (run, a.clip.id)
            assert [r.speaking_prob for r in a.records] == pytest.approx([r.speaking_prob for r in b.records],
                                                                         abs=1e-4)
    assert all(r.text for s in alone[runs[0]] for r in s.records)
    assert all(r.dst_text for s in alone[runs[1]] if s.clip.task.steps for r in s.records)


def test_scored_strategies_on_upstreams_dialogs(tiny_dir, files):
    """attention_scored and redundancy_scored at 600 tokens on the three dialogs of one video (knowledge turn,
    summary request) and the DST clip, speaking or writing a DST update at every frame: within the budget, the
    knowledge turn kept, batched (3) as alone (1)."""
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, 1, max_new_tokens=3)
    clips = _load(files["l0"]) + _load(files["dst"])
    runs = [("attention_scored_600", (0.0, 2.0)), ("redundancy_scored_600", (2.0, 0.0))]
    alone, batched = stream_runs(gen, clips, runs, batch_size=1), stream_runs(gen, clips, runs, batch_size=3)
    exact = ("frame", "text", "dst_text", "dst_state", "cache_tokens", "positions", "compressions")
    for run in runs:
        assert max(s.records[-1].compressions for s in alone[run]) > 0, run
        for a, b in zip(alone[run], batched[run], strict=True):
            assert a.does_not_fit is None and max(r.cache_tokens for r in a.records) <= 600
            assert [[getattr(r, k) for k in exact] for r in a.records] == [[getattr(r, k) for k in exact]
                                                                           for r in b.records], (run, a.clip.id)
    stream = gen.stream(clips[1], options=StreamOptions(make_strategy(runs[0][0]), 0.0, 2.0))
    records = list(stream)
    assert records[-1].compressions > 0 and f"Task knowledge: {KNOWLEDGE}" in tok.decode(stream.cache.token_ids)


def _train_and_eval(tmp_path, data: list[str], run: str, model: str | None = None):
    """`python train.py +experiment=perframe data=clips ...` for a few steps, then eval.py on its checkpoint; on
    `model` (a conf/model name) where given, else the default model (SmolLM2's weights)."""
    from conftest import CONF
    from hydra import compose, initialize_config_dir

    from prospect.evaluate import run_eval
    from prospect.train import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "+experiment=perframe", "data=clips", *data, *([f"model={model}"] if model else []),
            f"paths.output_dir={tmp_path / run}",
            f"model.backbone.tiny_dir={tmp_path / 'tiny'}", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
            "test=false", "callbacks.streaming_validation.encoder=all-MiniLM-L6-v2",
            "+debug=default"])  # +debug=fast is for synthetic data
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["stream/none/f1"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        eval_cfg = compose("eval", overrides=[
            f"ckpt_path={metrics['checkpoint']}", "calibrate=false",
            "stream.settings=[none,summarize_1k,drop_middle_1k]", "stream.max_new_tokens=4",
            "stream.max_summary_tokens=8", f"paths.output_dir={tmp_path / 'eval'}", "max_plots=1",
            "encoder=all-MiniLM-L6-v2"])
    return run_eval(eval_cfg)


@pytest.mark.slow
def test_train_and_stream_proassist_files(files, tmp_path):
    prepared = files["l0"].parent
    report = _train_and_eval(tmp_path, [f"data.root={prepared}", f"data.files.train={files['splits'].name}",
                                        f"data.files.val={files['l0'].name}", f"data.files.test={files['l0'].name}"],
                             "proassist")
    assert report["none"]["clips"] == 3 and report["none"]["frames"] == 28 + 39 + 17  # whole videos
    assert all(math.isfinite(report[s]["f1"]) for s in report)


@pytest.mark.slow
def test_train_and_stream_the_forks_clip(files, tmp_path):
    """The fork's shape (two DST_UPDATE turns per step change) trains and streams; its step changes are scored as
    one unit each (4 reference DST units)."""
    name = files["fork"].name
    report = _train_and_eval(tmp_path, [f"data.root={files['fork'].parent}", f"data.files.train={name}",
                                        f"data.files.val={name}", f"data.files.test={name}"], "fork", "tiny")
    assert report["none"]["clips"] == 1 and report["none"]["frames"] == 25
    assert report["none"]["dst_matched"] + report["none"]["dst_missed"] == 4


@pytest.mark.slow
def test_train_and_stream_dst_files(files, tmp_path):
    name = files["dst"].name
    report = _train_and_eval(tmp_path, [f"data.root={files['dst'].parent}", f"data.files.train={name}",
                                        f"data.files.val={name}", f"data.files.test={name}"], "dst", "tiny")
    assert report["none"]["clips"] == 1 and report["none"]["frames"] == 26
    assert math.isfinite(report["none"]["dst_state_accuracy"])
