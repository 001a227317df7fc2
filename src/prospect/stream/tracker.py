"""DstTracker: the dialog state of one stream, moved by the DST updates fed as context and by the ones the model
writes (parsed with prospect.data.dst; text that does not parse or fit the state is counted and ignored).

It does not decide when an update is written, nor render the state into a prompt.
"""

from __future__ import annotations

from prospect.data.dst import StepUpdate, TransitionError, apply_updates, parse_updates


class DstTracker:
    def __init__(self, state: dict[str, str]):
        self.state = dict(state)  # step id -> not_started | in_progress | completed
        self.malformed = 0  # generated updates that were ignored

    def follow(self, updates: list[StepUpdate]) -> None:
        """Updates given as context (the reference's turns): they must fit the state, else TransitionError."""
        self.state = apply_updates(self.state, updates)

    def apply(self, text: str) -> None:
        """A generated update: only parsed, valid updates change the state; anything else is counted and
        ignored."""
        try:
            self.state = apply_updates(self.state, parse_updates(text))
        except (ValueError, TransitionError):
            self.malformed += 1
