"""The streaming generator against independent computations: one full forward pass, model.generate, a 4D
attention mask hiding dropped tokens, and the keep / rerotate equivalence. Tiny model, fp32, fresh random
inputs each run."""

import time

import pytest
import torch
from counts import compressions_due, restarts

from prospect.data.dst import apply_updates, parse_updates
from prospect.model.backbone import load_backbone
from prospect.model.vision import embed_with_frames, encode_frames, pixels
from prospect.stream import StreamingGenerator, make_strategy
from prospect.stream.cache import CacheState
from prospect.stream.decoder import Turn
from prospect.stream.generator import stream_dtype
from prospect.stream.strategies import (
    AttentionScored,
    DropAll,
    DropMiddle,
    DstStateRefresh,
    NoCompression,
    RedundancyScored,
    SinkRecent,
    SummarizeAndDrop,
    UpstreamStrategy,
    budget_tokens,
    sweep_settings,
)

TPF = 4


@pytest.fixture
def gen(tiny_dir):
    vlm, tok = load_backbone(str(tiny_dir))
    return StreamingGenerator.untrained(vlm, tok, TPF, max_new_tokens=6, max_summary_tokens=6)


@pytest.fixture(params=["tiny", "smollm2"])
def backbone_dir(request, tiny_dir):
    """The equivalence tests run on the tiny model and on SmolVLM-256M's pretrained language model (4 tokens per
    frame from its small vision tower), whose 49k vocabulary and 30 layers the tiny one does not have."""
    return tiny_dir if request.param == "tiny" else request.getfixturevalue("smollm2_dir")


@pytest.fixture
def any_gen(backbone_dir):
    vlm, tok = load_backbone(str(backbone_dir))
    return StreamingGenerator.untrained(vlm, tok, TPF, max_new_tokens=6, max_summary_tokens=6)


def frame_features(gen, clip, frames):
    return encode_frames(gen.vlm, pixels([clip.frame(f) for f in frames], gen.image_size), TPF)


def chunks(gen, clip):
    """The per-frame token chunks the generator feeds (frame tokens + user turns decided after it)."""
    return [gen.builder.frame_ids() + [t for e in clip.events_after(f) for t in gen.builder.turn_ids(e)]
            for f in clip.frame_indices]


def record_generations_and_restarts(gen, monkeypatch) -> tuple[list, list]:
    """Lists that fill as `gen` streams: the token limit of each generation, and the cache's token ids just before
    each restart."""
    limits, held, generate, restart = [], [], gen.decoder.generate, CacheState.restart
    monkeypatch.setattr(gen.decoder, "generate", lambda cache, hidden, max_new_tokens=None: limits.append(
        max_new_tokens) or generate(cache, hidden, max_new_tokens))
    monkeypatch.setattr(CacheState, "restart", lambda cache, ids: held.append(cache.token_ids.tolist())
                        or restart(cache, ids))
    return limits, held


def needed(stream, clip) -> list[int]:
    """Tokens each frame may take: its chunk and room for a DST update and a reply."""
    return [len(c) + 2 * stream.turn_reserve for c in chunks(stream.generator, clip)]


def compressions_by_hand(stream, clip, records) -> int:
    """The compressions of `stream` over `clip` (a clip of ours), from the tokens cached before each frame (the
    prompt, then what each record left) and the frame's (counts.compressions_due); summarize's first add a summary."""
    strategy = stream.strategy
    before = [len(stream.generator.builder.prompt_ids(clip.task, clip.task.start_state()))]
    before += [r.cache_tokens for r in records[:-1]]
    if strategy.budget is None:
        return 0
    if isinstance(strategy, UpstreamStrategy):
        return compressions_due(strategy.budget, before, upstream_reserved=strategy.reserved)
    extra = stream.summary_reserve if isinstance(strategy, SummarizeAndDrop) else 0
    return compressions_due(strategy.budget, before, [n + extra for n in needed(stream, clip)])


def full_forward(gen, ids, feats, mask=None):
    """Hidden states of one forward pass over the whole sequence at positions 0.. (optionally a 4D mask)."""
    input_ids = torch.tensor([ids])
    embeds = embed_with_frames(gen.vlm, input_ids, feats)
    with torch.no_grad():
        return gen.vlm.model.text_model(inputs_embeds=embeds, attention_mask=mask,
                                          position_ids=torch.arange(len(ids))[None]).last_hidden_state[0]


