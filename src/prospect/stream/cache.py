"""The KV caches of the streams and all surgery on them (docs/design.md, Batched streaming).

A `KVStore` holds the keys and values of one or more streams, one row each, in one buffer per layer
([rows, kv_heads, capacity, head_dim]); a row's tokens sit at its columns 0..length-1 in cache order. One forward
pass appends a chunk of tokens to any number of rows: each row's chunk goes to that row's next columns, the
chunks right-padded to the longest, under a 4D mask by which every token sees its row's cached tokens and the
earlier tokens of its chunk only. Pad tokens land past the row's length, where its next chunk overwrites them.
Nothing is copied per step but the new tokens, whatever the batch: each layer attends over pieces of consecutive
rows read in place, each up to the longest cache among its rows (so a short cache beside a long one attends to no
padding).
The store is a transformers `Cache` (one `StoreLayer` per attention layer, its `keys` and `values` the buffers
above); its passes run with the attention the model was loaded with, which must be prospect's
(`attn_implementation=STREAM_ATTENTION`, prospect.model.attention): each layer hands it the pass's `kv_pass`. A pass
may also record, for the rows asked (`observing`), the attention their chunk's tokens pay to the row's tokens
(attention_scored's scores); the passes' results are the same either way.

transformers caches keys *after* RoPE. Dropping cached tokens therefore leaves the kept keys at their original
positions: either new tokens continue that numbering (`keep`), or the kept keys are re-rotated to contiguous
positions (`rerotate`, as StreamingLLM does), which keeps positions bounded on endless streams. A third numbering
exists only to reproduce upstream: new tokens from the cache length (`number_from_length`), as transformers
numbers them, which after a drop from the middle collides with the positions of kept keys.

`CacheState` is one stream's row and what the compression strategies act on: per cached token its position and id,
which slots are the prefix, which hold a frame (and the frame's features), and the attention the last observed
chunk paid. It runs the model to append tokens, but knows nothing of prompts, heads, budgets, the generator or the
other rows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from transformers import Cache, CacheLayerMixin, LlamaModel, SmolVLMForConditionalGeneration

from prospect.model.attention import STREAM_ATTENTION, Piece
from prospect.model.vision import embed_with_frames

# transformers 5.24 renamed the models' `past_key_values=` argument to `cache=` (the old name is deprecated until
# 5.40); before 5.24 an unknown `cache=` is swallowed and the model runs on a cache of its own
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"

Chunk = tuple[Tensor, Tensor]  # (embeddings [n, H], positions [n]) to append to one row


class AttentionError(RuntimeError):
    """The model's attention is not the one the store's passes need (it was chosen when the model was loaded)."""


def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, bytes_per_value: int) -> int:
    return 2 * num_layers * kv_heads * head_dim * bytes_per_value


def rotate_half(x: Tensor) -> Tensor:
    """RoPE's rotation of the last dimension's halves (x1, x2) -> (-x2, x1), as Llama pairs them."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class StoreLayer(CacheLayerMixin):
    """One attention layer's part of a KVStore: the keys and values of every row, [rows, kv_heads, capacity,
    head_dim]. Its `update` writes a pass's chunks where the store's running pass says."""

    is_sliding = False

    def __init__(self, store: KVStore, keys: Tensor, values: Tensor):
        super().__init__()
        self.store, self.keys, self.values = store, keys, values
        self.device, self.is_initialized = keys.device, True

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        """Nothing to do: the store allocates its layers up front."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Called by the attention layer inside `KVStore.forward`: write the chunks' keys and values [B, kv_heads, n,
        head_dim] at their rows' next columns; the whole buffers, which the pass cuts into the pieces each layer's
        attention runs on (`_Pass.__call__`)."""
        step = self.store.running()
        for buffer, new in ((self.keys, key_states), (self.values, value_states)):
            buffer[step.rows[:, None], :, step.columns] = new.transpose(1, 2).to(buffer.dtype)  # [B, n, kv, dim]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """What transformers numbers new tokens from when no positions are given (the store's are always)."""
        return max(self.store.lengths)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        """-1: the store grows (transformers 5.24's name for it; 5.6 calls it get_max_cache_shape)."""
        return -1

    get_max_cache_shape = get_max_length


