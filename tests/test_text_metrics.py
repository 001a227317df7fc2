"""Text metrics and the dialog metrics upstream reports beside F1, each on a case worked out by hand: BLEU-1..4,
METEOR and CIDEr-D of PTB-tokenised text, upstream's filtering, the `_w` variants, missing / redundant rates and
the semantic score. The tokenizer and METEOR run on Java, which CI has: these tests need it."""

import math

import pytest

from prospect.eval.matching import VideoMatch, aggregate
from prospect.eval.text_metrics import TEXT_METRICS, JavaNotFoundError, ptb_tokenize, text_scores

# METEOR 1.5's English parameters (Denkowski & Lavie 2014, task "rank"): alpha, beta, gamma, delta
ALPHA, BETA, GAMMA, DELTA = 0.85, 0.2, 0.6, 0.75


def test_ptb_tokenisation_as_upstream():
    # lower-cased, punctuation tokens dropped, quotes too (`` ''), "n't" split off; brackets become -lrb- / -rrb-,
    # which upstream's list ("-LRB-") misses after lower-casing, so they stay; one line per text
    assert ptb_tokenize(['He said "Hello," then left... (twice)', "Don't stop!", "a\nb", "x\r\ny", "...", ""]) == [
        "he said hello then left -lrb- twice -rrb-", "do n't stop", "a b", "x y", "", ""]


