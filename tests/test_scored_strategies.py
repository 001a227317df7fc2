"""The two scored strategies (stream/strategies.py) against hand-worked caches: which slots attention_scored keeps
for given scores, which frames redundancy_scored drops for given features; the attention the store records
against transformers' eager attention weights; a stream compressed by attention scores against one full forward
pass with the dropped tokens masked out; a stream of repeated views keeps every view. Tiny model, fp32."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_kvstore import ids
from test_stream import chunks, compressions_by_hand, frame_features, full_forward

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.frames import write_arrow_frames
from prospect.model.backbone import load_backbone
from prospect.stream import StreamingGenerator
from prospect.stream.cache import CacheState, KVStore
from prospect.stream.generator import StreamOptions
from prospect.stream.strategies import AttentionScored, BudgetError, DropMiddle, RedundancyScored

TPF = 4


@pytest.fixture(scope="module")
def vlm(tiny_dir):
    return load_backbone(str(tiny_dir))[0].eval()


@pytest.fixture(scope="module")
def eager(tiny_dir):
    """The same weights with transformers' eager attention, which returns its weights."""
    return load_backbone(str(tiny_dir), attn_implementation="eager")[0].eval()


def eager_attention(vlm, tokens: list[int], queries: slice) -> torch.Tensor:
    """The attention weights of one full forward pass over `tokens` (transformers' eager attention), averaged over
    layers, heads and the query rows `queries`: [len(tokens)]."""
    with torch.no_grad():
        out = vlm.model.text_model(input_ids=torch.tensor([tokens]), output_attentions=True)
    return torch.stack(out.attentions)[:, 0, :, queries].mean((0, 1, 2))  # [layers, 1, heads, T, T] -> [T]


def test_the_store_records_the_attention_a_chunk_pays(vlm, eager):
    """Rows holding 6 and 9 tokens take chunks of 4 and 2 in one padded pass, both observed: each row's record is
    the mean attention of its chunk's tokens over its own tokens, as the eager attention of one forward pass over
    that row's tokens weighs them; the pass's hidden states are those of the same pass unobserved."""
    embed = vlm.get_input_embeddings()
    starts, chunk = {0: ids(6, 10), 1: ids(9, 11)}, {0: ids(4, 12), 1: ids(2, 13)}
    hidden = {}
    for observing in (set(), {0, 1}):
        store = KVStore(vlm, rows=2)
        for row, start in starts.items():
            store.forward({row: (embed(torch.tensor(start)), torch.arange(len(start)))})
        store.observing = set(observing)
        hidden[bool(observing)] = store.forward({
            row: (embed(torch.tensor(c)), torch.arange(len(starts[row]), len(starts[row]) + len(c)))
            for row, c in chunk.items()})
    assert store.observing == set() and sorted(store.observed) == [0, 1]
    for row in starts:
        n = len(starts[row])
        expected = eager_attention(eager, starts[row] + chunk[row], slice(n, None))
        torch.testing.assert_close(store.observed[row], expected, atol=1e-6, rtol=0)
        assert torch.equal(hidden[True][row], hidden[False][row])


def scored_cache(vlm, scores: list[float], prefix: list[int], observed_from: int) -> tuple[CacheState, list[int]]:
    """A cache of len(scores) tokens with the given prefix slots, observed from `observed_from` with these scores
    (as if its last frame had paid that attention); its token ids."""
    cache, tokens = CacheState(vlm), ids(len(scores), 20)
    cache.append(tokens)
    cache.prefix = torch.tensor(prefix)
    cache.attention, cache.observed_from = torch.tensor(scores), observed_from
    return cache, tokens


# 20 slots: the prefix 0-3 and 12 (a first user turn), the last frame and its turns from 16. Scores of the slots
# that are neither, highest first: 7 (0.9), 11 (0.7), 14 (0.6), 5 (0.5), 13 (0.4), 9 and 10 (0.3 each), ...
SCORES = [0.8, 0.8, 0.8, 0.8, 0.1, 0.5, 0.2, 0.9, 0.05, 0.3, 0.3, 0.7, 0.95, 0.4, 0.6, 0.1, 0.0, 0.0, 0.0, 0.0]
PREFIX = [0, 1, 2, 3, 12]