def test_none_equals_one_full_forward(any_gen, clip):
    gen = any_gen
    gen.speaking_threshold = gen.dst_update_threshold = 2.0  # silent: the cache holds exactly prompt + frames + inputs
    records = list(gen.stream(clip))
    prompt = gen.builder.prompt_ids(clip.task, {"S1": "not_started", "S2": "not_started"})
    ids, ends = list(prompt), []
    for c in chunks(gen, clip):
        ids += c
        ends.append(len(ids) - 1)
    hidden = full_forward(gen, ids, frame_features(gen, clip, clip.frame_indices))[ends]  # [F, H]
    with torch.no_grad():
        speaking = torch.sigmoid(gen.speaking_head(hidden))
        dst = torch.sigmoid(gen.dst_head(hidden))
    torch.testing.assert_close(torch.tensor([r.speaking_prob for r in records]), speaking, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor([r.dst_update_prob for r in records]), dst, atol=1e-4, rtol=0)
    # and the LM logits after every frame, through the cache state's own append()
    cache = CacheState(gen.vlm)
    cache.restart(prompt)
    fed = torch.stack([cache.append(c, frame_features(gen, clip, [f])) for f, c in zip(clip.frame_indices,
                                                                                      chunks(gen, clip), strict=True)])
    torch.testing.assert_close(gen.vlm.lm_head(fed), gen.vlm.lm_head(hidden), atol=1e-4, rtol=1e-4)
    assert records[-1].cache_tokens == len(ids) and records[-1].positions == (0, len(ids) - 1)


def test_text_only_greedy_equals_model_generate(any_gen):
    gen = any_gen
    prompt = torch.randint(10, len(gen.tokenizer), (23,)).tolist()
    cache = CacheState(gen.vlm)  # a fresh cache with the prompt, then greedy decoding (as model.generate would)
    ours = gen.decoder.generate(cache, cache.restart(prompt), max_new_tokens=30)
    ref = gen.vlm.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=30, eos_token_id=gen.builder.end_of_turn_id,
                             pad_token_id=gen.tokenizer.pad_token_id)[0, len(prompt):].tolist()
    assert ours == ref


def _feed_all(gen, cache, clip, frames):
    return [cache.append(chunks(gen, clip)[f], frame_features(gen, clip, [f])) for f in frames]


def test_keep_equals_full_forward_with_dropped_tokens_masked(any_gen, clip):
    gen = any_gen
    prompt = gen.builder.prompt_ids(clip.task, {"S1": "not_started", "S2": "not_started"})
    cache = CacheState(gen.vlm)
    cache.restart(prompt)
    _feed_all(gen, cache, clip, range(0, 30))
    before = cache.tokens
    cache.keep(torch.arange(len(prompt)), recent=70)
    new = torch.stack(_feed_all(gen, cache, clip, range(30, 36)))
    # reference: every token at its original position; the new rows do not see the dropped columns
    ids = list(prompt) + [t for c in chunks(gen, clip)[:36] for t in c]
    total = len(ids)
    allowed = torch.tril(torch.ones(total, total, dtype=torch.bool))
    allowed[before:, len(prompt):before - 70] = False
    mask = torch.zeros(1, 1, total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)
    hidden = full_forward(gen, ids, frame_features(gen, clip, range(36)), mask)
    ends = (torch.tensor([len(c) for c in chunks(gen, clip)[30:36]]).cumsum(0) + before - 1)
    torch.testing.assert_close(gen.vlm.lm_head(new), gen.vlm.lm_head(hidden[ends]), atol=1e-4, rtol=1e-4)
    assert cache.positions.max() == total - 1, "keep continues the original numbering"


