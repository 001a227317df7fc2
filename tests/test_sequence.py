"""The sequence builder against a hand-made clip: every position's targets pinned, training layout = streaming."""

import dataclasses
import math

import numpy as np
import pytest

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate
from prospect.data.sequence import IGNORE, LENGTH_CUT, SUMMARIZE_REQUEST, PromptContext, SequenceBuilder, decision_mask
from prospect.model.backbone import load_backbone


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_backbone(str(tiny_dir))[1]


def hand_clip() -> Clip:
    """Frames 10..12 at 2 fps; user goal after frame 10, DST + reply after frame 11, silence after 12."""
    return Clip(
        id="hand/0", video=Video("frames/hand.arrow", 2.0, 10, 13),
        task=Task(goal="build", steps=[Step("S1", "place the red circle")], initial_state={"S1": "not_started"}),
        events=[
            Event("user", 5.6, 10, "I want to build the comet board."),
            Event("dst", 6.1, 11, updates=[StepUpdate("S1", "start")]),
            Event("assistant", 6.1, 11, "First, place the red circle.", progress="S1 in progress."),
        ])


def parts_by_hand(b: SequenceBuilder, clip: Clip, limit: int, restart: str) -> int:
    """The sequences `clip` (hand_clip, longer) is cut into at `limit` tokens, from token lengths: the first holds
    the prompt, frames 10 and 11 with their turns and as many bare frames as fit; each later one the restarted
    prompt (the state reached; with summarize, the progress), our restarts' kept reply and as many bare frames as
    fit. Summarize keeps room
    for a part's closing (the request, a frame, the progress) from the frame after the progress."""
    frame, task = len(b.frame_ids()), clip.task
    first = (len(b.prompt_ids(task, {"S1": "not_started"})) + 2 * frame
             + sum(len(b.turn_ids(e)) for e in clip.events))  # the user turn after frame 10, DST and reply after 11
    progress = "S1 in progress." if restart != "dst_state" else None
    closing = (len(b.turn_ids_of("system", SUMMARIZE_REQUEST)) + frame + len(b.turn_ids_of("assistant", progress))
               if progress else 0)
    kept = len(b.turn_ids_of("assistant", "First, place the red circle.")) if restart != LENGTH_CUT else 0
    later = len(b.prompt_ids(task, {"S1": "in_progress"}, progress)) + kept
    in_first = 2 + (limit - closing - first) // frame
    per_part = (limit - closing - later) // frame
    return 1 + math.ceil((len(clip.frame_indices) - in_first) / per_part)


def test_every_position_of_a_hand_made_clip(tokenizer):
    b = SequenceBuilder(tokenizer, tokens_per_frame=2, system_prompt="Help.")
    (seq,) = b.build(hand_clip())
    print(b.render(seq))  # a rendered example, for the reader of the test log

    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    eot = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    frame = enc("<fake_token_around_image><global-img><image><image><fake_token_around_image>")
    # (tokens, loss kind of the tokens) in the order the layout promises
    pieces = [
        (enc("<|im_start|>System: Help.\nGoal: build\nSteps: S1 = place the red circle\nState: S1 not_started"
             "<end_of_utterance>"),
         None),
        (frame, None), (enc("<|im_start|>User:"), None), (enc(" I want to build the comet board.") + [eot], None),
        (frame, None), (enc("<|im_start|>DST:"), None), (enc(" S1->start") + [eot], "dst_gen"),
        (enc("<|im_start|>Assistant:"), None), (enc(" First, place the red circle.") + [eot], "lm"),
        (frame, None),
    ]
    ids = [t for p, _ in pieces for t in p]
    kinds = [k for p, k in pieces for _ in p]
    assert seq.input_ids == ids
    # the target at position t is the token at t + 1 when that token is learned by that loss
    assert seq.lm_targets == [ids[t + 1] if t + 1 < len(ids) and kinds[t + 1] == "lm" else IGNORE
                              for t in range(len(ids))]
    assert seq.dst_gen_targets == [ids[t + 1] if t + 1 < len(ids) and kinds[t + 1] == "dst_gen" else IGNORE
                                   for t in range(len(ids))]
    # decisions: after frame 10 once the user's turn is in; after frame 11 right after its frame; after 12
    ends = np.cumsum([len(p) for p, _ in pieces]) - 1
    assert seq.frames == [10, 11, 12]
    assert seq.decision_positions == [ends[3], ends[4], ends[9]]
    assert seq.speaking == [0, 1, 0] and seq.dst_update == [0, 1, 0]
    # the end-of-turn token is learned and pad differs from it
    assert eot in [t for t in seq.lm_targets if t != IGNORE]
    assert tokenizer.pad_token_id != eot
    # the decision position predicts the next turn's header, which is an input, never a target
    assert all(seq.lm_targets[p] == IGNORE and seq.dst_gen_targets[p] == IGNORE for p in seq.decision_positions)