@pytest.mark.parametrize("keep, observed_from, kept", [
    # the window 16-19, then the 4 best earlier slots; the prefix's own score (slot 12) takes no place
    (8, 16, [0, 1, 2, 3, 5, 7, 11, 12, 14, 16, 17, 18, 19]),
    # 6 best: 9 and 10 tie at 0.3, the older one stays
    (10, 16, [0, 1, 2, 3, 5, 7, 9, 11, 12, 13, 14, 16, 17, 18, 19]),
    # a window longer than `keep` (from 10): its last 6 tokens, nothing scored
    (6, 10, [0, 1, 2, 3, 12, 14, 15, 16, 17, 18, 19]),
])
def test_attention_scored_keeps_the_prefix_the_window_and_the_best_scored(vlm, keep, observed_from, kept):
    cache, tokens = scored_cache(vlm, SCORES, PREFIX, observed_from)
    AttentionScored(budget=100, keep=keep).compress(SimpleNamespace(cache=cache))
    assert cache.positions.tolist() == kept and cache.token_ids.tolist() == [tokens[j] for j in kept]
    assert cache.prefix.tolist() == [kept.index(j) for j in PREFIX]
    assert cache.attention is None, "the slots moved: the scores are forgotten until the next frame"
    AttentionScored(budget=100, keep=4).compress(SimpleNamespace(cache=cache))  # nothing observed: the recent ones
    assert cache.positions.tolist() == [0, 1, 2, 3, 12, *kept[-4:]]


def frames_cache(vlm) -> tuple[CacheState, dict[int, torch.Tensor]]:
    """A prompt (slots 0-2, the prefix) and five frames of 3 tokens with a turn after F0 (6-7) and F3 (17):
    F0 3-5, F1 8-10, F2 11-13, F3 14-16, F4 18-20, fed features (flattened) F0 = [1, 0, 0, 0],
    F1 = [1, 0.1, 0, 0] (cosine 0.995 with F0), F2 = [0, 1, 0, 0], F3 = F0 (cosine 0 with F2), F4 = 2 F3.
    Returns the cache and {first slot: features} of each frame."""
    cache = CacheState(vlm)
    cache.append(ids(21, 30))
    cache.extend_prefix(0, 3)
    f0, f2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    fed = {3: f0, 8: torch.tensor([[1.0, 0.1], [0.0, 0.0]]), 11: f2, 14: f0, 18: 2 * f0}
    for start, features in fed.items():
        cache.mark_frame(start, start + 3, features)
    return cache, fed


@pytest.mark.parametrize("keep, threshold, kept", [
    # 6 tokens too many: F1 repeats F0 and F4 repeats F3 (F3 repeats F0 but F2 was kept in between)
    (12, 0.9, [0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17]),
    # 3 too many: F1 goes and the walk stops
    (15, 0.9, [0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]),
    # 10 too many: both repeats, then the oldest 4 tokens that are not the prefix (F0 and the turn's first token)
    (8, 0.9, [0, 1, 2, 7, 11, 12, 13, 14, 15, 16, 17]),
    # above 0.999 F1 is no repeat: F4 goes, then the oldest 3 (F0)
    (12, 0.999, [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]),
])
def test_redundancy_scored_drops_repeated_frames_oldest_first(vlm, keep, threshold, kept):
    cache, fed = frames_cache(vlm)
    RedundancyScored(budget=100, keep=keep, threshold=threshold).compress(SimpleNamespace(cache=cache))
    assert cache.positions.tolist() == kept and cache.prefix.tolist() == [0, 1, 2]
    # the frames follow their kept slots (a frame cut by the fallback keeps what is left of it)
    left = [(slots.tolist(), f) for slots, f in cache.frames()]
    expected = [([kept.index(j) for j in range(s, s + 3) if j in kept], f) for s, f in fed.items()
                if any(j in kept for j in range(s, s + 3))]
    assert [s for s, _ in left] == [s for s, _ in expected]
    assert all(f is g for (_, f), (_, g) in zip(left, expected, strict=True))
    cache.restart(ids(3, 31))
    assert cache.frames() == [] and cache.frame_features == {}


