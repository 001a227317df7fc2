"""The upstream_* settings against upstream's code (mmassist/eval/runners/stream_inference.py, manage_kv_cache)
worked by hand: which tokens each keeps, where the tokens after it sit, when it compresses, what summarize feeds.
The reference is one forward pass over every token fed, at the positions upstream gives them, each token seeing
only what the cache held when it was fed. Tiny model, fp32, random frames."""

import dataclasses
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_stream import chunks, frame_features, record_generations_and_restarts

from prospect.data.clip import Event
from prospect.evaluate import stream_settings
from prospect.model.backbone import load_backbone
from prospect.model.vision import embed_with_frames
from prospect.stream import StreamingGenerator, make_strategy
from prospect.stream.generator import StreamOptions
from prospect.stream.strategies import UpstreamDropAll, UpstreamDropMiddle, UpstreamSummarize

TPF = 4
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def gen(tiny_dir):
    vlm, tok = load_backbone(str(tiny_dir))
    return StreamingGenerator.untrained(vlm, tok, TPF, max_new_tokens=6, max_summary_tokens=6, speaking_threshold=2.0,
                              dst_update_threshold=2.0)  # silent: the cache holds the prompt, frames and inputs


def by_hand(gen, clip, threshold: int, keep):
    """Upstream's loop over the silent stream: after each frame, once the cache holds `threshold` tokens, the
    cache becomes `keep(cache, first_user_end)` (indices of the tokens fed) and new tokens are numbered from its
    length. Every token fed [T], its position [T], what it sees [T, T]; each frame's last token; the cache at
    the end; the compressions after each frame."""
    prompt = gen.builder.prompt_ids(clip.task, clip.task.start_state())
    ids, positions, cache = list(prompt), list(range(len(prompt))), list(range(len(prompt)))
    sees = [list(range(i + 1)) for i in range(len(prompt))]
    first_user_end, ends, compressions, count = None, [], [], 0
    for f, chunk in zip(clip.frame_indices, chunks(gen, clip), strict=True):
        if f > 0 and len(cache) >= threshold:
            cache, count = keep(cache, first_user_end), count + 1
        for t, p in zip(chunk, range(len(cache), len(cache) + len(chunk)), strict=True):  # from the cache length
            ids.append(t)
            positions.append(p)
            cache.append(len(ids) - 1)
            sees.append(list(cache))
        ends.append(len(ids) - 1)
        compressions.append(count)
        if first_user_end is None and any(e.role == "user" for e in clip.events_after(f)):
            first_user_end = len(cache)
    allowed = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    for i, seen in enumerate(sees):
        allowed[i, seen] = True
    return ids, positions, allowed, ends, cache, compressions