def test_prompt_pieces_are_what_streaming_concatenates(tokenizer):
    """Streaming feeds prompt, frames, headers and bodies piece by piece; the training sequence is exactly that."""
    b = SequenceBuilder(tokenizer, tokens_per_frame=1)
    clip = hand_clip()
    (seq,) = b.build(clip)
    stream = b.prompt_ids(clip.task, {"S1": "not_started"})
    for f in clip.frame_indices:
        stream += b.frame_ids()
        for e in clip.events_after(f):
            stream += b.turn_ids(e)
    # within frame 11 the file order (dst, assistant) already matches the builder's output order
    assert seq.input_ids == stream


def test_long_clip_splits_with_state_and_progress(tokenizer):
    clip = hand_clip()
    clip.video.end_frame = 100
    full = SequenceBuilder(tokenizer, 2, system_prompt="Please help.").build(clip)
    assert len(full) == 1
    limit = len(full[0]) // 2
    b = SequenceBuilder(tokenizer, 2, system_prompt="Please help.", max_seq_len=limit)
    parts = b.build(clip)
    assert len(parts) == parts_by_hand(b, clip, limit, "summarize") and all(len(p) <= limit for p in parts)
    # every frame is decided once; the frame that carries a cut's summary opens the next part again; the frame the
    # user's turn follows (10, answered at 11) is no target, as upstream leaves it
    assert [f for p in parts for f, sup in zip(p.frames, p.supervised, strict=True) if sup] == list(range(11, 100))
    assert all(a.frames[-1] == b.frames[0] and not a.supervised[-1] for a, b in zip(parts, parts[1:], strict=False))
    second = tokenizer.decode(parts[1].input_ids)
    assert "System: Please help. S1 in progress.\nGoal: build\nSteps:" in second and "State: S1 in_progress" in second
    assert sum(sum(p.speaking) for p in parts) == 1
    # the first part closes as upstream trains summaries and as the summarize strategy's cache does before its
    # restart: the request, the next frame, then the summary as learned text
    b = SequenceBuilder(tokenizer, 2)
    summary = (b.turn_ids_of("system", "Please summarize the progress.") + b.frame_ids()
               + b.turn_ids_of("assistant", "S1 in progress."))
    first = parts[0]
    assert first.input_ids[-len(summary):] == summary
    body = b.body_ids("S1 in progress.")  # each body token is the LM target of the position before it
    n = len(summary)
    assert first.lm_targets[len(first) - len(body) - 1:len(first) - 1] == body and first.lm_targets[-1] == IGNORE
    assert set(first.lm_targets[len(first) - n:len(first) - len(body) - 1]) == {IGNORE}  # request, frame, header
    assert all(len(p) <= limit for p in parts)  # the summary fits in the limit too


def test_frame_too_long_for_max_seq_len(tokenizer):
    with pytest.raises(ValueError, match="clip hand/0: frame 10 and its turns need"):
        SequenceBuilder(tokenizer, 2, max_seq_len=30).build(hand_clip())


def test_negative_subsampling(tokenizer):
    clip = hand_clip()
    clip.video.end_frame = 2010
    (seq,) = SequenceBuilder(tokenizer, 1).build(clip)
    mask = decision_mask(seq, 0.1, np.random.default_rng(0))
    assert mask[1], "positives always count"
    assert 0.07 < (sum(mask) - 1) / (len(mask) - 1) < 0.13
    assert mask != decision_mask(seq, 0.1, np.random.default_rng(1)), "re-drawn with another seed (epoch)"
    per_turn = decision_mask(seq, 0.1, np.random.default_rng(0), "perturn")
    # the positive plus one negative in the silent gap after it; the user's frame before it is no target
    assert sum(per_turn) == 2 and per_turn[1] and not per_turn[0] and seq.supervised[0] == 0


