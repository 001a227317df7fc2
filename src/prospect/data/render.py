"""What the model sees, as text: a rendered sequence with image tokens collapsed, the learned spans marked and
each frame's head labels, one line per frame (runs of silent frames folded). Behind `python -m prospect.data
render`, the quickest way to check one's own data.

    frame 14 @ 7.5s [-]: <|im_start|>User: I want to make tea.<end_of_utterance>
    frame 15 @ 8.0s [speak]: <|im_start|>Assistant:{lm: Great, first boil some water.<end_of_utterance>}

Labels: `speak` (an assistant turn follows), `dst` (a DST update follows), `-` (a negative), `requested` (a
summary was asked for: no head target), `unlabeled` (no head target: a user turn follows with nothing said, or a
summary-only clip). `{lm: ...}` / `{dst: ...}` are the tokens the LM / DST-gen losses learn.
"""

from __future__ import annotations

from prospect.data.sequence import IGNORE, SequenceBuilder, TokenSequence


def describe(builder: SequenceBuilder, seq: TokenSequence) -> str:
    """The sequence as annotated text (see the module docstring)."""
    frame = builder.frame_ids()
    starts, p = [], 0  # where each frame's marker starts
    while p < len(seq) and len(starts) < len(seq.frames):
        if seq.input_ids[p:p + len(frame)] == frame:
            starts.append(p)
            p += len(frame)
        else:
            p += 1
    bounds = [0, *starts, len(seq)]
    lines = [_text(builder, seq, bounds[0], bounds[1])]  # the prompt and the turns before the first frame
    silent: list[str] = []  # heads of the run of silent frames with one label
    silent_label = "-"
    for k, f in enumerate(seq.frames):
        body = _text(builder, seq, starts[k] + len(frame), bounds[k + 2])
        labels = [name for name, on in (("speak", seq.speaking[k]), ("dst", seq.dst_update[k])) if on]
        label = " ".join(labels) or "-"
        if not seq.supervised[k]:
            label = "requested" if "{lm:" in body else "unlabeled"  # a summary is learned where it was asked for
        head = f"frame {f} @ {f / seq.fps:.1f}s"
        if body or label != silent_label:  # a run of silent frames ends
            lines += _fold(silent, silent_label)
            silent, silent_label = [], label
        if body:
            lines.append(f"{head} [{label}]: {body}")
        else:
            silent.append(head)
    return "\n".join(lines + _fold(silent, silent_label))


def _fold(silent: list[str], label: str) -> list[str]:
    if len(silent) <= 1:
        return [f"{h} [{label}]" for h in silent]
    return [f"{silent[0].split(' @')[0]} .. {silent[-1].split(' @')[0].removeprefix('frame ')} [{label}] "
            f"({len(silent)} silent frames)"]


def _text(builder: SequenceBuilder, seq: TokenSequence, start: int, end: int) -> str:
    """Tokens [start, end) decoded, each run of learned tokens wrapped as {lm: ...} or {dst: ...}."""
    out, run, kind = [], [], None
    for p in range(start, end):
        learned = None
        if p > 0 and seq.lm_targets[p - 1] != IGNORE:
            learned = "lm"
        elif p > 0 and seq.dst_gen_targets[p - 1] != IGNORE:
            learned = "dst"
        if learned != kind and run:
            out.append(_span(builder, run, kind))
            run = []
        run.append(seq.input_ids[p])
        kind = learned
    if run:
        out.append(_span(builder, run, kind))
    return "".join(out)


def _span(builder: SequenceBuilder, ids: list[int], kind: str | None) -> str:
    text = builder.tokenizer.decode(ids)
    return f"{{{kind}:{text}}}" if kind else text
