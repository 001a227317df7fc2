"""The embedded tiny SmolVLM, built offline: a tokenizer trained on the data's texts (tokenizer.py) and random
weights in a small SmolVLM around it (transformers' test SmolVLM in spirit, large enough to learn the synthetic
tasks). It is built once into a folder and loaded from there like any local SmolVLM (backbone.py)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

from prospect.data.sequence import IMAGE
from prospect.model.tokenizer import train_tokenizer

TINY_VISION = {"image_size": 64, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_TEXT = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 8192,
             "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False}
TINY_SCALE_FACTOR = 2  # 64 px / patch 8 = 8x8 patches -> 4x4 = 16 tokens per frame before pooling


def build_tiny(out_dir: str | Path, corpus: Iterable[str], vocab_size: int = 1024, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer on `corpus`, build a random tiny SmolVLM around it, save both."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus, vocab_size)
    config = SmolVLMConfig(
        vision_config=TINY_VISION,
        text_config={"model_type": "llama", **TINY_TEXT, "vocab_size": len(tokenizer),
                     "pad_token_id": tokenizer.pad_token_id},
        scale_factor=TINY_SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    # A pretrained LM head gives peaked next-token distributions; a random one at the default std 0.02 caps the
    # logits so low that no text is ever predicted confidently, and the head is frozen under LoRA. Scale it as
    # an output layer (std 1/sqrt(hidden)) so that adapting the text model can make confident predictions.
    torch.nn.init.normal_(model.lm_head.weight, std=TINY_TEXT["hidden_size"] ** -0.5)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