def test_restart_share_cuts_a_share_of_the_clips(tokenizer):
    from prospect.data.datamodule import SequenceDataset
    from prospect.model.features import SampleFrames

    clips = [hand_clip() for _ in range(40)]
    for k, clip in enumerate(clips):
        clip.id, clip.video.end_frame = f"hand/{k}", 100
    b = SequenceBuilder(tokenizer, 2)
    limit = len(b.build(clips[0])[0]) * 3 // 4  # half of it still holds the prompt and the frames up to the reply
    whole = SequenceDataset(clips, b, SampleFrames(32), 1.0, "perframe", seed=0, restart_len=limit, restart_share=0.0)
    half = SequenceDataset(clips, b, SampleFrames(32), 1.0, "perframe", seed=0, restart_len=limit, restart_share=0.5)
    cut = {clips[c].id for c, seq in half.items if len(seq) <= limit}
    assert len(whole) == 40 and 10 < len(cut) < 30  # about half the clips, each cut into several sequences
    # each cut clip as one of the two restarts leaves the cache: summarize's parts end with a summary
    request = b.turn_ids_of("system", "Please summarize the progress.")
    summarized = {clips[c].id for c, seq in half.items if _contains(seq.input_ids, request)}
    assert 0 < len(summarized) < len(cut)
    # each cut clip at its own length (restart_len / 2 .. restart_len), so restarts come at different points
    first = {}
    for c, seq in half.items:
        first.setdefault(clips[c].id, seq)
    assert len({len(first[i]) for i in cut}) > 5 and min(len(first[i]) for i in cut) < limit * 3 // 4
    assert all(len(seq) <= limit for c, seq in half.items if clips[c].id in cut)
    # clips cut only for being longer than the builder's max_seq_len (as upstream's long files are) keep upstream's
    # layout: each part but the last ends with a summary
    long = SequenceDataset(clips, SequenceBuilder(tokenizer, 2, max_seq_len=limit), SampleFrames(32), 1.0, "perframe",
                           seed=0, restart_len=limit, restart_share=0.0)
    parts = {}
    for c, seq in long.items:
        parts.setdefault(c, []).append(seq)
    each = parts_by_hand(b, clips[0], limit, LENGTH_CUT)
    assert len(long) == 40 * each and all(len(p) == each and all(_contains(q.input_ids, request) for q in p[:-1])
                                          for p in parts.values())


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def test_dst_state_cut_restarts_from_the_state_alone(tokenizer):
    """A clip cut as the dst_state strategy restarts: a part just stops after a frame's turns, and the next starts
    from the prompt with the state reached and the knowledge, with no progress (that strategy generates none), then
    the kept reply."""
    clip = hand_clip()
    clip.video.end_frame = 100
    b = SequenceBuilder(tokenizer, 2, system_prompt="Please help.")
    limit = len(b.build(clip)[0]) // 2
    parts = b.build(clip, limit, restart="dst_state")
    assert len(parts) == parts_by_hand(b, clip, limit, "dst_state") and all(len(p) <= limit for p in parts)
    assert [f for p in parts for f in p.frames] == list(range(10, 100))  # every frame once: nothing is re-fed
    request = b.turn_ids_of("system", "Please summarize the progress.")
    assert not any(_contains(p.input_ids, request) for p in parts)
    restarted = ("<|im_start|>System: Please help.\nGoal: build\nSteps: S1 = place the red circle\n"
                 "State: S1 in_progress<end_of_utterance><|im_start|>Assistant: First, place the red circle."
                 "<end_of_utterance>")
    for p in parts[1:]:
        prompt = tokenizer.decode(p.input_ids[:p.input_ids.index(b.around_image_id)])
        assert prompt == restarted
    assert tokenizer.decode(parts[0].input_ids[-len(b.frame_ids()):]) == tokenizer.decode(b.frame_ids())
    with pytest.raises(ValueError, match="restart must be one of upstream_summarize, summarize, dst_state"):
        b.build(clip, limit, restart="drop_all")


def test_a_restart_keeps_the_reply_said_at_the_last_step_change(tokenizer):
    """Our restarts keep, after the prompt, the last reply said at a frame with a DST update (an instruction; a
    correction after it is not kept), or, in a clip with no reply at a DST update, the last reply; a clip cut only
    for its length keeps none (upstream's layout). The kept turn is input, never learned."""
    hand = hand_clip()
    hand.video.end_frame = 100
    correction = Event("assistant", 7.1, 13, "Careful, the circle should be red.")
    with_update = dataclasses.replace(hand, events=[*hand.events, correction])
    without = dataclasses.replace(hand, events=[e for e in with_update.events if e.role != "dst"])
    b = SequenceBuilder(tokenizer, 2, system_prompt="Please help.")
    limit = len(b.build(with_update)[0]) // 2
    for clip, kept in ((with_update, "First, place the red circle."), (without, correction.text)):
        for restart in ("summarize", "dst_state"):
            parts = b.build(clip, limit, restart)
            assert len(parts) > 2 and parts[1].frames[0] > 13, "cut after the correction"
            for p in parts[1:]:
                start = p.input_ids.index(b.around_image_id)
                state = {"S1": "in_progress" if clip is with_update else "not_started"}
                progress = "S1 in progress." if restart == "summarize" else None
                expected = b.prompt_ids(clip.task, state, progress) + b.turn_ids_of("assistant", kept)
                assert p.input_ids[:start] == expected, (restart, kept)
                assert set(p.lm_targets[:start]) == {IGNORE}
        for p in b.build(clip, limit)[1:]:
            assert p.input_ids.index(b.around_image_id) == len(b.prompt_ids(
                clip.task, {"S1": "in_progress" if clip is with_update else "not_started"}, "S1 in progress."))
    context = PromptContext({})
    for reply, update, kept in (("a", False, "a"), ("b", False, "b"), ("First", True, "First"),
                                ("Careful", False, "First"), ("Next", True, "Next")):
        context.said(reply, update)
        assert context.kept_reply == kept