def test_bleu_worked_example():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat": clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 and
    # equal lengths (no brevity penalty): BLEU-n is the geometric mean of the first n
    s = text_scores([("The cat sat on the mat.", "the cat sat on a mat")])
    assert s["bleu1"] == pytest.approx(5 / 6, rel=1e-6)
    assert s["bleu2"] == pytest.approx((5 / 6 * 3 / 5) ** (1 / 2), rel=1e-6)
    assert s["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3), rel=1e-6)
    assert s["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4), rel=1e-6)
    # LCS "the cat sat on mat": ROUGE-L precision = recall = 5/6
    assert s["rouge_l"] == pytest.approx(5 / 6)
    # brevity penalty: 2 words against 6, exp(1 - 6/2); unigram and bigram precisions are 1
    s = text_scores([("the cat", "the cat sat on a mat")])
    assert (s["bleu1"], s["bleu2"]) == (pytest.approx(math.exp(-2), rel=1e-6), pytest.approx(math.exp(-2), rel=1e-6))


def test_meteor_worked_example():
    # matches the, cat, sat, on, mat (5 of 6 words each side); "the", "on", "a" are function words (weight
    # 1 - delta), the rest content words (delta): P = R = (3 delta + 2 (1 - delta)) / (3 delta + 3 (1 - delta)).
    # Two chunks ("the cat sat on", "mat") over 5 matches: penalty gamma (2/5)^beta
    p = r = (3 * DELTA + 2 * (1 - DELTA)) / 3
    fmean = p * r / (ALPHA * p + (1 - ALPHA) * r)
    expected = fmean * (1 - GAMMA * (2 / 5) ** BETA)
    assert text_scores([("The cat sat on the mat.", "the cat sat on a mat")])["meteor"] == pytest.approx(expected)
    # a complete match in one chunk has no fragmentation penalty
    assert text_scores([("the cat sat", "The cat sat.")])["meteor"] == pytest.approx(1.0)


def test_cider_d_worked_example():
    # two references with no n-gram in common: every n-gram has document frequency 1 of 2, idf log 2. The exact
    # pair has cosine 1 for n = 1..4 and no length penalty (10 points), the disjoint one 0: the mean is 5
    s = text_scores([("the cat sat on mats", "the cat sat on mats"), ("a dog ran far away", "big red bus goes home")])
    assert s["cider"] == pytest.approx(5.0)
    # one pair alone: idf log(1 / 1) = 0 for every n-gram, so CIDEr is 0 whatever the texts
    assert text_scores([("the cat", "the cat")])["cider"] == 0.0


def test_empty_references_are_dropped_and_empty_replies_kept():
    alone = text_scores([("The cat sat on the mat.", "the cat sat on a mat")])
    # a reference of punctuation only is empty once tokenised: upstream drops the pair
    assert text_scores([("The cat sat on the mat.", "the cat sat on a mat"), ("hello", "...")]) == alone
    assert text_scores([("hello", "...")]) == dict.fromkeys(TEXT_METRICS, 0.0) == text_scores([])
    # an empty reply stays and counts against: 2 of 2 unigrams right, but 2 words against 4, exp(1 - 4/2)
    s = text_scores([("the cat", "the cat"), ("...", "the cat")])
    assert s["bleu1"] == pytest.approx(math.exp(-1), rel=1e-6)


def test_text_metrics_need_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="no `java` is on PATH"):
        text_scores([("a", "a")])
    with pytest.raises(JavaNotFoundError, match="install a Java runtime"):
        ptb_tokenize(["a"])


def _match(pred: list[str], ref: list[str], pairs, redundant=(), missed=()) -> VideoMatch:
    return VideoMatch([(float(i), t) for i, t in enumerate(pred)], [(float(i), t) for i, t in enumerate(ref)],
                      list(pairs), list(redundant), list(missed))


def test_upstream_dialog_metrics_worked_example():
    # video a: three matches, scores 0.9 (good), 0.5 (not good: a good match is > 0.5) and 0.3;
    # video b: one good match (0.7), one redundant reply, two missed references
    a = _match(["The cat sat on the mat.", "zebra quartz", "quartz zebra"], ["the cat sat on a mat", "zebra", "x"],
               [(0, 0, 0.9), (1, 1, 0.5), (2, 2, 0.3)])
    b = _match(["open the fridge", "hello"], ["open the fridge", "y", "z"], [(0, 0, 0.7)], redundant=[1],
               missed=[1, 2])
    m = aggregate([a, b])
    matched, good, redundant, missed = 4, 2, 1, 2
    assert (m["matched"], m["good_matched"], m["redundant"], m["missed"]) == (matched, good, redundant, missed)
    assert m["precision"] == pytest.approx(good / (matched + redundant))
    assert m["recall"] == pytest.approx(good / (matched + missed))
    jaccard = good / (matched + missed + redundant)
    assert m["jaccard"] == pytest.approx(jaccard)
    # upstream's rates count every match, good or not
    assert m["missing_rate"] == pytest.approx(missed / (matched + missed))
    assert m["redundant_rate"] == pytest.approx(redundant / (matched + redundant))
    # upstream's semantic score: the mean score of the matches at or above 0.5 (0.5 included, 0.3 not)
    assert m["semantic_score"] == pytest.approx((0.9 + 0.5 + 0.7) / 3)
    # text metrics over the two good matches only: unigrams 5 of 6 and 3 of 3, equal lengths: BLEU-1 = 8/9
    assert m["bleu1"] == pytest.approx(8 / 9, rel=1e-6)
    assert m["bleu1_w"] == pytest.approx(8 / 9 * jaccard, rel=1e-6)
    good_pairs = [("The cat sat on the mat.", "the cat sat on a mat"), ("open the fridge", "open the fridge")]
    alone = text_scores(good_pairs)
    for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider"):
        assert m[k] == pytest.approx(alone[k]) and m[f"{k}_w"] == pytest.approx(alone[k] * jaccard), k
    assert "rouge_l_w" not in m  # ROUGE-L is ours; upstream weights its own metrics only
    # DST matching scores no text
    dst = aggregate([a, b], text_metrics=False)
    assert not {k for k in dst if k.startswith(("bleu", "meteor", "cider", "rouge"))}
    assert dst["missing_rate"] == m["missing_rate"]


def test_nothing_to_score_is_zero():
    m = aggregate([])
    assert all(m[k] == 0 for k in ("precision", "recall", "f1", "jaccard", "missing_rate", "redundant_rate",
                                   "semantic_score", "bleu4", "bleu4_w", "meteor", "cider_w"))
