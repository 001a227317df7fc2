"""Batched streaming against streaming each video alone: videos of different lengths, each with its own strategy
budget use, thresholds and generated turns, give the same records (decisions, text, DST, compressions, cache)
and head probabilities within 1e-4, for every strategy. Tiny model, fp32, random frames."""

import dataclasses
import inspect
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_stream import compressions_by_hand

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.frames import write_arrow_frames
from prospect.eval.streaming import score, stream_runs
from prospect.model.backbone import load_backbone
from prospect.stream import StreamingGenerator
from prospect.stream.cache import AttentionError
from prospect.stream.generator import StreamOptions
from prospect.stream.scheduler import stream_batched
from prospect.stream.strategies import (
    AttentionScored,
    DropAll,
    DropMiddle,
    DstStateRefresh,
    NoCompression,
    RedundancyScored,
    SinkRecent,
    SummarizeAndDrop,
    UpstreamDropAll,
    UpstreamDropMiddle,
    UpstreamSummarize,
)

TPF = 4
CAPS = {"max_new_tokens": 6, "max_summary_tokens": 6}  # upstream's 100 and 512, shrunk for the tiny model
STRATEGIES = [NoCompression(), DropAll(budget=300), DropMiddle(budget=360, keep_recent=80),
              SinkRecent(budget=300, keep_recent=80), SummarizeAndDrop(budget=300), DstStateRefresh(budget=300),
              UpstreamDropAll(budget=350, **CAPS), UpstreamDropMiddle(budget=400, keep_recent=40, **CAPS),
              UpstreamSummarize(budget=300, **CAPS), AttentionScored(budget=360, keep=80),
              RedundancyScored(budget=360, keep=80)]


@pytest.fixture(scope="module")
def gen(tiny_dir):
    vlm, tok = load_backbone(str(tiny_dir))
    torch.manual_seed(0)
    return StreamingGenerator.untrained(vlm, tok, TPF, max_new_tokens=6, max_summary_tokens=6)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three videos of 40, 27 and 16 frames, with user turns at different frames."""
    root, rng = tmp_path_factory.mktemp("batch"), np.random.default_rng(0)  # seeded: `between` needs spread
    task = Task(steps=[Step("S1", "place the red circle"), Step("S2", "place the blue square")],
                initial_state={"S1": "not_started", "S2": "not_started"})
    out = []
    for k, (n, asks) in enumerate([(40, [1, 19]), (27, [3]), (16, [0, 5, 11])]):
        write_arrow_frames(root / "frames" / f"v{k}.arrow",
                           (Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)))
        out.append(Clip(id=f"v{k}/0", video=Video(f"frames/v{k}.arrow", 2.0, 0, n), root=root, task=task,
                        events=[Event("user", f / 2 + 0.2, f, f"What next at {f}?") for f in asks]))
    return out


def features(gen):
    """Each frame encoded once, shared by the streams of its clip."""
    memo = {}

    def get(clip, f):
        if (clip.id, f) not in memo:
            memo[clip.id, f] = gen.encode(clip, f)
        return memo[clip.id, f]
    return get


def between(records, key: str) -> float:
    """A threshold halfway between two of the probabilities next to their median, at least 1e-3 from both: a
    threshold within float rounding of a probability (as the median itself is) could decide either way."""
    p = sorted(getattr(r, key) for r in records)
    k = min((k for k in range(len(p) - 1) if p[k + 1] - p[k] > 2e-3), key=lambda k: abs(k - len(p) // 2))
    return (p[k] + p[k + 1]) / 2


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_batched_equals_alone(gen, clips, strategy):
    """Six streams at batch 4 (rows are reused as streams end): each clip speaking where its speaking head
    passes about its median probability (over a silent pass), or writing DST updates where that head does."""
    feats = features(gen)
    silent = [list(gen.stream(c, feats, StreamOptions(strategy, 2.0, 2.0))) for c in clips]
    jobs = [(clip, options) for clip, records in zip(clips, silent, strict=True)
            for options in (StreamOptions(strategy, between(records, "speaking_prob"), 2.0),
                            StreamOptions(strategy, 2.0, between(records, "dst_update_prob")))]
    streams = [gen.stream(clip, feats, options) for clip, options in jobs]
    alone = [list(stream) for stream in streams]
    batched: list[list] = [[] for _ in jobs]
    grad_mode = []  # as the caller sees it between records: the streams' no_grad stays inside the batch
    for i, _, record in stream_batched(gen, jobs, batch_size=4, features=feats):
        grad_mode.append(torch.is_grad_enabled())
        if record is not None:
            batched[i].append(record)
    assert all(grad_mode)
    for text, records in (("text", alone[0::2]), ("dst_text", alone[1::2])):  # every stream speaks; not always
        assert all(any(getattr(r, text) for r in rs) for rs in records)
        assert not all(getattr(r, text) for rs in records for r in rs)
    due = [compressions_by_hand(s, clip, records) for s, (clip, _), records in zip(streams, jobs, alone, strict=True)]
    assert [records[-1].compressions for records in alone] == due
    assert strategy.budget is None or min(due[:2]) > 0  # the longest clip's streams compress
    for i, (ours, ref) in enumerate(zip(batched, alone, strict=True)):
        assert len(ours) == len(ref) == len(jobs[i][0].frame_indices)
        for a, b in zip(ours, ref, strict=True):
            assert (a.speaking_prob, a.dst_update_prob) == pytest.approx((b.speaking_prob, b.dst_update_prob), abs=1e-4)
            exact = ("frame", "text", "dst_text", "dst_state", "cache_tokens", "positions", "compressions", "summaries")
            assert [getattr(a, k) for k in exact] == [getattr(b, k) for k in exact], (i, a.frame)


def test_an_error_in_one_stream_stops_the_batch(gen, clips, monkeypatch):
    """A budget too small for one stream's prefix: raised to the caller; the other streams, suspended mid-frame,
    are unwound."""
    too_small = DropMiddle(budget=150, keep_recent=80)
    jobs = [(clips[0], StreamOptions(NoCompression())), (clips[1], StreamOptions(too_small)),
            (clips[2], StreamOptions(NoCompression()))]
    streams, stream = [], gen.stream  # the streams stream_batched makes
    monkeypatch.setattr(gen, "stream", lambda *args: streams.append(stream(*args)) or streams[-1])
    with pytest.raises(ValueError, match="budget of 150 tokens"):
        list(stream_batched(gen, jobs, batch_size=3, features=features(gen)))
    assert [inspect.getgeneratorstate(s._records) for s in streams] == ["GEN_CLOSED"] * 3
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_model_loaded_with_another_attention_is_refused(gen, clips, tiny_dir, attention):
    """The attention is chosen once, when the model is loaded: the store's first pass on a model loaded with one of
    transformers' own raises, naming the one to load, alone and batched; nothing switches it."""
    vlm, tok = load_backbone(str(tiny_dir), attn_implementation=attention)
    other = StreamingGenerator(vlm, tok, TPF, gen.speaking_head, gen.dst_head, max_new_tokens=6)
    with pytest.raises(AttentionError, match="attn_implementation='prospect_sdpa'"):
        next(other.stream(clips[1], features(other)))
    with pytest.raises(AttentionError, match="attn_implementation='prospect_sdpa'"):
        list(stream_batched(other, [(clips[1], StreamOptions())] * 2, batch_size=2, features=features(other)))


