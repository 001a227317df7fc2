"""What a matched reply says, not just how close its sentence embedding is: on the synthetic tasks, whether an
instruction names the right step and whether a turn is of the right type (docs/evaluation.md, Content).

The semantic match forgives "Next, place the blue triangle." for "Next, place the yellow diamond." (their
embeddings are close); these two do not.
"""

from __future__ import annotations

from collections.abc import Sequence

from prospect.data.synthetic import read_turn
from prospect.eval.matching import VideoMatch


def content_scores(matches: Sequence[VideoMatch]) -> dict[str, float]:
    """Over the matched pairs whose reference is a synthetic turn: `step_naming_accuracy` (of those that are
    instructions, the share whose reply names the same colour and shape) and `turn_type_accuracy` (the share whose
    reply is of the same type: first / next / finally / correction / done). Empty without synthetic references."""
    kinds, steps = [], []
    for m in matches:
        for i, k, _ in m.pairs:
            ref, pred = read_turn(m.ref[k][1]), read_turn(m.pred[i][1])
            if ref is None:
                continue
            kinds.append(pred is not None and pred.kind == ref.kind)
            if ref.kind in ("first", "next", "finally"):
                steps.append(pred is not None and (pred.colour, pred.shape) == (ref.colour, ref.shape))
    out = {}
    if kinds:
        out["turn_type_accuracy"] = sum(kinds) / len(kinds)
    if steps:
        out["step_naming_accuracy"] = sum(steps) / len(steps)
    return out
