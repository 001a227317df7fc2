"""Dialog state tracking vocabulary: step states, transitions, and the text form of DST updates.

The text form (`S2->complete; S3->start`) is what the model learns to generate and what the streaming
tracker parses; both directions live here so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("not_started", "in_progress", "completed")
# transition -> (state it requires, state it leads to)
TRANSITIONS = {"start": ("not_started", "in_progress"), "complete": ("in_progress", "completed")}
UPDATE_SEPARATOR = "; "  # between the updates of one DST turn (one frame's decision)


@dataclass(frozen=True)
class StepUpdate:
    id: str
    transition: str  # "start" | "complete"


class TransitionError(ValueError):
    """An update that does not fit the current state (complete before start, start twice, unknown id)."""


def apply_updates(state: dict[str, str], updates: list[StepUpdate]) -> dict[str, str]:
    """State after `updates`, in order; raises TransitionError naming the offending update."""
    new = dict(state)
    for u in updates:
        if u.id not in new:
            raise TransitionError(f"unknown step id {u.id!r} (known: {', '.join(new) or 'none'})")
        if u.transition not in TRANSITIONS:
            raise TransitionError(f"unknown transition {u.transition!r} for {u.id} (use start or complete)")
        required, after = TRANSITIONS[u.transition]
        if new[u.id] != required:
            raise TransitionError(f"{u.id}->{u.transition} but {u.id} is {new[u.id]} (needs {required})")
        new[u.id] = after
    return new


def format_updates(updates: list[StepUpdate]) -> str:
    return UPDATE_SEPARATOR.join(f"{u.id}->{u.transition}" for u in updates)


def parse_updates(text: str) -> list[StepUpdate]:
    """Inverse of format_updates; raises ValueError on text that is not a list of `ID->transition`."""
    updates = []
    for part in text.split(UPDATE_SEPARATOR.strip()):
        step, sep, transition = part.strip().partition("->")
        if not sep or not step.strip() or transition.strip() not in TRANSITIONS:
            raise ValueError(f"not a DST update: {part.strip()!r}")
        updates.append(StepUpdate(step.strip(), transition.strip()))
    return updates
