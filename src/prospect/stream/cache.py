"""All KV-cache surgery, on transformers 5.x's `DynamicCache` (`cache.layers[i].keys / .values`, each
[batch, kv_heads, seq, head_dim]). Release differences stay in this module.

transformers caches keys *after* RoPE. Dropping cached tokens therefore leaves the kept keys at their original
positions: either new tokens continue that numbering (`keep`), or the kept keys are re-rotated to contiguous
positions (`rerotate`, as StreamingLLM does), which keeps positions bounded on endless streams.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import rotate_half


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


def rerotate(cache: DynamicCache, shift: Tensor, rotary_emb: torch.nn.Module) -> None:
    """Move every cached key by `shift[j]` positions (1D, one entry per cached token; negative moves earlier)
    with the model's own rotary embedding: RoPE(p + d) = rotation by d applied to RoPE(p)."""
    for layer in cache.layers:
        if layer.keys is None or not layer.keys.numel():
            continue
        keys = layer.keys
        cos, sin = rotary_emb(keys, shift.to(keys.device)[None])  # [1, seq, head_dim]
        cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)  # [1, 1, seq, head_dim]
        layer.keys = keys * cos + rotate_half(keys) * sin
