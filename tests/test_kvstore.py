"""The KV store directly (stream/cache.py): keeping a row's tokens leaves exactly the kept keys and values, in
order, and no other row's; growing the capacity keeps what is stored; rows appended in one pass hold what each
holds appended alone. And the packing of the streams' chunks into forward passes (stream/scheduler.py), against
hand-worked groupings. Tiny model, fp32."""

import pytest
import torch

from prospect.model.backbone import load_backbone
from prospect.stream.cache import _PIECE_COST, CACHE_ARG, CacheState, KVStore, _pieces
from prospect.stream.scheduler import TorchMode, _passes


@pytest.fixture(scope="module")
def vlm(tiny_dir):
    return load_backbone(str(tiny_dir))[0].eval()


def ids(n: int, seed: int) -> list[int]:
    """Text token ids of the tiny model's tokenizer (its special tokens, images among them, come first)."""
    return torch.randint(10, 200, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def buffers(store: KVStore) -> list[torch.Tensor]:
    """The store's keys and values, layer by layer ([rows, kv_heads, capacity, head_dim] each)."""
    return [t for layer in store.layers for t in (layer.keys, layer.values)]


def test_keep_leaves_exactly_the_kept_tokens_of_its_row(vlm):
    """Row 1 of two holds 10 tokens, its prefix slots 0, 1 and 5; keeping them and the last 3 leaves slots
    0, 1, 5, 7, 8, 9 at columns 0..5 of every layer, with their positions and ids; the prefix moves to 0, 1, 2;
    row 0 is untouched."""
    store = KVStore(vlm, rows=2)
    other, cache = CacheState(vlm, store, row=0), CacheState(vlm, store, row=1)
    other.append(ids(7, 0))
    tokens = ids(10, 1)
    cache.append(tokens)
    cache.extend_prefix(0, 2)
    cache.extend_prefix(5, 6)
    keys, values = [la.keys.clone() for la in store.layers], [la.values.clone() for la in store.layers]
    cache.keep(cache.prefix, recent=3)
    kept = [0, 1, 5, 7, 8, 9]
    assert store.lengths == [7, 6] and cache.tokens == 6
    for before, after in ((keys, [la.keys for la in store.layers]), (values, [la.values for la in store.layers])):
        for old, new in zip(before, after, strict=True):  # [rows, kv_heads, capacity, head_dim] per layer
            assert torch.equal(new[1, :, :6], torch.stack([old[1, :, j] for j in kept], dim=1))
            assert torch.equal(new[0, :, :7], old[0, :, :7])
    assert cache.positions.tolist() == kept and cache.token_ids.tolist() == [tokens[j] for j in kept]
    assert cache.prefix.tolist() == [0, 1, 2]


def test_growing_the_capacity_keeps_the_contents(vlm):
    """A store of capacity 4 takes 3 tokens, then 6 more (it grows to 9): what the first pass stored is unchanged,
    and every key, value and hidden state equals a store that never grew."""
    small, large = KVStore(vlm, capacity=4), KVStore(vlm, capacity=64)
    into_small, into_large = CacheState(vlm, small), CacheState(vlm, large)
    first = [into_small.append(ids(3, 2)), into_large.append(ids(3, 2))]
    stored = [t[..., :3, :].clone() for t in buffers(small)]
    assert small.capacity == 4
    second = [into_small.append(ids(6, 3)), into_large.append(ids(6, 3))]
    assert small.capacity == 9 and small.lengths == large.lengths == [9]
    assert all(torch.equal(t[..., :3, :], s) for t, s in zip(buffers(small), stored, strict=True))
    for a, b in zip(buffers(small), buffers(large), strict=True):
        torch.testing.assert_close(a[..., :9, :], b[..., :9, :], rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.stack([first[0], second[0]]), torch.stack([first[1], second[1]]), rtol=0,
                               atol=1e-5)


def test_rows_appended_in_one_pass_hold_what_each_holds_alone(vlm):
    """Chunks of 5 and 2 tokens onto rows holding 3 and 6: one padded pass writes each row's chunk after its own
    tokens, as two single-row stores do."""
    embed = vlm.get_input_embeddings()
    starts, chunks = {0: ids(3, 4), 1: ids(6, 5)}, {0: ids(5, 6), 1: ids(2, 7)}
    joint = KVStore(vlm, rows=2)
    for row, start in starts.items():
        joint.forward({row: (embed(torch.tensor(start)), torch.arange(len(start)))})
    out = joint.forward({row: (embed(torch.tensor(c)), torch.arange(len(starts[row]), len(starts[row]) + len(c)))
                         for row, c in chunks.items()})
    assert joint.lengths == [8, 8]
    for row in starts:
        alone = KVStore(vlm)
        alone.forward({0: (embed(torch.tensor(starts[row])), torch.arange(len(starts[row])))})
        n = len(starts[row])
        hidden = alone.forward({0: (embed(torch.tensor(chunks[row])), torch.arange(n, n + len(chunks[row])))})[0]
        torch.testing.assert_close(out[row], hidden, rtol=0, atol=1e-5)
        for a, b in zip(buffers(joint), buffers(alone), strict=True):
            torch.testing.assert_close(a[row, :, :8], b[0, :, :8], rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows, needs, pieces", [
    # two long caches beside two short: 2 x 1305 + 2 x 55 + 2 pieces' cost < 4 x 1305 + one's: cut after row 1
    ([0, 1, 2, 3], [1305, 1205, 25, 55], [(0, 2, 0, 1305), (2, 4, 2, 55)]),
    # 1000 and 900: cutting spares 100 keys, less than a piece costs: one piece
    ([0, 1], [1000, 900], [(0, 2, 0, 1000)]),
    # rows 2 and 5 are not consecutive: a piece each, whatever their lengths (their keys are read in place)
    ([2, 5], [100, 100], [(0, 1, 2, 100), (1, 2, 5, 100)]),
    ([3], [7], [(0, 1, 3, 7)]),
])
def test_pieces(rows, needs, pieces):
    """How a pass's attention is cut: runs of consecutive rows, each up to its longest cache, where a cut spares
    more keys than _PIECE_COST."""
    assert _PIECE_COST == 1024  # the hand-worked costs above
    assert _pieces(rows, needs) == pieces


