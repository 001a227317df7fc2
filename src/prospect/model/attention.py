"""The attention prospect loads its models with, once, through transformers' `attn_implementation=`
(`STREAM_ATTENTION`): transformers' own sdpa for every forward pass (training, the vision tower, generate), and,
for the passes of the streams' KV store (prospect.stream.cache, which hands each layer `kv_pass`), torch's sdpa
under the store's mask with grouped keys read in place, over the pieces of the batch the store cuts.

transformers' sdpa, given a mask, repeats every cached key and value for each query head (a copy of the whole cache
per layer and pass: with 4 heads on 2 KV heads a third of a batch-8 streaming pass on a CPU); torch's `enable_gqa`
reads them in place on a CPU. CUDA's fast kernels take no masked GQA, so there they are repeated. It does not
choose what a pass attends to (the store's mask and pieces do) nor switch implementations per pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers import AttentionInterface, AttentionMaskInterface

STREAM_ATTENTION = "prospect_sdpa"

# one piece of a store pass's attention: query [b, heads, n, head_dim], keys and values [b, kv_heads, kv, head_dim]
# and the additive mask [b, 1, n, kv] of b consecutive batch entries
Piece = tuple[Tensor, Tensor, Tensor, Tensor]
# what a store pass hands each layer: called with the layer's query [B, heads, n, head_dim], the store's keys and
# values (their layout is the store's), the additive mask [B, 1, n, kv] and the scaling; returns the pieces to
# attend, whose outputs, concatenated in order, are the batch's
LayerHook = Callable[[Tensor, Tensor, Tensor, Tensor, float], list[Piece]]


def repeat_kv(states: Tensor, groups: int) -> Tensor:
    """[B, kv_heads, T, head_dim] -> [B, kv_heads * groups, T, head_dim], each key head repeated for its group of
    query heads (the layout grouped-query attention shares heads in)."""
    return states.repeat_interleave(groups, dim=1)


def stream_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                     attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     kv_pass: LayerHook | None = None, **kwargs) -> tuple[Tensor, Tensor | None]:
    """transformers' sdpa, unless a KV store runs the pass (`kv_pass`): then torch's sdpa runs on each piece
    `kv_pass` cuts (under the store's additive mask, grouped keys read in place on a CPU)."""
    if kv_pass is None:
        return AttentionInterface()["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                            dropout=dropout, **kwargs)
    outs, gqa = [], query.device.type == "cpu"
    for q, k, v, mask in kv_pass(query, key, value, attention_mask, scaling):
        if not gqa:
            groups = q.shape[1] // k.shape[1]
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                                                     enable_gqa=gqa))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.transpose(1, 2).contiguous(), None  # [B, n, heads, head_dim]


AttentionInterface.register(STREAM_ATTENTION, stream_attention)
AttentionMaskInterface.register(STREAM_ATTENTION, AttentionMaskInterface()["sdpa"])  # sdpa's masks for the rest