# what one more attention call costs, in keys of one row attended: a piece is worth cutting when it spares more
# (an estimate of an sdpa call's fixed cost on a CPU; README, Streaming, has what the pieces saved)
_PIECE_COST = 1024


class _Pass:
    """One KVStore.forward while it runs: its store rows [B] (ascending), their write columns [B, n] and the kv
    length; called by every layer's attention (`kv_pass`, prospect.model.attention), it adds the attention of the
    observed batch entries to `totals` and cuts the batch into pieces (`_pieces`)."""

    def __init__(self, rows: list[int], columns: Tensor, kv_length: int, observed: list[int], sizes: Tensor,
                 device: torch.device):
        self.rows, self.columns, self.kv_length = torch.tensor(rows, device=device), columns.to(device), kv_length
        self.observed, self.sizes = observed, sizes
        self.totals = torch.zeros(len(observed), kv_length, device=device)  # [b, kv] over layers and heads
        self.pieces = _pieces(rows, (columns[:, -1] + 1).tolist())

    def __call__(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scaling: float) -> list[Piece]:
        """The layer's pieces (attention.Piece) from the store's buffers `keys`, `values` [rows, kv_heads,
        capacity, head_dim]: each a run of rows read in place, up to the longest cache among them."""
        if self.observed:
            index = torch.tensor(self.observed, device=query.device)
            _observe(self.sizes, self.totals, query[index], keys[self.rows[index], :, :self.kv_length], mask[index],
                     scaling)
        return [(query[a:b], keys[r:r + b - a, :, :length], values[r:r + b - a, :, :length], mask[a:b, ..., :length])
                for a, b, r, length in self.pieces]


def _pieces(rows: list[int], needs: list[int]) -> list[tuple[int, int, int, int]]:
    """The batch entries (whose store `rows` ascend) cut into pieces (first entry, end, first row, kv length) of
    consecutive rows, each attending up to the longest `needs` among them (a row's cached tokens and its chunk):
    a short cache in the pass of a long one attends to no padding, and no row's keys are copied. The cut that
    minimises the keys attended plus _PIECE_COST per piece (dynamic programming over the entries)."""
    best = [0.0] + [float("inf")] * len(rows)  # best[j]: the cost of entries 0..j-1
    start = [0] * (len(rows) + 1)
    for j in range(1, len(rows) + 1):
        longest = 0
        for i in range(j - 1, -1, -1):  # the last piece is entries i..j-1
            if i < j - 1 and rows[i + 1] != rows[i] + 1:
                break
            longest = max(longest, needs[i])
            cost = best[i] + (j - i) * longest + _PIECE_COST
            if cost < best[j]:
                best[j], start[j] = cost, i
    pieces, j = [], len(rows)
    while j:
        i = start[j]
        pieces.append((i, j, rows[i], max(needs[i:j])))
        j = i
    return pieces[::-1]