def test_rerotate_equals_keep_when_dropping_a_prefix(backbone_dir, clip):
    results = []
    for rerotate in (False, True):
        vlm, tok = load_backbone(str(backbone_dir))
        g = StreamingGenerator.untrained(vlm, tok, TPF)
        cache = CacheState(g.vlm)
        cache.restart(g.builder.prompt_ids(clip.task, {"S1": "not_started", "S2": "not_started"}))
        _feed_all(g, cache, clip, range(0, 25))
        cache.keep(torch.arange(0), recent=90)
        if rerotate:
            cache.rerotate()
        results.append(torch.stack(_feed_all(g, cache, clip, range(25, 30))))
        if rerotate:
            assert cache.positions.tolist() == list(range(90 + sum(len(c) for c in chunks(g, clip)[25:30])))
    # float error grows with depth: 30 layers of SmolLM2 with hidden values in the hundreds need more than 4 layers
    scale = results[0].abs().max().item()
    torch.testing.assert_close(results[0], results[1], atol=max(1e-4, 1e-5 * scale), rtol=1e-4)


def test_rerotate_positions_stay_bounded_on_an_endless_stream(gen, clip):
    gen.strategy = SinkRecent(budget=200, sink=4, keep_recent=60)
    gen.speaking_threshold = gen.dst_update_threshold = 0.0  # generate every turn
    stream = gen.stream(clip)
    records = list(stream)
    due = compressions_by_hand(stream, clip, records)
    assert records[-1].compressions == due and due >= 3  # the stream outlasts the budget several times
    assert max(r.positions[1] for r in records) < 200 and max(r.cache_tokens for r in records) <= 200


@pytest.mark.parametrize("strategy", [
    DropAll(budget=300), DropMiddle(budget=360, keep_recent=80), SinkRecent(budget=300, keep_recent=80),
    SummarizeAndDrop(budget=300), DstStateRefresh(budget=300), AttentionScored(budget=360, keep=80),
    RedundancyScored(budget=360, keep=80)], ids=lambda s: s.name)
def test_every_strategy_stays_within_its_budget(gen, clip, strategy):
    gen.strategy = strategy
    gen.speaking_threshold = gen.dst_update_threshold = 0.0  # both heads fire on every frame: the most tokens
    stream = gen.stream(clip)
    records = list(stream)
    assert max(r.cache_tokens for r in records) <= strategy.budget
    due = compressions_by_hand(stream, clip, records)
    assert records[-1].compressions == due and due >= 2, "the budget was small enough to compress several times"
    # the tracked state moves by exactly the generated updates that parse and fit it; the others are counted
    state, states, malformed = clip.task.start_state(), [], 0
    for r in records:
        try:
            state = apply_updates(state, parse_updates(r.dst_text)) if r.dst_text else state
        except ValueError:
            malformed += 1
        states.append(state)
    assert [r.dst_state for r in records] == states and stream.malformed_dst == malformed


def test_dst_state_changes_only_through_parsed_updates(gen, clip, monkeypatch):
    outputs = iter(["S1->start", "S9->start", "complete S1", "S1->complete; S2->start", "S1->start"])
    monkeypatch.setattr(gen.decoder, "turn", lambda cache, role, max_new_tokens=None:  # the decoder, scripted
                        Turn(next(outputs) if role == "dst" else "", False))
    gen.dst_update_threshold, gen.speaking_threshold = 0.0, 2.0
    stream = gen.stream(clip)
    states = [r.dst_state for _, r in zip(range(5), stream, strict=False)]
    assert states == [{"S1": "in_progress", "S2": "not_started"}] * 3 + [
        {"S1": "completed", "S2": "in_progress"}] * 2
    assert stream.malformed_dst == 3  # unknown step, not the text form, start after completion


