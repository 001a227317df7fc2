"""The attention prospect loads its models with, once, through transformers' `attn_implementation=`
(`STREAM_ATTENTION`): transformers' own sdpa for every forward pass (training, the vision tower, generate), and,
for the passes of the streams' KV store (prospect.stream.cache, which hands each layer `kv_pass`), torch's sdpa
under the store's mask with grouped keys read in place.

transformers' sdpa, given a mask, repeats every cached key and value for each query head (a copy of the whole cache
per layer and pass: with 4 heads on 2 KV heads a third of a batch-8 streaming pass on a CPU); torch's `enable_gqa`
reads them in place on a CPU. CUDA's fast kernels take no masked GQA, so there they are repeated. It does not
choose what a pass attends to (the store's mask does) nor switch implementations per pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers import AttentionInterface, AttentionMaskInterface

STREAM_ATTENTION = "prospect_sdpa"

# what a store pass hands each layer: called with the layer's query [B, heads, n, head_dim], the keys it attends
# over [B, kv_heads, kv, head_dim], the additive mask [B, 1, n, kv] and the scaling, before the attention runs
LayerHook = Callable[[Tensor, Tensor, Tensor, float], None]


def repeat_kv(states: Tensor, groups: int) -> Tensor:
    """[B, kv_heads, T, head_dim] -> [B, kv_heads * groups, T, head_dim], each key head repeated for its group of
    query heads (the layout grouped-query attention shares heads in)."""
    return states.repeat_interleave(groups, dim=1)


def stream_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                     attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     kv_pass: LayerHook | None = None, **kwargs) -> tuple[Tensor, Tensor | None]:
    """transformers' sdpa, unless a KV store runs the pass (`kv_pass`): then `kv_pass` sees the layer's query and
    keys, and torch's sdpa runs under the store's additive mask, grouped keys read in place on a CPU."""
    if kv_pass is None:
        return AttentionInterface()["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                            dropout=dropout, **kwargs)
    kv_pass(query, key, attention_mask, scaling)
    gqa = query.device.type == "cpu"
    if not gqa:
        groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                                           enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None  # [B, n, heads, head_dim]


AttentionInterface.register(STREAM_ATTENTION, stream_attention)
AttentionMaskInterface.register(STREAM_ATTENTION, AttentionMaskInterface()["sdpa"])  # sdpa's masks for the rest
