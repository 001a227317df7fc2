"""DstTracker: moves one stream's dialog state by the DST updates the model writes (parsed with
prospect.data.dst; text that does not parse or fit the state is counted and ignored). Updates fed as context
move it through PromptContext.advance, as in training.

It does not decide when an update is written, nor render the state into a prompt.
"""

from __future__ import annotations

from prospect.data.dst import TransitionError, apply_updates, parse_updates
from prospect.data.sequence import PromptContext


class DstTracker:
    def __init__(self, context: PromptContext):
        self.context = context  # its state: step id -> not_started | in_progress | completed
        self.malformed = 0  # generated updates that were ignored

    def apply(self, text: str) -> None:
        """A generated update: only parsed, valid updates change the state; anything else is counted and
        ignored."""
        try:
            self.context.state = apply_updates(self.context.state, parse_updates(text))
        except (ValueError, TransitionError):
            self.malformed += 1
