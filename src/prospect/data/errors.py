"""Errors for bad annotation input, naming file, line, clip, field and reason.

Checks collect every problem into a `Problems` list (the validator prints them all); loading raises one
`ClipFormatError` carrying the same problems. Where upstream data is known to bend a rule (a turn past the last
frame), the clip is read as upstream reads it and the problem is a *warning*: printed, never fatal.
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
    warning: bool = False  # the clip is still read (upstream bends this rule); otherwise an error

    def __str__(self) -> str:
        where = [self.file]
        if self.line is not None:
            where.append(f"line {self.line}" if isinstance(self.line, int) else self.line)
        if self.clip is not None:
            where.append(f"clip {self.clip}")
        head = ("warning: " if self.warning else "") + ", ".join(where)
        return f"{head}, {self.field}: {self.reason}" if self.field else f"{head}: {self.reason}"


class ClipFormatError(ValueError):
    """Bad clip input. `problems` lists every problem found; the message shows them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in clip input:\n  {shown}")


class ClipWarning(UserWarning):
    """A clip read as upstream reads it although it bends one of our rules (see Problem.warning)."""


class Problems(list):
    """Errors found while reading one record (the list), and its warnings (`warnings`); `file`, `line` and
    `clip` fix where each added problem is."""

    def __init__(self, file: str, line: int | str | None = None, clip: str | None = None):
        super().__init__()
        self.file, self.line, self.clip = file, line, clip
        self.warnings: list[Problem] = []

    def add(self, field: str | None, reason: str) -> None:
        self.append(Problem(self.file, self.line, self.clip, field, reason))

    def warn(self, field: str | None, reason: str) -> None:
        self.warnings.append(Problem(self.file, self.line, self.clip, field, reason, warning=True))