@pytest.mark.parametrize("strategy", [SummarizeAndDrop(budget=300), DstStateRefresh(budget=300)], ids=lambda s: s.name)
def test_our_restarts_keep_the_reply_said_at_the_last_step_change(gen, clip, monkeypatch, strategy):
    """Our summarize and dst_state restart from the prompt and the stream's last reply said with a DST update
    (a correction after it is not kept), as training cuts render it (SequenceBuilder.restart_ids)."""
    script = {2: ("S1->start", "First, place the red circle."), 5: ("", "Careful, it should be red."),
              30: ("S1->complete; S2->start", "Next, place the blue square."), 33: ("", "Careful, blue.")}
    frame = iter(range(1000))  # the decoder is scripted: at each frame a DST turn, then a reply; summaries apart
    at = {"frame": None, "replied": True}

    def turn(cache, role, max_new_tokens=None):
        if role == "dst":
            at["frame"], at["replied"] = next(frame), False
            return Turn(script.get(at["frame"], ("", ""))[0], False)
        reply, at["replied"] = "summary" if at["replied"] else script.get(at["frame"], ("", ""))[1], True
        return Turn(reply, False)

    monkeypatch.setattr(gen.decoder, "turn", turn)
    gen.strategy, gen.speaking_threshold, gen.dst_update_threshold = strategy, 0.0, 0.0
    restarted, restart = [], CacheState.restart
    monkeypatch.setattr(CacheState, "restart", lambda cache, ids: restarted.append(ids) or restart(cache, ids))
    records = list(gen.stream(clip))
    compressed_at = [i for i, r in enumerate(records) if r.compressions > (records[i - 1].compressions if i else 0)]
    assert len(restarted) == 1 + len(compressed_at)  # the stream's start, then each compression
    b, kept_replies = gen.builder, []
    for i, ids in zip(compressed_at, restarted[1:], strict=True):
        said = [(f, script[f]) for f in script if f < i]
        with_update = [reply for f, (dst, reply) in said if dst]
        kept = with_update[-1] if with_update else said[-1][1]
        progress = "summary" if strategy.name == "summarize" else None
        assert ids == b.prompt_ids(clip.task, records[i - 1].dst_state, progress) + b.turn_ids_of("assistant", kept)
        kept_replies.append(kept)
    assert set(kept_replies) == {"First, place the red circle.", "Next, place the blue square."}


def test_summarize_conditions_the_continuation_on_its_summary(tiny_dir, clip):
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, TPF, strategy=SummarizeAndDrop(budget=300), max_new_tokens=6,
                             max_summary_tokens=6, speaking_threshold=2.0, dst_update_threshold=2.0)
    records = list(gen.stream(clip))
    first = next(r for r in records if r.summaries)
    (summary,) = first.summaries
    # a fresh stream of the clip (its state: the start's, as at that frame) whose cache holds the prompt
    # carrying that summary, then the same frame
    fresh = gen.stream(clip)
    assert fresh.context.state == first.dst_state
    fresh.context.progress = summary
    fresh.cache.restart(fresh.prompt())
    hidden = fresh.cache.append(chunks(gen, clip)[first.frame], frame_features(gen, clip, [first.frame]))
    assert float(torch.sigmoid(gen.speaking_head(hidden))) == pytest.approx(first.speaking_prob, abs=1e-5)
    assert f"{gen.builder.system_prompt} {summary}\n" in tok.decode(fresh.prompt())


def test_untrained_heads_only_when_asked_for_by_name(tiny_dir):
    """A generator reads trained heads unless its constructor's name says they are not."""
    vlm, tok = load_backbone(str(tiny_dir))
    with pytest.raises(TypeError, match="speaking_head"):
        StreamingGenerator(vlm, tok, TPF)
    gen = StreamingGenerator.untrained(vlm, tok, TPF)
    hidden = vlm.config.text_config.hidden_size
    assert gen.speaking_head.layers[-1].in_features == gen.dst_head.layers[-1].in_features == hidden


def test_named_settings():
    assert isinstance(make_strategy("none"), NoCompression)
    s = make_strategy("drop_middle_2k")
    assert (s.name, s.budget, s.keep_recent, s.position_mode) == ("drop_middle", 2048, 1024, "keep")
    assert make_strategy("summarize_4k").budget == 4096 and make_strategy("dst_state_1k").position_mode == "rerotate"
    assert make_strategy("sink_recent_1k").position_mode == "rerotate"
    s = make_strategy("drop_middle_512")
    assert (s.budget, s.keep_recent) == (512, 256)
    s = make_strategy("attention_scored_3k")
    assert (s.name, s.budget, s.keep, s.position_mode, s.observes) == ("attention_scored", 3072, 1536, "keep", True)
    s = make_strategy("redundancy_scored_300")
    assert (s.name, s.budget, s.keep, s.position_mode) == ("redundancy_scored", 300, 150, "keep")
    for wrong in ("drop_some_1k", "drop_middle_0", "drop_middle_1.5k", "drop_middle_-512", "drop_middle_1m", "none_1k"):
        with pytest.raises(ValueError, match="unknown streaming setting"):
            make_strategy(wrong)
    assert [budget_tokens(b) for b in (256, "512", "1k", "4k")] == [256, 512, 1024, 4096]
    with pytest.raises(ValueError, match="positive number of tokens"):
        budget_tokens("0k")
    assert sweep_settings(["drop_middle", "attention_scored"], [256, "1k"]) == [
        "none", "drop_middle_256", "drop_middle_1k", "attention_scored_256", "attention_scored_1k"]
    with pytest.raises(ValueError, match="unknown streaming setting 'drop_most_256'"):
        sweep_settings(["drop_most"], [256])