def reference_speaking(gen, clip, ids, positions, allowed, ends):
    """Speaking probabilities at each frame's last token from one forward pass at the given positions."""
    mask = torch.zeros(1, 1, *allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    embeds = embed_with_frames(gen.vlm, torch.tensor([ids]), frame_features(gen, clip, clip.frame_indices))
    with torch.no_grad():
        hidden = gen.vlm.model.text_model(inputs_embeds=embeds, attention_mask=mask,
                                            position_ids=torch.tensor([positions])).last_hidden_state[0]
        return torch.sigmoid(gen.speaking_head(hidden[ends]))


def check_against_hand(gen, clip, strategy, keep):
    stream = gen.stream(clip, options=StreamOptions(strategy))
    records = list(stream)
    ids, positions, allowed, ends, cache, compressions = by_hand(gen, clip, strategy.budget - 128, keep)
    assert [r.compressions for r in records] == compressions
    assert stream.cache.token_ids.tolist() == [ids[i] for i in cache]
    assert stream.cache.positions.tolist() == [positions[i] for i in cache]
    torch.testing.assert_close(torch.tensor([r.speaking_prob for r in records]),
                               reference_speaking(gen, clip, ids, positions, allowed, ends), atol=1e-4, rtol=0)
    return positions, allowed, compressions


def test_upstream_drop_middle_numbers_new_tokens_from_the_cache_length(gen, clip):
    """Upstream's drop_middle after each frame once the cache holds 400 - 128 tokens: the cache as it stood after
    the frame of the first user turn (prompt, frames 0 and 1, the turn) and the last 40 tokens; new tokens from
    the cache length, below the kept recent keys, until they take their positions."""
    positions, allowed, compressions = check_against_hand(
        gen, clip, UpstreamDropMiddle(budget=400, keep_recent=40),
        lambda cache, first: cache[:first] + cache[max(len(cache) - 40, first):])
    assert compressions[-1] >= 4
    prompt, chunk = len(gen.builder.prompt_ids(clip.task, clip.task.start_state())), chunks(gen, clip)
    first_user_end = prompt + len(chunk[0]) + len(chunk[1])
    at = compressions.index(1)  # the first frame fed after the first drop
    fed = prompt + sum(len(c) for c in chunk[:at])  # tokens fed before it, all of them cached until the drop
    assert fed - len(chunk[at - 1]) < 400 - 128 <= fed
    assert positions[fed] == first_user_end + 40 < fed - 40  # numbered from the cache length, below the kept keys
    # soon a token sees two keys at one position: upstream's bug, reproduced
    positions = torch.tensor(positions)
    collides = [len(set(positions[row].tolist())) < int(row.sum()) for row in allowed]
    assert not any(collides[:fed]) and any(collides[fed:])


def test_upstream_drop_middle_before_the_first_user_turn_drops_all(gen, clip):
    late = dataclasses.replace(clip, events=[Event("user", 29.2, 58, "Am I done?")])  # the first user turn
    _, _, compressions = check_against_hand(gen, late, UpstreamDropMiddle(budget=350, keep_recent=40),
                                            lambda cache, first: [])
    assert compressions[-1] >= 2


def test_upstream_drop_all_keeps_nothing_and_the_next_frame_starts_the_cache(gen, clip):
    """Upstream's drop_all after each frame once the cache holds 350 - 128 tokens: not even the prompt stays; the
    next frame (with its inputs) starts the cache at position 0, and nothing else is fed (upstream's released
    models have no frame separator: its last_msg is None)."""
    _, _, compressions = check_against_hand(gen, clip, UpstreamDropAll(budget=350), lambda cache, first: [])
    assert compressions[-1] >= 2
    stream = gen.stream(clip, options=StreamOptions(UpstreamDropAll(budget=350)))
    first = next(r for r in stream if r.compressions)
    assert stream.cache.token_ids.tolist() == chunks(gen, clip)[first.frame]
    assert stream.cache.positions.tolist() == list(range(len(chunks(gen, clip)[first.frame])))


@pytest.mark.parametrize("speaks", [True, False], ids=["speaking_head_passes", "speaking_head_vetoes"])
def test_upstream_summarize_feeds_the_request_with_the_frame_just_fed(gen, clip, monkeypatch, speaks):
    """Upstream's summarize_and_drop after the frame that takes the cache to 300 - 128 tokens: the request and
    that same frame again; the speaking head there (at 0.5) decides whether a summary of up to 512 tokens
    follows; then the prompt carrying it, the next frame after it."""
    strategy = UpstreamSummarize(budget=300)
    logit = 3.0 if speaks else -3.0  # the per-frame threshold (2.0) keeps the frames silent either way
    gen.speaking_head = lambda hidden: torch.full(hidden.shape[:-1], logit)
    limits, held = record_generations_and_restarts(gen, monkeypatch)
    encoded = []

    def features(c, f):
        encoded.append(f)
        return gen.encode(c, f)
    stream = gen.stream(clip, features, StreamOptions(strategy))
    first = next(r for r in stream if r.compressions)
    f, b = first.frame, gen.builder
    before = b.prompt_ids(clip.task, clip.task.start_state()) + [t for c in chunks(gen, clip)[:f] for t in c]
    assert len(before) >= 172 and len(before) - len(chunks(gen, clip)[f - 1]) < 172  # the frame that reached it
    assert encoded[-3:] == [f - 1, f - 1, f]  # the frame just fed, again; then the next one
    request = b.turn_ids_of("system", "Please summarize the progress.") + b.frame_ids()
    (cached,) = held[1:]  # the first restart is the stream's start
    assert cached[:len(before) + len(request)] == before + request
    (summary,) = first.summaries
    if speaks:
        assert limits == [512]  # upstream's cap, not the generator's 6
        rest, header, eot = cached[len(before) + len(request):], b.header_ids("assistant"), b.end_of_turn_id
        assert rest[:len(header)] == header and rest[-1] == eot and eot not in rest[len(header):-1]
        assert len(rest) <= len(header) + 512 + 1
    else:
        assert limits == [] and summary == "" and len(cached) == len(before) + len(request)
    assert stream.context.progress == summary
    prompt = b.prompt_ids(clip.task, clip.task.start_state(), summary or None)
    assert stream.cache.token_ids.tolist() == prompt + chunks(gen, clip)[f]
    assert stream.cache.positions.tolist() == list(range(len(prompt) + len(chunks(gen, clip)[f])))


def test_upstream_settings_carry_upstreams_numbers(gen, clip):
    for name in ("upstream_drop_all_4k", "upstream_drop_middle_4k", "upstream_summarize_4k"):
        s = make_strategy(name)
        assert (s.budget, s.reserved, s.position_mode, s.max_new_tokens, s.max_summary_tokens) == (
            4096, 128, "length", 100, 512)
    assert make_strategy("upstream_drop_middle_1k").keep_recent == 512  # not half the budget, as ours
    assert make_strategy("upstream_summarize_2k").gate == 0.5
    assert make_strategy("drop_middle_1k").max_new_tokens is None  # ours: the generator's caps
    # a stream of an upstream setting generates turns of up to 100 tokens, whatever the generator's cap
    gen.speaking_threshold = gen.dst_update_threshold = 0.0
    limits, turn = [], gen.decoder.turn
    gen.decoder.turn = lambda cache, role, max_new_tokens=None: limits.append(max_new_tokens) or turn(
        cache, role, max_new_tokens)
    stream = gen.stream(clip, options=StreamOptions(make_strategy("upstream_drop_all_1k")))
    next(stream)
    assert limits == [100, 100] and stream.max_summary_tokens == 512


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONF / "stream").glob("*.yaml")))
def test_every_stream_choice_names_known_settings(choice, monkeypatch):
    monkeypatch.setenv("PROSPECT_ROOT", str(CONF.parent))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=[f"stream={choice}"])
    strategies = [make_strategy(s) for s in stream_settings(cfg.stream)]
    assert choice != "upstream_4k" or {s.name for s in strategies} >= {
        "upstream_drop_all", "upstream_drop_middle", "upstream_summarize"}
    # the trade-off sweep: none and the strategies that bound the cache, the two scored ones among them, at 4 budgets
    assert choice != "tradeoff" or (len(strategies) == 1 + 7 * 4 and {s.budget for s in strategies} == {
        None, 256, 512, 1024, 2048} and {"attention_scored", "redundancy_scored"} <= {s.name for s in strategies})
