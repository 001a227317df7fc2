"""Frames to the text model's embedding space: SmolVLM's image preprocessing, vision encoder and connector,
then average-pooling of the connector's token grid to the configured tokens per frame (64 -> 16 / 4 / 1).

Frames are never split into sub-images: one global image per frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from transformers import SmolVLMForConditionalGeneration


def pixels(images: list[Image.Image], size: int) -> Tensor:
    """SmolVLM preprocessing of one global image per frame: resize, rescale to [0, 1], normalise with mean and
    std 0.5 (Idefics3ImageProcessor's constants). Returns [N, 3, size, size] float32."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
              for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (x - 0.5) / 0.5


def grid_side(vlm: SmolVLMForConditionalGeneration) -> int:
    """Side of the connector's token grid: sqrt(tokens per image)."""
    return math.isqrt(vlm.model.image_seq_len)


def check_tokens_per_frame(vlm: SmolVLMForConditionalGeneration, tokens_per_frame: int) -> None:
    side, pooled = grid_side(vlm), math.isqrt(tokens_per_frame)
    if pooled * pooled != tokens_per_frame or side % pooled:
        raise ValueError(f"tokens_per_frame={tokens_per_frame} must be a square whose side divides the "
                         f"connector grid side {side} (this model gives {side * side} tokens per image)")


def encode_frames(vlm: SmolVLMForConditionalGeneration, pixel_values: Tensor, tokens_per_frame: int) -> Tensor:
    """[N, 3, S, S] -> frame features [N, tokens_per_frame, hidden] in the text embedding space."""
    m = vlm.model
    hidden = m.vision_model(pixel_values=pixel_values.to(m.dtype)).last_hidden_state  # [N, patches, Hv]
    feats = m.connector(hidden)  # [N, side*side, H]
    side, pooled = grid_side(vlm), math.isqrt(tokens_per_frame)
    if pooled == side:
        return feats
    n, _, h = feats.shape
    grid = feats.transpose(1, 2).reshape(n, h, side, side)
    return F.adaptive_avg_pool2d(grid, pooled).reshape(n, h, pooled * pooled).transpose(1, 2)


def embed_with_frames(vlm: SmolVLMForConditionalGeneration, input_ids: Tensor, frame_features: Tensor | None) -> Tensor:
    """Token embeddings with frame features scattered into the `<image>` slots, in order. [B, T] -> [B, T, H]."""
    embeds = vlm.model.text_model.get_input_embeddings()(input_ids)
    slots = input_ids == vlm.config.image_token_id
    n_frames = 0 if frame_features is None else frame_features.shape[0] * frame_features.shape[1]
    if int(slots.sum()) != n_frames:
        raise ValueError(f"{int(slots.sum())} <image> tokens for {n_frames} frame feature vectors")
    if frame_features is None:
        return embeds
    return embeds.masked_scatter(slots.unsqueeze(-1), frame_features.to(embeds.device, embeds.dtype))
