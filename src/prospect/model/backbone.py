"""Load a SmolVLM backbone and its tokenizer through one code path: hub id, local directory, the embedded tiny
model (tiny.py: built offline on first use), or a random-initialised model of a real architecture (benchmarks).

The tokenizer is made safe for our sequences here: its pad token must differ from the end-of-turn token
(`<end_of_utterance>`), which is attended to and learned.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from prospect.data.sequence import AROUND_IMAGE, END_OF_TURN, GLOBAL_IMAGE, IMAGE, TURN_START
from prospect.model.attention import STREAM_ATTENTION
from prospect.model.tiny import build_tiny


def architecture_config(name: str, **overrides) -> SmolVLMConfig:
    """Config of a real SmolVLM architecture shipped with prospect (`smolvlm2-256m`, `smolvlm2-500m`), with
    `overrides` of its fields (e.g. attn_implementation)."""
    path = resources.files("prospect.model").joinpath("architectures", f"{name}.json")
    if not path.is_file():
        raise ValueError(f"unknown architecture {name!r}: expected smolvlm2-256m or smolvlm2-500m")
    data = json.loads(path.read_text())
    data.pop("_comment", None)
    return SmolVLMConfig(**data | overrides)


def load_backbone(
    source: str, *, tiny_dir: str | Path = "models/tiny", tiny_corpus: Iterable[str] | None = None,
    architecture: str | None = None, dtype: torch.dtype = torch.float32, attn_implementation: str = STREAM_ATTENTION,
) -> tuple[SmolVLMForConditionalGeneration, PreTrainedTokenizerBase]:
    """Model and tokenizer from `source`: "tiny" (built into `tiny_dir` from `tiny_corpus` on first use),
    a local directory, or a hub id. With `architecture`, the weights are random-initialised in that real
    architecture's shapes and the tokenizer comes from `source` (ids must fit the architecture's vocabulary).
    `attn_implementation`: prospect's (STREAM_ATTENTION: sdpa, and what the streams' KV store needs), or any of
    transformers' (sdpa, eager, flash_attention_2 where installed) for a model that is not streamed."""
    if source == "tiny":
        if not (Path(tiny_dir) / "config.json").exists():
            if tiny_corpus is None:
                raise ValueError(f"the tiny model is not built yet at {tiny_dir} and no corpus was given")
            build_tiny(tiny_dir, tiny_corpus)
        source = str(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if architecture is not None:
        # the ids come from `source`'s tokenizer
        config = architecture_config(architecture, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
                                     attn_implementation=attn_implementation)
        model = SmolVLMForConditionalGeneration(config).to(dtype)
    else:
        model = SmolVLMForConditionalGeneration.from_pretrained(source, dtype=dtype,
                                                                attn_implementation=attn_implementation)
    _ensure_pad(model, tokenizer)
    return model, tokenizer


def _ensure_pad(model: SmolVLMForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token distinct from the end-of-turn token, growing the embeddings if needed."""
    missing = [t for t in (END_OF_TURN, TURN_START, IMAGE, AROUND_IMAGE, GLOBAL_IMAGE)
               if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        raise ValueError(f"tokenizer lacks SmolVLM special tokens {missing}; is this a SmolVLM checkpoint?")
    if tokenizer.convert_tokens_to_ids(IMAGE) != model.config.image_token_id:
        raise ValueError(f"the tokenizer's {IMAGE} is id {tokenizer.convert_tokens_to_ids(IMAGE)} but the model "
                         f"expects {model.config.image_token_id}: model and tokenizer do not belong together")
    if tokenizer.pad_token is None or tokenizer.pad_token == END_OF_TURN:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
