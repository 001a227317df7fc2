"""Teacher-forced replies after a restart (prospect.eval.restarts) against greedy decoding with a full forward pass
per token, on the tiny model."""

import dataclasses
import warnings

import pytest
import torch
from upstream import write_upstream

from prospect.data import load_clips
from prospect.data.clip import Event
from prospect.data.errors import ClipWarning
from prospect.eval.restarts import _said, replies_after_restarts
from prospect.eval.streaming import FeatureMemo
from prospect.model.backbone import load_backbone
from prospect.model.vision import embed_with_frames
from prospect.stream import StreamingGenerator

REPLY = "Next, place the blue square."


@pytest.fixture
def gen(tiny_dir):
    vlm, tok = load_backbone(str(tiny_dir))
    return StreamingGenerator.untrained(vlm, tok, 4)


def _with_replies(clip, frames=(6, 24, 44)):
    replies = [Event("assistant", f / clip.fps, f, REPLY, progress=f"{k + 1} done.") for k, f in enumerate(frames)]
    return dataclasses.replace(clip, events=sorted(clip.events + replies, key=lambda e: e.frame))


def _occurrences(ids: list[int], body: list[int]) -> list[int]:
    return [i for i in range(len(ids) - len(body) + 1) if ids[i:i + len(body)] == body]


def _greedy(gen, ids: list[int], frames: list[torch.Tensor], n: int) -> list[int]:
    """n tokens after `ids`, each the argmax of a full forward pass of the SmolVLM over everything before it."""
    ids = list(ids)
    for _ in range(n):
        shown = frames[:ids.count(gen.builder.around_image_id) // 2]  # the frames `ids` holds, in order
        embeds = embed_with_frames(gen.vlm, torch.tensor([ids]), torch.cat(shown) if shown else None)
        with torch.no_grad():
            ids.append(int(gen.vlm(inputs_embeds=embeds).logits[0, -1].argmax()))
    return ids[-n:]


def test_a_reply_is_said_when_greedy_decoding_gives_every_token_of_it(gen, clip):
    clip = _with_replies(clip)
    seq = gen.builder.build(clip)[0]
    frames = [gen.encode(clip, f) for f in seq.frames]
    body = gen.builder.body_ids(REPLY)
    at = _occurrences(seq.input_ids, body)
    assert len(at) == 3
    # the second reply becomes the model's own greedy continuation; the untrained model says no other
    said = _greedy(gen, seq.input_ids[:at[1]], frames, len(body))
    assert gen.vlm.config.image_token_id not in said and said != body
    seq.input_ids[at[1]:at[1] + len(body)] = said
    seq.lm_targets[at[1] - 1:at[1] - 1 + len(body)] = said
    memo = FeatureMemo(gen)
    assert _said(gen, clip, seq, memo) == ([False, True, False], None)
    # one token off, and it is not said
    seq.lm_targets[at[1] + 1] = (said[2] + 1) % len(gen.tokenizer)
    assert _said(gen, clip, seq, memo) == ([False, False, False], None)


def test_a_summary_is_written_when_greedy_decoding_gives_every_token_of_it(gen, clip):
    clip = _with_replies(clip, frames=(6, 12, 24, 30, 44, 50))
    b = gen.builder
    seq = b.build(clip, 280, "summarize")[0]
    frames = [gen.encode(clip, f) for f in seq.frames]
    request = b.turn_ids_of("system", "Please summarize the progress.")
    header = len(request) + len(b.frame_ids()) + len(b.header_ids("assistant"))
    start = _occurrences(seq.input_ids, request)[-1] + header  # the summary's first token
    assert b.tokenizer.decode(seq.input_ids[start:]).startswith(" 1 done.")  # the progress of its one reply
    # the summary becomes the model's own greedy continuation: written, and the replies are still counted apart
    said = _greedy(gen, seq.input_ids[:start], frames, len(seq) - start)
    seq.input_ids[start:] = said
    seq.lm_targets[start - 1:len(seq) - 1] = said
    memo = FeatureMemo(gen)
    replies, written = _said(gen, clip, seq, memo)
    assert written is True and len(replies) == 1
    seq.lm_targets[start] = (said[1] + 1) % len(gen.tokenizer)  # one token off
    assert _said(gen, clip, seq, memo) == (replies, False)


def test_each_cut_counts_its_first_reply_and_never_the_closing_summary(gen, clip):
    clip = _with_replies(clip, frames=(6, 12, 24, 30, 44, 50))
    b, body = gen.builder, gen.builder.body_ids(REPLY)
    result = replies_after_restarts(gen, [clip], 280)
    assert result["whole"]["replies"] == 6
    for restart in ("summarize", "dst_state"):
        parts = b.build(clip, 280, restart)
        assert len(parts) >= 3
        request = b.turn_ids_of("system", "Please summarize the progress.")
        # a reply after the part's first frame (the kept one before it is input) and before its closing summary
        with_reply = [p for p in parts[1:] if _occurrences(
            p.input_ids[p.input_ids.index(b.around_image_id):(_occurrences(p.input_ids, request) or [len(p)])[-1]],
            body)]
        assert result[restart]["replies"] == len(with_reply), restart
        if restart == "summarize":  # parts end with a summary; some have no reply before it (it must not count)
            assert all(_occurrences(p.input_ids, request) for p in parts[:-1]) and 0 < len(with_reply) < len(parts) - 1
            assert result["summaries"]["summaries"] == len(parts) - 1  # each closing summary, written or not


def test_upstream_shaped_files_count_every_reference_reply_and_never_their_summaries(gen, tmp_path):
    """Several dialogs per video, knowledge turns, later splits that end with the reference's summary, DST
    clips with updates before the first frame and the fork's two transitions at one time: every assistant turn
    of the reference is one reply of the whole clips (its summaries none), and each file can be cut, each
    summary a summarize cut closes with asked."""
    files = write_upstream(tmp_path)
    for key in ("l0", "splits", "dst", "fork"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ClipWarning)
            clips = load_clips(files[key])
        replies = sum(e.role == "assistant" and e.kind != "summary" for c in clips for e in c.events)
        result = replies_after_restarts(gen, clips, 400)
        assert result["whole"]["replies"] == replies > 0, key
        assert result["summarize"]["replies"] > 0 and result["dst_state"]["replies"] > 0, key
        request = gen.builder.turn_ids_of("system", "Please summarize the progress.")
        cut = [p for c in clips for p in gen.builder.build(c, 400, "summarize")]
        closing = [p for p in cut if _occurrences(p.input_ids, request)]
        assert result["summaries"]["summaries"] == len(closing), key  # none where the file has no progress to learn