class KVStore(Cache):
    """Keys and values of `rows` streams, one row each (see the module docstring)."""

    def __init__(self, vlm: SmolVLMForConditionalGeneration, rows: int = 1, capacity: int = 256):
        text = vlm.config.text_config
        weight = next(vlm.parameters())
        shape = (rows, text.num_key_value_heads, capacity, text.head_dim)
        super().__init__(layers=[StoreLayer(self, weight.new_zeros(shape), weight.new_zeros(shape))
                                 for _ in range(text.num_hidden_layers)])
        self.vlm = vlm
        self.lengths = [0] * rows  # cached tokens per row
        self.observing: set[int] = set()  # rows whose next chunk's attention is recorded (`observed`)
        self.observed: dict[int, Tensor] = {}  # row -> [its tokens] mean attention its last observed chunk paid
        self.token_bytes = bytes_per_token(text.num_hidden_layers, text.num_key_value_heads, text.head_dim,
                                           weight.element_size())
        self._pass: _Pass | None = None

    @property
    def capacity(self) -> int:
        return self.layers[0].keys.shape[-2]

    def running(self) -> _Pass:
        """The pass `forward` is running; outside one, transformers has no business writing to the store."""
        if self._pass is None:
            raise RuntimeError("a forward pass on a KVStore outside KVStore.forward: only the store knows where each "
                               "row's tokens go (pass chunks to KVStore.forward, or stream through CacheState)")
        return self._pass

    @torch.no_grad()
    def forward(self, chunks: Mapping[int, Chunk]) -> dict[int, Tensor]:
        """Append each row's chunk {row: (embeddings [n, H], positions [n])} in one forward pass of the text model;
        {row: the chunk's last hidden states [n, H]}. For the rows in `observing`, `observed[row]` becomes the
        attention the chunk's tokens paid to each of the row's tokens (theirs included), averaged over layers, heads
        and the chunk's tokens."""
        attention = self.vlm.model.text_model.config._attn_implementation
        if attention != STREAM_ATTENTION:  # the pieces of a pass are cut for prospect's attention alone
            raise AttentionError(f"the text model runs {attention!r} attention, not the store's: load the model with "
                                 f"attn_implementation={STREAM_ATTENTION!r} (prospect.model.attention; load_backbone's "
                                 "default)")
        rows = sorted(chunks)
        lengths = torch.tensor([self.lengths[r] for r in rows])  # [B]
        sizes = [len(chunks[r][0]) for r in rows]
        n = max(sizes)
        kv_length = int(lengths.max()) + n
        self._grow(kv_length)
        embeds = torch.stack([torch.nn.functional.pad(chunks[r][0], (0, 0, 0, n - len(chunks[r][0]))) for r in rows])
        # pad tokens repeat the last position: never seen by a real token, they only must not fail RoPE
        positions = torch.stack([torch.cat([p, p[-1:].expand(n - len(p))]) for p in (chunks[r][1] for r in rows)])
        columns = lengths[:, None] + torch.arange(n)  # [B, n] where each row's chunk is written
        device, dtype = self.layers[0].keys.device, self.layers[0].keys.dtype
        # additive [B, 1, n, kv]: each token sees its row's cache and the earlier tokens of its chunk
        allowed = torch.arange(kv_length) <= columns[..., None]
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
        observed = [i for i, r in enumerate(rows) if r in self.observing]  # batch entries whose attention is kept
        self._pass = step = _Pass(rows, columns, kv_length, observed, torch.tensor(sizes)[observed].to(device),
                                  device)
        try:
            out = self.vlm.model.text_model(inputs_embeds=embeds.to(device), attention_mask=mask.to(device),
                                              position_ids=positions.to(device), use_cache=True, kv_pass=step,
                                              **{CACHE_ARG: self})
        finally:
            self._pass = None
        for r, s in zip(rows, sizes, strict=True):
            self.lengths[r] += s
        heads = self.vlm.config.text_config.num_attention_heads
        for j, i in enumerate(observed):
            r = rows[i]
            self.observing.discard(r)
            self.observed[r] = step.totals[j, :self.lengths[r]].cpu() / (len(self.layers) * heads * sizes[i])
        return {r: out.last_hidden_state[i, :s] for i, (r, s) in enumerate(zip(rows, sizes, strict=True))}

    def _grow(self, columns: int) -> None:
        if columns <= self.capacity:
            return
        extra = max(columns, 2 * self.capacity) - self.capacity
        for layer in self.layers:
            layer.keys, layer.values = (torch.nn.functional.pad(t, (0, 0, 0, extra))
                                        for t in (layer.keys, layer.values))

    def keep(self, row: int, index: Tensor) -> None:
        """Keep only the row's cached tokens at `index` (1D, in order) at its first columns, in every layer."""
        index = index.to(self.layers[0].keys.device)
        for layer in self.layers:
            for t in (layer.keys, layer.values):
                t[row, :, :len(index)] = t[row].index_select(-2, index)
        self.lengths[row] = len(index)

    def rerotate(self, row: int, shift: Tensor, rotary_emb: torch.nn.Module) -> None:
        """Move each of the row's cached keys by `shift[j]` positions (1D, one entry per cached token; negative
        moves earlier) with the model's own rotary embedding: RoPE(p + d) = rotation by d applied to RoPE(p)."""
        n = self.lengths[row]
        for layer in self.layers:
            keys = layer.keys[row, :, :n]  # [kv_heads, n, head_dim]
            cos, sin = rotary_emb(keys, shift.to(keys.device)[None])  # [1, n, head_dim]
            layer.keys[row, :, :n] = keys * cos.to(keys.dtype) + rotate_half(keys) * sin.to(keys.dtype)

    def clear(self, row: int) -> None:
        self.lengths[row] = 0