def test_a_budget_too_small_for_the_scored_strategies_names_them():
    for strategy in (AttentionScored(budget=300, keep=150), RedundancyScored(budget=300, keep=150)):
        with pytest.raises(BudgetError, match=f"{strategy.name} with a budget of 300 tokens: .* holds 140 tokens; "
                                              r"with the tokens it keeps beyond it \(150\) .* smaller keep"):
            strategy.check_room(140, 20)


def test_attention_scored_is_exact_after_dropping_scattered_tokens(tiny_dir, clip):
    """Frames 0-24 fed and observed, then attention_scored keeps 60 tokens beyond the prompt (scattered: not one
    run of recent tokens); frames 25-29 after it equal one full forward pass over every token at its original
    position, in which the new tokens do not see the dropped ones."""
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, TPF)
    prompt = gen.builder.prompt_ids(clip.task, clip.task.start_state())
    cache = CacheState(vlm)
    cache.restart(prompt)
    cache.extend_prefix(0, len(prompt))
    for f in range(25):
        cache.append(chunks(gen, clip)[f], frame_features(gen, clip, [f]), observe=True)
    before = cache.tokens
    AttentionScored(budget=1000, keep=60).compress(SimpleNamespace(cache=cache))
    kept = cache.positions.tolist()
    assert len(kept) == len(prompt) + 60 and kept != list(range(len(prompt))) + list(range(before - 60, before))
    new = torch.stack([cache.append(chunks(gen, clip)[f], frame_features(gen, clip, [f])) for f in range(25, 30)])
    tokens = list(prompt) + [t for c in chunks(gen, clip)[:30] for t in c]
    allowed = torch.tril(torch.ones(len(tokens), len(tokens), dtype=torch.bool))
    dropped = sorted(set(range(before)) - set(kept))
    allowed[before:, dropped] = False
    mask = torch.zeros(1, 1, len(tokens), len(tokens)).masked_fill(~allowed, torch.finfo(torch.float32).min)
    hidden = full_forward(gen, tokens, frame_features(gen, clip, range(30)), mask)
    ends = torch.tensor([len(c) for c in chunks(gen, clip)[25:30]]).cumsum(0) + before - 1
    torch.testing.assert_close(new, hidden[ends], atol=1e-4, rtol=1e-4)


def test_redundancy_scored_keeps_every_new_view_of_a_stream(tiny_dir, tmp_path):
    """A silent stream of 10 random views shown 3 frames each: each compression (before a frame that would pass
    300 tokens) drops repeated frames only, so every view's first frame is still cached at the end, at its
    position (drop_middle at the same budget loses frame 0); the cache stays within the budget."""
    rng, views = np.random.default_rng(1), 10
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(views)]
    write_arrow_frames(tmp_path / "frames" / "v.arrow", (images[f // 3] for f in range(3 * views)))
    clip = Clip(id="v/0", video=Video("frames/v.arrow", 2.0, 0, 3 * views), root=tmp_path,
                task=Task(steps=[Step("S1", "place the red circle")], initial_state={"S1": "not_started"}),
                events=[Event("user", 1.2, 1, "I want to build the comet board.")])
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, TPF, max_new_tokens=6, speaking_threshold=2.0,
                                       dst_update_threshold=2.0)
    prompt = len(gen.builder.prompt_ids(clip.task, clip.task.start_state()))
    starts = [prompt + sum(len(c) for c in chunks(gen, clip)[:f]) for f in range(0, 3 * views, 3)]
    frame = len(gen.builder.frame_ids())
    for strategy in (RedundancyScored(budget=300, keep=100), DropMiddle(budget=300, keep_recent=100)):
        stream = gen.stream(clip, options=StreamOptions(strategy))
        records = list(stream)
        assert max(r.cache_tokens for r in records) <= 300
        assert records[-1].compressions == compressions_by_hand(stream, clip, records) >= 2
        held = set(stream.cache.positions.tolist())
        first_views = [all(p in held for p in range(s, s + frame)) for s in starts]
        assert all(first_views) if strategy.name == "redundancy_scored" else not first_views[0]
