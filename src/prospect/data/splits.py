"""Whole videos from split clips, for streaming evaluation: each dialog streamed once, from its first frame to its
last, without the reference summaries that later splits carry in their system prompt (they leak the answer).

ProAssist writes a long dialog as splits (`clip_idx` 0, 1, ... in `dialog-*_L4096_*` files): a later split starts
with a system turn holding a new prompt, the previous progress summary and the knowledge, and its frames may
overlap the previous split's (upstream re-shows 5-20 s of context); a non-final split of a `-sum` file ends with
a summary request and its answer. Merging keeps the first split's prompt and every other turn but the summaries;
the frames run from the first split's start to the last split's end. The `_L0_` files hold the same dialogs
unsplit (docs/data-format.md). Clips of other sources pass through unchanged.
"""

from __future__ import annotations

from dataclasses import replace

from prospect.data.checks import check_clip
from prospect.data.clip import Clip
from prospect.data.errors import ClipFormatError, Problems

_SUMMARY_KINDS = ("summarize_request", "summary")


def whole_videos(clips: list[Clip]) -> list[Clip]:
    """One clip per dialog: ProAssist splits merged (in the order each dialog first appears), others as given."""
    groups: dict[str, list[Clip]] = {}
    order: list[str | Clip] = []
    for clip in clips:
        dialog = clip.metadata.get("dialog") if clip.metadata.get("source_format") == "proassist" else None
        if dialog is None:
            order.append(clip)
            continue
        if dialog not in groups:
            order.append(dialog)
        groups.setdefault(dialog, []).append(clip)
    return [item if isinstance(item, Clip) else merge_splits(groups[item]) for item in order]


def merge_splits(splits: list[Clip]) -> Clip:
    """The splits of one dialog as one clip; a single unsplit clip comes back as it is."""
    splits = sorted(splits, key=lambda c: c.metadata["clip_idx"])
    first = splits[0]
    indices = [c.metadata["clip_idx"] for c in splits]
    problems = Problems(f"dialog {first.metadata['dialog']}", None, first.id)  # clips do not know their file
    if indices != list(range(len(splits))):
        problems.add("clip_idx", f"the dialog's splits are {indices}; a whole video needs 0..{len(splits) - 1}, "
                     "each once (evaluate on the _L0_ file, or give every split)")
        raise ClipFormatError(problems)
    if len(splits) == 1 and not any(e.kind in _SUMMARY_KINDS for e in first.events):
        return first
    events = [e for k, c in enumerate(splits) for e in c.events
              if e.kind not in _SUMMARY_KINDS and not (k > 0 and e.kind == "prompt")]
    merged = replace(first, video=replace(first.video, end_frame=max(c.video.end_frame for c in splits)),
                     events=events, metadata={**first.metadata, "merged_splits": len(splits)})
    check_clip(merged, problems)
    if problems:
        raise ClipFormatError(problems)
    return merged
