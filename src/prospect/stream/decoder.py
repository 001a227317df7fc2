"""TurnDecoder: generates one turn into a stream's cache, token by token (greedy, or sampled at a temperature).
Every generated token is appended to the cache, the end-of-turn token included (also when the turn is cut at its
limit), so the cache holds the turn exactly as training renders it (`SequenceBuilder.turn_ids_of`).

It does not decide whether to speak, what a turn means (DST updates are parsed by the tracker) or how the cache
fits its budget.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from prospect.data.sequence import SequenceBuilder
from prospect.stream.cache import CacheState


class TurnDecoder:
    def __init__(self, lm_head: torch.nn.Module, builder: SequenceBuilder, max_new_tokens: int = 48,
                 do_sample: bool = False, temperature: float = 1.0):
        """`lm_head` maps a hidden state [H] to logits [V]; `builder` renders the role headers and decodes text."""
        self.lm_head, self.builder = lm_head, builder
        self.end_of_turn_id = builder.end_of_turn_id
        self.max_new_tokens, self.do_sample, self.temperature = max_new_tokens, do_sample, temperature

    @torch.no_grad()
    def next_token(self, hidden: Tensor) -> int:
        logits = self.lm_head(hidden).float()  # [V]
        if not self.do_sample:
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits / self.temperature, -1), 1))

    def generate(self, cache: CacheState, hidden: Tensor, max_new_tokens: int | None = None) -> list[int]:
        """Generate after the cached context whose last hidden state is `hidden`, appending each token to the
        cache, until the end-of-turn token or max_new_tokens (default: this decoder's)."""
        ids: list[int] = []
        for _ in range(max_new_tokens or self.max_new_tokens):
            token = self.next_token(hidden)
            ids.append(token)
            hidden = cache.append([token])
            if token == self.end_of_turn_id:
                break
        return ids

    def turn(self, cache: CacheState, role: str, max_new_tokens: int | None = None) -> Turn:
        """Append the role's header, generate the turn, return its text (without the end-of-turn token). A turn
        cut at max_new_tokens still gets its end-of-turn token, so the context stays as in training."""
        ids = self.generate(cache, cache.append(self.builder.header_ids(role)), max_new_tokens)
        capped = not ids or ids[-1] != self.end_of_turn_id
        if capped:
            cache.append([self.end_of_turn_id])
        return Turn(self.builder.tokenizer.decode([t for t in ids if t != self.end_of_turn_id]).strip(), capped)


class Turn(NamedTuple):
    text: str
    capped: bool  # cut at max_new_tokens: the model did not end the turn itself (a sign of looping text)
