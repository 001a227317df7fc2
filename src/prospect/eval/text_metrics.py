"""BLEU-4, CIDEr and ROUGE-L of matched (generated, reference) turn pairs, with pycocoevalcap's scorers (the
captioning implementations ProAssist reports). Texts are lower-cased and split into words, as the COCO PTB
tokenizer does minus its Java dependency."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation removed."""
    return " ".join(_WORD.findall(text.lower()))


def text_scores(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Corpus BLEU-4, CIDEr and ROUGE-L of (generated, reference) pairs; 0 for each when there is no pair."""
    if not pairs:
        return {"bleu4": 0.0, "cider": 0.0, "rouge_l": 0.0}
    # an empty generation is scored as one unknown word: the scorers need a non-empty hypothesis
    res = {i: [words(p) or "<empty>"] for i, (p, _) in enumerate(pairs)}
    gts = {i: [words(r) or "<empty>"] for i, (_, r) in enumerate(pairs)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider), "rouge_l": float(rouge)}