def test_a_pass_cut_into_pieces_holds_what_each_row_holds_alone(vlm):
    """Rows holding 1300, 1200, 20 and 50 tokens take chunks of 5, 5, 5 and 2: the pass is cut into pieces (rows 0-1
    up to 1305 keys, rows 2-3 up to 55), and every row's hidden states and cache equal a single-row store's; then a
    pass over rows 0, 1 and 3 (row 2 not asking: row 3 is a piece of its own) likewise."""
    embed = vlm.get_input_embeddings()
    starts = {0: ids(1300, 8), 1: ids(1200, 9), 2: ids(20, 10), 3: ids(50, 11)}
    joint = KVStore(vlm, rows=4)
    alone = {row: KVStore(vlm) for row in starts}
    for row, start in starts.items():
        for store, r in ((joint, row), (alone[row], 0)):
            store.forward({r: (embed(torch.tensor(start)), torch.arange(len(start)))})
    for seed, chunks in ((12, {0: 5, 1: 5, 2: 5, 3: 2}), (13, {0: 1, 1: 3, 3: 4})):
        chunks = {row: ids(n, seed + row) for row, n in chunks.items()}
        before = dict(enumerate(joint.lengths))
        out = joint.forward({row: (embed(torch.tensor(c)), torch.arange(before[row], before[row] + len(c)))
                             for row, c in chunks.items()})
        for row, c in chunks.items():
            hidden = alone[row].forward({0: (embed(torch.tensor(c)), torch.arange(before[row], before[row] + len(c)))})
            torch.testing.assert_close(out[row], hidden[0], rtol=0, atol=1e-5)
            n = joint.lengths[row]
            for a, b in zip(buffers(joint), buffers(alone[row]), strict=True):
                torch.testing.assert_close(a[row, :, :n], b[0, :, :n], rtol=0, atol=1e-5)


