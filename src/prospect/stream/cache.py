"""The KV cache of one stream and all surgery on it, on transformers 5.x's `DynamicCache`
(`cache.layers[i].keys / .values`, each [batch, kv_heads, seq, head_dim]). Release differences stay in this module.

transformers caches keys *after* RoPE. Dropping cached tokens therefore leaves the kept keys at their original
positions: either new tokens continue that numbering (`keep`), or the kept keys are re-rotated to contiguous
positions (`rerotate`, as StreamingLLM does), which keeps positions bounded on endless streams.

`CacheState` is what the compression strategies act on. It runs the model to append tokens, but knows nothing of
prompts, heads, budgets or the generator.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers import DynamicCache, SmolVLMForConditionalGeneration
from transformers.models.llama.modeling_llama import LlamaModel, rotate_half

from prospect.model.vision import embed_with_frames

# transformers 5.24 renamed the models' `past_key_values=` argument to `cache=` (the old name is deprecated until
# 5.40); before 5.24 an unknown `cache=` is swallowed and the model runs on a cache of its own
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_length(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes held by keys and values: 2 x layers x kv_heads x head_dim x tokens x bytes per value."""
    return sum(t.numel() * t.element_size() for layer in cache.layers if layer.keys is not None
               for t in (layer.keys, layer.values))


def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, bytes_per_value: int) -> int:
    return 2 * num_layers * kv_heads * head_dim * bytes_per_value


def keep_tokens(cache: DynamicCache, index: Tensor) -> None:
    """Keep only the cached tokens at `index` (a 1D LongTensor of cache slots, in order), in every layer."""
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys.index_select(-2, index.to(layer.keys.device))
            layer.values = layer.values.index_select(-2, index.to(layer.values.device))


def rerotate_keys(cache: DynamicCache, shift: Tensor, rotary_emb: torch.nn.Module) -> None:
    """Move every cached key by `shift[j]` positions (1D, one entry per cached token; negative moves earlier)
    with the model's own rotary embedding: RoPE(p + d) = rotation by d applied to RoPE(p)."""
    for layer in cache.layers:
        if layer.keys is None or not layer.keys.numel():
            continue
        keys = layer.keys
        cos, sin = rotary_emb(keys, shift.to(keys.device)[None])  # [1, seq, head_dim]
        cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)  # [1, 1, seq, head_dim]
        layer.keys = keys * cos + rotate_half(keys) * sin


class CacheState:
    """One stream's DynamicCache with, per cached token, its position and token id. Positions are explicit, so
    that after a drop new tokens either continue the numbering or the kept keys move: they never collide."""

    def __init__(self, model: SmolVLMForConditionalGeneration):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_positions = model.config.text_config.max_position_embeddings
        self.kv = DynamicCache()
        self.positions = torch.zeros(0, dtype=torch.long)  # [T] position of each cached token
        self.token_ids = torch.zeros(0, dtype=torch.long)  # [T] and its token id (for inspection and tests)
        self.prefix = torch.zeros(0, dtype=torch.long)  # cache slots of the prefix that drop_middle keeps
        self.next_position = 0
        # the position count that first passed max_positions (None: never), kept across restarts
        self.first_beyond: int | None = None

    @property
    def tokens(self) -> int:
        return cache_length(self.kv)

    @property
    def nbytes(self) -> int:
        return cache_bytes(self.kv)

    @torch.no_grad()
    def append(self, ids: list[int], frame_features: Tensor | None = None) -> Tensor:
        """Run `ids` (frame features [F, tokens_per_frame, H] in their `<image>` slots) through the text model
        onto the cache, at the next positions; the last hidden state [H]."""
        input_ids = torch.tensor([ids])  # [1, n]
        positions = torch.arange(self.next_position, self.next_position + len(ids))
        embeds = embed_with_frames(self.model, input_ids.to(self.device), frame_features)
        mask = torch.ones(1, self.tokens + len(ids), dtype=torch.long, device=self.device)
        out = self.model.model.text_model(inputs_embeds=embeds, attention_mask=mask,
                                          position_ids=positions[None].to(self.device), **{CACHE_ARG: self.kv},
                                          use_cache=True)
        self.positions = torch.cat([self.positions, positions])
        self.token_ids = torch.cat([self.token_ids, input_ids[0]])
        self.next_position += len(ids)
        if self.next_position > self.max_positions and self.first_beyond is None:
            self.first_beyond = self.next_position
        return out.last_hidden_state[0, -1]

    def restart(self, ids: list[int]) -> Tensor:
        """An empty cache (no prefix either) holding only `ids`, at positions 0..; the last hidden state [H]."""
        self.kv, self.next_position = DynamicCache(), 0
        self.positions, self.token_ids = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        self.prefix = torch.zeros(0, dtype=torch.long)
        return self.append(ids)

    def extend_prefix(self, start: int, stop: int) -> None:
        """The cache slots start..stop-1 join the prefix."""
        self.prefix = torch.cat([self.prefix, torch.arange(start, stop)])

    def keep(self, first: Tensor, recent: int) -> None:
        """Keep the cache slots `first` and the last `recent` cached tokens, drop the rest. The kept tokens stay
        at their positions (new tokens continue the numbering; `rerotate` makes them contiguous); the prefix
        follows its kept slots."""
        n = self.tokens
        index = torch.unique(torch.cat([first, torch.arange(max(n - recent, 0), n)]))  # sorted
        if len(index) == n:
            return
        self.prefix = torch.isin(index, self.prefix).nonzero()[:, 0]  # where the kept prefix now sits
        keep_tokens(self.kv, index)
        self.positions, self.token_ids = self.positions[index], self.token_ids[index]

    def rerotate(self) -> None:
        """Renumber the cached tokens 0.. (their keys re-rotated), so new tokens follow at the cache length."""
        target = torch.arange(self.tokens)
        if torch.equal(target, self.positions):  # already contiguous from 0: nothing moves
            return
        rerotate_keys(self.kv, target - self.positions, self.model.model.text_model.rotary_emb)
        self.positions, self.next_position = target, len(target)
