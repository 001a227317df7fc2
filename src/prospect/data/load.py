"""`load_clips`: read any supported annotation file, detecting its format record by record.

Supported: our JSONL (docs/data-format.md), upstream ProAssist prepared JSONL, and DST clips as JSON (one clip
or a list) or JSONL. Every problem in the file is collected; loading raises one ClipFormatError with all of
them (and emits the warnings as ClipWarning), the validator prints them.

A ProAssist file holds one dialog per simulated user of the same video, with the same `video_uid` and
`clip_idx`: they are distinct clips (ids carry the user, or the order of appearance), not duplicates.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

from prospect.data.checks import UPSTREAM_NAMES, FieldNames, check_frames
from prospect.data.clip import FORMAT, Clip
from prospect.data.errors import ClipFormatError, ClipWarning, Problem, Problems
from prospect.data.formats.dst_clips import DstClipReader, is_dst_clip
from prospect.data.formats.ours import read_ours
from prospect.data.formats.proassist import is_proassist, read_proassist

Reader = Callable[[dict, Problems, "Path | None"], "Clip | None"]
ClipCheck = Callable[[Clip, Problems, FieldNames], None]


def load_clips(path: str | Path, root: str | Path | None = None, check_frames: bool = False) -> list[Clip]:
    """All clips in `path`; raises ClipFormatError listing every problem. `root` is the folder relative
    frames sources are under (default: the file's folder; for ProAssist files in a `prepared/` folder, its
    parent, as upstream lays out `<dataset>/prepared/*.jsonl` beside `<dataset>/frames/`)."""
    clips, problems = read_clips(path, root, check_frames)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise ClipFormatError(errors)
    for p in problems:
        warnings.warn(str(p), ClipWarning, stacklevel=2)
    return clips


def read_clips(path: str | Path, root: str | Path | None = None,
               check_frames: bool = False, extra_check: ClipCheck | None = None) -> tuple[list[Clip], list[Problem]]:
    """Clips that read cleanly, and every problem found in the file (errors and warnings, in file order).
    `extra_check` runs last, on each clip without problems so far (validate --decode: FrameDecodeCheck)."""
    path = Path(path)
    problems: list[Problem] = []
    clips: list[Clip] = []
    first_seen: dict[str, str] = {}
    dialogs: dict[str, int] = {}  # ProAssist: dialogs seen per id, for those that no user names apart
    read_dst = DstClipReader()  # one per file: a DST segment starts from the state its predecessors end in
    for line, record in _records(path, problems):
        p = Problems(str(path), line)
        clip = _read_record(record, p, path, root, check_frames, extra_check, read_dst)
        if clip is not None and _detect(record, path, read_dst)[0] is read_proassist:
            _number_dialog(clip, dialogs)
        if clip is not None and clip.id in first_seen:
            p.add("id", f"duplicate clip id (first seen at {first_seen[clip.id]})")
        elif clip is not None:
            first_seen[clip.id] = f"line {line}" if isinstance(line, int) else str(line)
        problems.extend(p + p.warnings)
        if clip is not None and not p:
            clips.append(clip)
    return clips, problems


def _number_dialog(clip: Clip, seen: dict[str, int]) -> None:
    """The n-th ProAssist dialog with an id already taken becomes `<id>/<n>` (its dialog key likewise), so that
    the n-th dialog of every split of a video gets the same key."""
    n = seen[clip.id] = seen.get(clip.id, 0) + 1
    if n > 1:
        clip.id, clip.metadata["dialog"] = f"{clip.id}/{n}", f"{clip.metadata['dialog']}/{n}"


def _records(path: Path, problems: list[Problem]):
    """(line, record) pairs: one per JSONL line, or (None, item) for each clip of a JSON document."""
    if not path.exists():
        problems.append(Problem(str(path), None, None, None, "file does not exist"))
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(Problem(str(path), e.lineno, None, None, f"invalid JSON: {e.msg} (column {e.colno})"))
            return
        for i, item in enumerate(doc if isinstance(doc, list) else [doc]):
            yield (None, item) if isinstance(doc, dict) else (f"item {i}", item)
        return
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(Problem(str(path), n, None, None, f"invalid JSON: {e.msg} (column {e.colno})"))


def _read_record(record: object, problems: Problems, path: Path, root: str | Path | None,
                 check: bool, extra_check: ClipCheck | None, read_dst: DstClipReader) -> Clip | None:
    if not isinstance(record, dict):
        problems.add(None, f"expected a JSON object per clip, got {type(record).__name__}")
        return None
    reader, names, default_root = _detect(record, path, read_dst)
    clip_root = Path(root) if root is not None else default_root
    clip = reader(record, problems, clip_root)
    if clip is not None and check and not problems:
        check_frames(clip, problems, names)
    if clip is not None and extra_check is not None and not problems:
        extra_check(clip, problems, names)
    return clip


def _detect(record: dict, path: Path, read_dst: DstClipReader) -> tuple[Reader, FieldNames, Path]:
    if "format" in record or "events" in record:
        return read_ours, FieldNames(), path.parent
    if is_dst_clip(record):
        return read_dst, UPSTREAM_NAMES, path.parent
    if is_proassist(record) or "conversation" in record:
        upstream = path.parent.parent if path.parent.name == "prepared" else path.parent
        return read_proassist, UPSTREAM_NAMES, upstream
    return _unknown, FieldNames(), path.parent


def _unknown(record: dict, problems: Problems, root: Path | None) -> None:
    keys = ", ".join(sorted(record)[:8])
    problems.add(None, f"not a clip in any supported format (keys: {keys}); expected our format "
                 f"({FORMAT!r}), a ProAssist prepared clip, or a DST clip")