def test_stream_dtypes_by_name():
    assert stream_dtype("bfloat16") is torch.bfloat16 and stream_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="float32, bfloat16, got 'fp16'"):
        stream_dtype("fp16")


def test_budget_too_small_for_what_must_be_kept(gen, clip):
    gen.strategy = DropMiddle(budget=150, keep_recent=80)  # the prompt alone is most of it
    records = gen.stream(clip)
    with pytest.raises(ValueError, match="budget of 150 tokens: the prefix it keeps .* holds"):
        next(records)  # said before the first frame, not at the first compression


def test_generated_turns_are_cached_as_training_renders_them(gen, clip):
    """Frame chunk, then the DST turn, then the reply: header, body, end-of-turn token (added when a turn is cut
    at max_new_tokens), exactly the layout of the sequence builder."""
    gen.speaking_threshold = gen.dst_update_threshold = 0.0
    stream = gen.stream(clip)
    first = next(stream)
    b, eot = gen.builder, gen.builder.end_of_turn_id
    ids = stream.cache.token_ids.tolist()
    prompt, chunk = b.prompt_ids(clip.task, first.dst_state), chunks(gen, clip)[0]
    assert ids[:len(prompt) + len(chunk)] == prompt + chunk
    rest = ids[len(prompt) + len(chunk):]
    dst_header, reply_header = b.header_ids("dst"), b.header_ids("assistant")
    assert rest[:len(dst_header)] == dst_header and rest[-1] == eot
    end_of_dst = rest.index(eot)
    assert rest[end_of_dst + 1:end_of_dst + 1 + len(reply_header)] == reply_header
    assert len(stream.cache.token_ids) == first.cache_tokens == stream.cache.store.lengths[stream.cache.row]


def test_drop_middle_keeps_the_prompt_and_the_first_user_turn(gen, clip):
    gen.strategy = DropMiddle(budget=360, keep_recent=80)
    gen.speaking_threshold = gen.dst_update_threshold = 2.0
    stream = gen.stream(clip)
    records = list(stream)
    prompt = gen.builder.prompt_ids(clip.task, records[-1].dst_state)
    user = gen.builder.turn_ids(clip.events[0])  # decided after frame 1, among that frame's tokens
    # silent: each frame adds its chunk; a compression keeps the prompt, the first user turn and 80 recent tokens
    sizes = [len(c) for c in chunks(gen, clip)]
    kept = len(prompt) + len(user) + 80
    due = restarts(len(prompt), sizes, 360, lambda tokens, i: kept, needed(stream, clip))
    assert records[-1].compressions == due and due >= 2
    ids = stream.cache.token_ids.tolist()
    assert ids[:len(prompt) + len(user)] == prompt + user
    first_user_position = len(prompt) + 2 * len(gen.builder.frame_ids())  # frames 0 and 1 precede it
    assert stream.cache.positions[len(prompt)] == first_user_position, "keep: kept tokens stay at their positions"


def test_a_records_ms_is_the_wall_time_of_its_frame(gen, clip):
    """`ms` times the frame it records (its compression, forward pass and turns), within the time around it."""
    gen.strategy = DropMiddle(budget=360, keep_recent=80)
    stream = gen.stream(clip)
    for _ in range(len(clip.frame_indices)):
        start = time.perf_counter()
        record = next(stream)
        assert 0 < record.ms <= (time.perf_counter() - start) * 1e3