class Recorder:
    """A store that records which rows each forward pass takes, and whether under autocast, and answers each row
    with its own chunk."""

    def __init__(self):
        self.passes: list[list[int]] = []
        self.autocast: list[bool] = []

    def forward(self, chunks):
        self.passes.append(list(chunks))
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return {row: embeds for row, (embeds, _) in chunks.items()}


FLOAT32, BF16 = TorchMode(False, False, torch.bfloat16), TorchMode(False, True, torch.bfloat16)


@pytest.mark.parametrize("sizes, passes", [
    # a frame each (30, 28, 29 tokens) and a generated token: longest first, 4 x 30 = 120 <= 2 x 88, one pass
    ({0: 30, 1: 28, 2: 1, 3: 29}, [[0, 3, 1, 2]]),
    # a restarted prompt (300) takes the frame (20: 2 x 300 <= 2 x 320) but not the tokens (3 x 300 > 2 x 321)
    ({0: 1, 1: 1, 2: 300, 3: 20, 4: 1}, [[2, 3], [0, 1, 4]]),
    # a prompt of 400 takes one frame (800 <= 860, 1200 > 920); the other frame and the token share a pass
    ({0: 400, 1: 30, 2: 30, 3: 1}, [[0, 1], [2, 3]]),
    ({5: 7}, [[5]]),
])
def test_pass_packing(sizes, passes):
    """Which chunks share a forward pass: each pass pads its chunks to its longest and stays within twice its
    real tokens."""
    asked = {row: (torch.full((n, 1), float(row)), torch.arange(n)) for row, n in sizes.items()}
    store = Recorder()
    hidden = _passes(store, asked, dict.fromkeys(sizes, FLOAT32), "cpu")
    assert store.passes == passes and not any(store.autocast)
    assert sorted(hidden) == sorted(sizes) and all(torch.equal(hidden[r], asked[r][0]) for r in sizes)


def test_a_pass_takes_the_chunks_of_one_autocast():
    """Frames of 30, 28 and 29 tokens and a generated token, the 28 and the token asked under bf16 autocast: a pass
    is one precision, so they run in a pass of their own, under autocast, and the float32 ones in another."""
    sizes = {0: 30, 1: 28, 2: 1, 3: 29}
    asked = {row: (torch.full((n, 1), float(row)), torch.arange(n)) for row, n in sizes.items()}
    store = Recorder()
    _passes(store, asked, {0: FLOAT32, 1: BF16, 2: BF16, 3: FLOAT32}, "cpu")
    assert (store.passes, store.autocast) == ([[0, 3], [1, 2]], [False, True])


def test_full_forwards_run_transformers_sdpa(vlm, tiny_dir):
    """Outside the store's passes prospect's attention is transformers' sdpa: a full forward (training's) gives the
    very same hidden states under either, a padding mask included."""
    sdpa = load_backbone(str(tiny_dir), attn_implementation="sdpa")[0].eval()
    tokens, mask = torch.tensor([ids(12, 8), ids(12, 9)]), torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        ours, theirs = (m.model.text_model(input_ids=tokens, attention_mask=mask).last_hidden_state
                        for m in (vlm, sdpa))
    assert torch.equal(ours, theirs)


def test_a_forward_on_the_store_outside_its_pass_is_an_error(vlm):
    """transformers writing to the store by itself (the store's columns, mask and positions left out) raises."""
    with pytest.raises(RuntimeError, match="outside KVStore.forward"), torch.no_grad():
        vlm.model.text_model(input_ids=torch.tensor([ids(3, 1)]), use_cache=True, **{CACHE_ARG: KVStore(vlm)})
