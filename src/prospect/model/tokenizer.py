"""A byte-level BPE tokenizer trained on our texts, with SmolVLM's special tokens: the tiny model's (tiny.py).
Real SmolVLMs bring their own tokenizer; this one only has to encode the synthetic tasks compactly."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from prospect.data.sequence import AROUND_IMAGE, END_OF_TURN, GLOBAL_IMAGE, IMAGE, PAD, TURN_START

SPECIAL_TOKENS = [PAD, TURN_START, END_OF_TURN, AROUND_IMAGE, GLOBAL_IMAGE, IMAGE, "<|endoftext|>"]


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A tokenizer of at most `vocab_size` tokens learned from `corpus`, SmolVLM's special tokens first."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=TURN_START, eos_token=END_OF_TURN,
                                   pad_token=PAD, unk_token="<|endoftext|>",
                                   additional_special_tokens=[AROUND_IMAGE, GLOBAL_IMAGE, IMAGE])