def test_a_budget_too_small_ends_only_its_streams_in_an_evaluation(gen, clips):
    """eval.py's streams (stream_runs) at batch 4: drop_middle at 150 tokens cannot hold its prefix and a frame,
    nor can drop_all at 100 hold its prompt; their streams end saying so (naming strategy and budget) and score as
    not fitting, while the streams of `none` beside them run to the end, as they run alone."""
    runs = [("none", (2.0, 2.0)), ("drop_middle_150", (2.0, 2.0)), ("drop_all_100", (2.0, 2.0))]
    streamed = stream_runs(gen, clips, runs, batch_size=4)
    alone = stream_runs(gen, clips, runs[:1], batch_size=1)[runs[0]]
    assert [[r.cache_tokens for r in s.records] for s in streamed[runs[0]]] == [
        [r.cache_tokens for r in s.records] for s in alone]
    assert all(s.does_not_fit is None for s in streamed[runs[0]])
    for run, reason in ((runs[1], "drop_middle with a budget of 150 tokens: the prefix it keeps"),
                        (runs[2], "drop_all: .* tokens after compression plus .* exceed the budget of 100")):
        assert all(re.match(reason, s.does_not_fit) for s in streamed[run])
        assert all(s.records == [] for s in streamed[run])  # both fail before their first frame's record
        metrics = score(run[0], run[1], streamed[run], lambda a, b: np.zeros((len(a), len(b)))).metrics
        assert metrics == {"does_not_fit": f"v0/0: {streamed[run][0].does_not_fit}", "clips": 3}


def test_a_stream_in_bf16_autocast_beside_one_in_float32(gen, clips):
    """One stream under bf16 autocast (StreamOptions.autocast) and two in float32 share a batch: each gives what it
    gives alone (so the bf16 one's passes ran apart from the float32 rows, and its autocast never leaked into
    theirs), and bf16 did change the probabilities; the caller's own torch state is untouched."""
    feats = features(gen)
    options = [StreamOptions(DropMiddle(budget=360, keep_recent=80), 0.0, 2.0, autocast=torch.bfloat16),
               StreamOptions(DropMiddle(budget=360, keep_recent=80), 0.0, 2.0), StreamOptions(NoCompression())]
    jobs = list(zip(clips, options, strict=True))
    alone = [list(gen.stream(clip, feats, o)) for clip, o in jobs]
    batched: list[list] = [[] for _ in jobs]
    for i, _, record in stream_batched(gen, jobs, batch_size=3, features=feats):
        assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
        if record is not None:
            batched[i].append(record)
    for ours, ref in zip(batched, alone, strict=True):
        assert [(r.frame, r.text, r.cache_tokens, r.compressions) for r in ours] == [
            (r.frame, r.text, r.cache_tokens, r.compressions) for r in ref]
        assert [r.speaking_prob for r in ours] == pytest.approx([r.speaking_prob for r in ref], abs=1e-4)
    fp32 = list(gen.stream(clips[0], feats, dataclasses.replace(options[0], autocast=None)))
    assert max(abs(a.speaking_prob - b.speaking_prob) for a, b in zip(alone[0], fp32, strict=True)) > 1e-3


def test_a_forward_outside_its_stream_is_an_error(gen, clips):
    """A batched stream's cache feeds the model only inside its stream while stream_batched iterates it: asked from
    the caller's code, between records or after the batch, it raises instead of handing back its own input."""
    jobs = [(clip, StreamOptions()) for clip in clips[:2]]
    batch = stream_batched(gen, jobs, batch_size=2, features=features(gen))
    _, stream, _ = next(batch)
    with pytest.raises(RuntimeError, match="outside its stream"):
        stream.cache.append([50])
    list(batch)
    with pytest.raises(RuntimeError, match="outside its stream"):
        stream.summarize()
