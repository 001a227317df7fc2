"""Errors for bad annotation input, naming file, line, clip, field and reason.

Checks collect every problem into a `Problems` list (the validator prints them all); loading raises one
`ClipFormatError` carrying the same problems.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | str | None  # 1-based line in a JSONL file, "item i" in a JSON list, None for one JSON clip
    clip: str | None  # clip id, when known
    field: str | None  # path of the offending field in the source record, e.g. conversation[7].time
    reason: str

    def __str__(self) -> str:
        where = [self.file]
        if self.line is not None:
            where.append(f"line {self.line}" if isinstance(self.line, int) else self.line)
        if self.clip is not None:
            where.append(f"clip {self.clip}")
        head = ", ".join(where)
        return f"{head}, {self.field}: {self.reason}" if self.field else f"{head}: {self.reason}"


class ClipFormatError(ValueError):
    """Bad clip input. `problems` lists every problem found; the message shows them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in clip input:\n  {shown}")


class Problems(list):
    """Problems found while reading one record; `where` fixes file, line and clip for what is added."""

    def __init__(self, file: str, line: int | str | None = None, clip: str | None = None):
        super().__init__()
        self.file, self.line, self.clip = file, line, clip

    def add(self, field: str | None, reason: str) -> None:
        self.append(Problem(self.file, self.line, self.clip, field, reason))
