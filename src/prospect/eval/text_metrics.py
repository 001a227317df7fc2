"""Captioning metrics of matched (generated, reference) turn pairs, computed as ProAssist computes them
(mmassist/eval/metrics/nlg_scorer.py): both texts PTB-tokenised and lower-cased by Stanford CoreNLP 3.4.1, the
punctuation tokens of pycocoevalcap's list removed, pairs whose reference is left empty dropped, then BLEU-1..4,
METEOR 1.5 and CIDEr-D (pycocoevalcap's `Cider`) over the corpus with pycocoevalcap's scorers, which upstream's
copies equal. ROUGE-L is ours, not upstream's, on the same tokens.

The tokenizer and METEOR are the Java programs pycocoevalcap ships: scoring needs `java` on PATH and says so
when it is missing; nothing here falls back to a Python tokenizer, since the numbers would then differ.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

UPSTREAM = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider")  # upstream's Bleu_1..4, METEOR, CIDEr
TEXT_METRICS = (*UPSTREAM, "rouge_l")


class JavaNotFoundError(RuntimeError):
    """The text metrics need a Java runtime."""


def java() -> str:
    """The `java` executable, or JavaNotFoundError naming what needs it."""
    path = shutil.which("java")
    if path is None:
        raise JavaNotFoundError(
            "the text metrics (BLEU, METEOR, CIDEr of matched turns) run Stanford's PTB tokenizer and METEOR 1.5, "
            "Java programs shipped with pycocoevalcap, as ProAssist does, and no `java` is on PATH: install a Java "
            "runtime (e.g. `apt-get install default-jre-headless`)")
    return path


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Each text lower-cased and PTB-tokenised, tokens joined by spaces, upstream's punctuation tokens removed
    (its list has "-LRB-" but the tokenizer, lower-casing, writes "-lrb-": brackets stay, as upstream)."""
    if not texts:
        return []
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    # one line per text: the tokenizer also breaks lines at \r, \f, \v, \u2028 (upstream joins only "\n" away)
    lines = "\n".join(" ".join(t.splitlines()) for t in texts)
    out = subprocess.run([java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                          "-lowerCase"], input=lines.encode(), capture_output=True, check=True)
    tokenized = out.stdout.decode().split("\n")[: len(texts)]
    if len(tokenized) != len(texts):
        raise RuntimeError(f"the PTB tokenizer gave {len(tokenized)} lines for {len(texts)} texts: "
                           f"{out.stderr.decode()[-500:]}")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS) for line in tokenized]


@cache
def _meteor() -> Meteor:
    """One METEOR process per Python process: it loads its paraphrase table for several seconds."""
    java()
    return Meteor()


def text_scores(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Corpus BLEU-1..4, METEOR, CIDEr and ROUGE-L of (generated, reference) pairs; 0 each when no pair has a
    non-empty reference."""
    java()  # fail on the first scoring, not the first good match
    tokens = ptb_tokenize([text for pair in pairs for text in pair])
    kept = [i for i, ref in enumerate(tokens[1::2]) if ref]  # upstream drops empty references, not empty replies
    if not kept:
        return dict.fromkeys(TEXT_METRICS, 0.0)
    res = {i: [tokens[2 * i]] for i in kept}
    gts = {i: [tokens[2 * i + 1]] for i in kept}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, _ = _meteor().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {**{f"bleu{n}": float(b) for n, b in enumerate(bleu, 1)}, "meteor": float(meteor), "cider": float(cider),
            "rouge_l": float(rouge)}