def _observe(sizes: Tensor, totals: Tensor, query: Tensor, key: Tensor, mask: Tensor, scaling: float) -> None:
    """Add one layer's attention weights of some batch entries (their query [b, heads, n, head_dim], keys [b,
    kv_heads, kv, head_dim] and mask [b, 1, n, kv]; their first `sizes` queries, the real tokens of their chunks),
    summed over heads and queries, to `totals` [b, kv]: softmax(q k^T * scaling + mask) as the attention computes
    it, in float32, with each key shared by its group of query heads."""
    q, k = query.float(), key.float()
    b, heads, n, head_dim = q.shape
    logits = q.view(b, k.shape[1], heads // k.shape[1], n, head_dim) @ k[:, :, None].transpose(-1, -2) * scaling
    weights = (logits + mask[:, :, None].float()).softmax(-1).sum((1, 2))  # [b, n, kv]
    real = torch.arange(n, device=query.device) < sizes[:, None]  # [b, n]
    totals += (weights * real[..., None]).sum(1)


Runner = Callable[[int, Tensor, Tensor], Tensor]  # (row, embeddings [n, H], positions [n]) -> hidden [n, H]


class CacheState:
    """One stream's row of a KVStore with, per cached token, its position and token id. Positions are explicit, so
    that after a drop new tokens either continue the numbering or the kept keys move: they never collide (but
    where upstream's numbering is reproduced, `number_from_length`).
    `run` performs the forward passes; by default the store runs each one at once, a batch runner
    (stream/scheduler.py) gathers those of all its streams into one."""

    def __init__(self, vlm: SmolVLMForConditionalGeneration, store: KVStore | None = None, row: int = 0,
                 run: Runner | None = None):
        self.vlm = vlm
        self.store, self.row = store or KVStore(vlm), row
        self.run: Runner = run or (lambda r, embeds, positions: self.store.forward({r: (embeds, positions)})[r])
        self.device = next(vlm.parameters()).device
        self.max_positions = vlm.config.text_config.max_position_embeddings
        self.positions = torch.zeros(0, dtype=torch.long)  # [T] position of each cached token
        self.token_ids = torch.zeros(0, dtype=torch.long)  # [T] and its token id (for inspection and tests)
        self.prefix = torch.zeros(0, dtype=torch.long)  # cache slots of the prefix that drop_middle keeps
        self.frame_of = torch.zeros(0, dtype=torch.long)  # [T] the frame each cached token belongs to (-1: none)
        self.frame_features: dict[int, Tensor] = {}  # frame -> the features it was fed [tokens_per_frame, H]
        self._frames_marked = 0
        # the mean attention the last observed chunk paid to each slot up to its end [T'], and its first slot;
        # None after a drop (the slots moved) until a chunk is observed again
        self.attention: Tensor | None = None
        self.observed_from = 0
        self.next_position = 0
        # the position count that first passed max_positions (None: never), kept across restarts
        self.first_beyond: int | None = None

    @property
    def tokens(self) -> int:
        return self.store.lengths[self.row]

    @property
    def nbytes(self) -> int:
        """Bytes the cached keys and values take (2 x layers x kv_heads x head_dim x tokens x bytes per value)."""
        return self.tokens * self.store.token_bytes

    def append(self, ids: list[int], frame_features: Tensor | None = None, observe: bool = False) -> Tensor:
        """Run `ids` (frame features [F, tokens_per_frame, H] in their `<image>` slots) through the text model
        onto the cache, at the next positions; the last hidden state [H]. With `observe`, `attention` becomes the
        attention these tokens paid to each cached slot (KVStore.forward) and `observed_from` their first slot."""
        input_ids = torch.tensor([ids])  # [1, n]
        positions = torch.arange(self.next_position, self.next_position + len(ids))
        with torch.no_grad():
            embeds = embed_with_frames(self.vlm, input_ids.to(self.device), frame_features)[0]  # [n, H]
        start = self.tokens
        if observe:
            self.store.observing.add(self.row)
        hidden = self.run(self.row, embeds, positions)
        if observe:
            self.attention, self.observed_from = self.store.observed.pop(self.row), start
        self.positions = torch.cat([self.positions, positions])
        self.token_ids = torch.cat([self.token_ids, input_ids[0]])
        self.frame_of = torch.cat([self.frame_of, torch.full((len(ids),), -1)])
        self.next_position += len(ids)
        if self.next_position > self.max_positions and self.first_beyond is None:
            self.first_beyond = self.next_position
        return hidden[-1]

    def restart(self, ids: list[int]) -> Tensor | None:
        """An empty cache (no prefix either) holding only `ids`, at positions 0..; the last hidden state [H]
        (None when `ids` is empty: the cache stays empty)."""
        self.store.clear(self.row)
        self.next_position = 0
        self.positions, self.token_ids = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        self.prefix = torch.zeros(0, dtype=torch.long)
        self.frame_of, self.frame_features, self.attention = torch.zeros(0, dtype=torch.long), {}, None
        return self.append(ids) if ids else None

    def extend_prefix(self, start: int, stop: int) -> None:
        """The cache slots start..stop-1 join the prefix."""
        self.prefix = torch.cat([self.prefix, torch.arange(start, stop)])

    def mark_frame(self, start: int, stop: int, features: Tensor) -> None:
        """The cache slots start..stop-1 hold one frame (its `<image>` slots and the tokens around them), fed as
        `features` [tokens_per_frame, H]: what redundancy_scored compares frames by."""
        self.frame_of[start:stop] = self._frames_marked
        self.frame_features[self._frames_marked] = features
        self._frames_marked += 1

    def frames(self) -> list[tuple[Tensor, Tensor]]:
        """The cached frames, oldest first: (their cache slots, the features they were fed)."""
        marked = self.frame_of[self.frame_of >= 0].unique()  # sorted: in the order they were fed
        return [((self.frame_of == k).nonzero()[:, 0], self.frame_features[int(k)]) for k in marked]

    def keep(self, slots: Tensor, recent: int) -> None:
        """Keep the cache `slots` and the last `recent` cached tokens, drop the rest. The kept tokens stay at their
        positions (new tokens continue the numbering; `rerotate` makes them contiguous); the prefix and the frames
        follow their kept slots; the observed attention is forgotten."""
        n = self.tokens
        index = torch.unique(torch.cat([slots, torch.arange(max(n - recent, 0), n)]))  # sorted
        if len(index) == n:
            return
        self.prefix = torch.isin(index, self.prefix).nonzero()[:, 0]  # where the kept prefix now sits
        self.store.keep(self.row, index)
        self.positions, self.token_ids = self.positions[index], self.token_ids[index]
        self.frame_of = self.frame_of[index]
        kept = set(self.frame_of.tolist())
        self.frame_features = {k: f for k, f in self.frame_features.items() if k in kept}
        self.attention = None

    def number_from_length(self) -> None:
        """Number new tokens from the cache length, whatever positions the kept keys hold: upstream's numbering
        (transformers' default), which after a drop from the middle gives new tokens the positions of kept keys.
        Only the upstream_* settings use it, to reproduce upstream's numbers."""
        self.next_position = self.tokens

    def rerotate(self) -> None:
        """Renumber the cached tokens 0.. (their keys re-rotated), so new tokens follow at the cache length."""
        target = torch.arange(self.tokens)
        if torch.equal(target, self.positions):  # already contiguous from 0: nothing moves
            return
        self.store.rerotate(self.row, target - self.positions, self.vlm.model.text_model.rotary_emb)
        self.positions, self.next_position = target, len(target)
