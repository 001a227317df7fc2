"""The one sequence builder: a clip becomes token ids, frame slots, decision positions and the targets of the
four losses. Training and streaming inference both render through these methods, so prompts are identical.

Layout (SmolVLM chat tokens; k image tokens per frame):

    <|im_start|>System: {prompt}[ {progress}][ {knowledge turn}][\nGoal: ..][\nKnowledge: ..][\nSteps: ..\nState: ..]
        <end_of_utterance>           prompt: the clip's own system prompt (kind `prompt`), else ours
    [turns decided before the first frame]
    per frame:  <fake_token_around_image><global-img><image>*k<fake_token_around_image>
                [<|im_start|>User: {text}<end_of_utterance>]...      inputs decided after this frame
                                                                     <- decision position (last input token)
                [<|im_start|>DST: S1->complete; S2->start<end_of_utterance>]     DST-gen loss on the body
                [<|im_start|>Assistant: {text}<end_of_utterance>]                LM loss on the body
                [<|im_start|>System: Please summarize the progress.<end_of_utterance>]   a summary request

The heads read the hidden state at the decision position: speaking = an assistant turn follows this frame,
DST update = a DST turn follows. Headers (`<|im_start|>Assistant:`) are inputs that the decision triggers; the
body and its end-of-turn token are learned. Within a frame, inputs (user, system) come before outputs (DST,
then assistant), as in streaming; a summary request comes last. A summary is trained as upstream trains it,
[request][one frame][summary]. Frames without a head target: the one that carries a requested summary (the
model did not decide to speak there), one that a user turn follows with nothing said (upstream leaves it
unlabeled: the answer comes a frame later), and every frame of a summary-only clip (`metadata.summary_only`,
upstream's `summary_*` files). Long clips are split at frame boundaries: a sequence cut short ends with that
request, the next frame and the progress so far; the next one starts from the prompt with the DST state, the
progress and the knowledge turn, as upstream's later splits and upstream's summarize restart do. A clip cut as our
summarize or dst_state strategy restarts (RESTARTS) starts each later sequence with that prompt (dst_state's carries
no progress: a sequence just stops) and then the reply the context keeps (PromptContext.kept_reply) as an
assistant turn, input only, so that after a restart the model still reads which step it named last.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from prospect.data.clip import Clip, Event, Task
from prospect.data.dst import apply_updates
from prospect.data.formats.proassist import KNOWLEDGE_PREFIX

END_OF_TURN = "<end_of_utterance>"
PAD = "<|im_end|>"  # SmolVLM's pad token (SmolLM2's end of turn): never END_OF_TURN, which is attended to and learned
TURN_START = "<|im_start|>"
IMAGE = "<image>"
AROUND_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "dst": "DST"}
INPUT_ROLES = ("system", "user")
IGNORE = -100
# Words the prompt layout itself uses (for training a tokenizer that encodes them compactly).
SUMMARIZE_REQUEST = "Please summarize the progress."  # the system turn that asks for a summary
RESTARTS = ("summarize", "dst_state")  # the restarted caches a cut training clip can show (SequenceBuilder.build)
LENGTH_CUT = "upstream_summarize"  # how a clip too long for max_seq_len is cut: as upstream writes its later splits
PROMPT_WORDS = ["System:", "User:", "Assistant:", "DST:", "Goal:", "Knowledge:", "Steps:", "State:", "not_started",
                "in_progress", "completed", "->start", "->complete", SUMMARIZE_REQUEST]
# ours, where a config or a clip gives none (model.system_prompt: null)
DEFAULT_SYSTEM_PROMPT = ("You are a proactive assistant. Watch the user's video, keep track of the task steps, "
                         "and speak when guidance helps.")


@dataclass
class TokenSequence:
    """One training sequence (a clip, or one split of a long clip)."""

    clip_id: str
    fps: float
    input_ids: list[int] = field(default_factory=list)
    lm_targets: list[int] = field(default_factory=list)  # target of the prediction AT each position, or IGNORE
    dst_gen_targets: list[int] = field(default_factory=list)  # same, for DST update text
    frames: list[int] = field(default_factory=list)  # absolute frame index of each frame slot, in order
    decision_positions: list[int] = field(default_factory=list)  # per frame
    speaking: list[int] = field(default_factory=list)  # per frame: 1 if an assistant turn follows
    dst_update: list[int] = field(default_factory=list)  # per frame: 1 if a DST turn follows
    supervised: list[int] = field(default_factory=list)  # per frame: 0 where no head target (see the layout)

    def __len__(self) -> int:
        return len(self.input_ids)

    def append(self, ids: list[int], learned: str | None = None) -> None:
        """Append tokens; with `learned` ("lm" or "dst_gen") every appended token is a target of that loss."""
        for targets, kind in ((self.lm_targets, "lm"), (self.dst_gen_targets, "dst_gen")):
            if self.input_ids:  # the previous position predicts the first appended token
                targets[-1] = ids[0] if learned == kind else targets[-1]
            targets.extend(ids[1:] if learned == kind else [IGNORE] * (len(ids) - 1))
            targets.append(IGNORE)
        self.input_ids.extend(ids)

    def extend(self, piece: TokenSequence) -> None:
        """Append a piece rendered on its own (it starts with a frame marker, which no loss learns)."""
        offset = len(self)
        self.input_ids += piece.input_ids
        self.lm_targets += piece.lm_targets
        self.dst_gen_targets += piece.dst_gen_targets
        self.frames += piece.frames
        self.decision_positions += [p + offset for p in piece.decision_positions]
        self.speaking += piece.speaking
        self.dst_update += piece.dst_update
        self.supervised += piece.supervised


class SequenceBuilder:
    """Renders clips for a tokenizer with `tokens_per_frame` image tokens per frame."""

    def __init__(self, tokenizer, tokens_per_frame: int, system_prompt: str | None = None,
                 max_seq_len: int | None = None):
        """`system_prompt`: None for ours (DEFAULT_SYSTEM_PROMPT)."""
        self.tokenizer = tokenizer
        self.tokens_per_frame = tokens_per_frame
        self.system_prompt = system_prompt or DEFAULT_SYSTEM_PROMPT
        self.max_seq_len = max_seq_len
        ids = tokenizer.convert_tokens_to_ids([AROUND_IMAGE, GLOBAL_IMAGE, IMAGE, END_OF_TURN])
        self.around_image_id, self.global_image_id, self.image_id, self.end_of_turn_id = ids
        self._frame_ids = [self.around_image_id, self.global_image_id] + [self.image_id] * tokens_per_frame + [
            self.around_image_id]

    # -- pieces shared with the streaming generator --------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_ids(self, task: Task, state: dict[str, str], progress: str | None = None,
                   system_prompt: str | None = None, knowledge: str | None = None) -> list[int]:
        """The system turn: the prompt (the clip's, else ours), then, after a restart, the progress summary and
        the knowledge turn in upstream's layout (`{prompt} {progress} {knowledge}`), then the task's goal,
        knowledge, steps and DST state."""
        lines = [" ".join(t for t in (system_prompt or self.system_prompt, progress, knowledge) if t)]
        if task.goal:
            lines.append(f"Goal: {task.goal}")
        if task.knowledge:
            lines.append(f"Knowledge: {task.knowledge}")
        if task.steps:
            lines.append("Steps: " + "; ".join(f"{s.id} = {s.name}" for s in task.steps))
            lines.append("State: " + "; ".join(f"{k} {v}" for k, v in state.items()))
        return self.encode(f"{TURN_START}System: " + "\n".join(lines) + END_OF_TURN)

    def context_prompt_ids(self, task: Task, context: PromptContext) -> list[int]:
        """The prompt a sequence or stream starts from, or restarts from: the context's prompt, progress and
        knowledge turn so far (a later split starts with its own), and the state."""
        return self.prompt_ids(task, context.state, context.progress, context.system_prompt, context.knowledge)

    def restart_ids(self, task: Task, context: PromptContext) -> list[int]:
        """What our summarize and dst_state restart from: the prompt, then the reply the context keeps as an
        assistant turn (none before any reply)."""
        kept = self.turn_ids_of("assistant", context.kept_reply) if context.kept_reply else []
        return self.context_prompt_ids(task, context) + kept

    def frame_ids(self) -> list[int]:
        return list(self._frame_ids)

    def header_ids(self, role: str) -> list[int]:
        return self.encode(f"{TURN_START}{ROLE_NAMES[role]}:")

    def body_ids(self, text: str) -> list[int]:
        """A turn's text and its end-of-turn token: what is learned, and what generation produces."""
        return self.encode(f" {text}") + [self.end_of_turn_id]

    def turn_ids(self, event: Event) -> list[int]:
        return self.turn_ids_of(event.role, event.text)

    def turn_ids_of(self, role: str, text: str) -> list[int]:
        return self.header_ids(role) + self.body_ids(text)

    # -- whole clips ----------------------------------------------------------------------------------------
    def build(self, clip: Clip, max_seq_len: int | None = None, restart: str = LENGTH_CUT) -> list[TokenSequence]:
        """The clip as one sequence, or several when it exceeds max_seq_len (this call's, else the builder's),
        each cut as the cache of the `restart` strategy is before and after its restart. `upstream_summarize`
        (upstream's later splits) and `summarize`: a sequence cut short ends with the summary request, the next
        frame and the progress so far as the (learned) answer; the next one starts from the prompt with the
        state, that progress and the knowledge. `dst_state`: a sequence just stops; the next one starts from the
        prompt with the state and the knowledge, and no progress but the clip's own (that strategy generates
        none). Ours (`summarize`, `dst_state`) then go on with the kept reply (restart_ids)."""
        if restart not in (LENGTH_CUT, *RESTARTS):
            raise ValueError(f"restart must be one of {', '.join((LENGTH_CUT, *RESTARTS))}, got {restart!r}")
        max_seq_len = max_seq_len or self.max_seq_len
        head_targets = not clip.metadata.get("summary_only")  # upstream's summary files train summaries alone
        context = PromptContext.of(clip)
        by_frame = clip.events_by_frame(lambda e: e.kind != "prompt")  # the prompt is rendered as such

        seq = self._start(clip, self.context_prompt_ids(clip.task, context))
        before = by_frame.get(clip.video.start_frame - 1, [])
        self._add_turns(seq, before)
        context.advance(before)
        kept_progress = context.progress  # what a dst_state restart carries: the stream is given these turns too
        sequences = [seq]
        measured, room = None, 0  # the progress whose closing was measured, and its tokens (it must fit too)
        for f in clip.frame_indices:
            events = by_frame.get(f, [])
            piece = TokenSequence(clip.id, clip.fps)  # rendered alone first, to split before it if needed
            self._add_frame(piece, f, events, head_targets)
            if max_seq_len and restart != "dst_state" and context.progress != measured:  # re-rendered only when
                measured = context.progress                                                 # the progress changes
                room = len(self._closing(clip, f, measured)) if measured else 0
            if max_seq_len and len(seq) + len(piece) + room > max_seq_len and seq.frames:
                if measured:
                    seq.extend(self._closing(clip, f, measured))
                restarted = replace(context, progress=kept_progress) if restart == "dst_state" else context
                seq = self._start(clip, self.context_prompt_ids(clip.task, restarted) if restart == LENGTH_CUT
                                  else self.restart_ids(clip.task, restarted))
                sequences.append(seq)
            if max_seq_len and len(seq) + len(piece) + room > max_seq_len:
                raise ValueError(f"clip {clip.id}: frame {f} and its turns need {len(seq) + len(piece) + room} "
                                 f"tokens with the prompt, more than max_seq_len={max_seq_len}")
            seq.extend(piece)
            context.advance(events)
        return sequences

    def _closing(self, clip: Clip, frame: int, progress: str) -> TokenSequence:
        """[summary request][frame][progress as the requested, learned summary]: how a cut sequence ends."""
        closing = TokenSequence(clip.id, clip.fps)
        closing.append(self.turn_ids_of("system", SUMMARIZE_REQUEST))
        self._add_frame(closing, frame, [Event("assistant", 0.0, frame, progress, kind="summary")])
        return closing

    def _start(self, clip: Clip, prompt_ids: list[int]) -> TokenSequence:
        seq = TokenSequence(clip.id, clip.fps)
        seq.append(prompt_ids)
        return seq

    def _add_frame(self, seq: TokenSequence, frame: int, events: list[Event], head_targets: bool = True) -> None:
        seq.append(self.frame_ids())
        seq.frames.append(frame)
        inputs = [e for e in events if e.role in INPUT_ROLES and e.kind != "summarize_request"]
        self._add_turns(seq, inputs)
        seq.decision_positions.append(len(seq) - 1)
        outputs = [e for e in events if e.role == "dst"] + [e for e in events if e.role == "assistant"]
        seq.speaking.append(int(any(e.role == "assistant" and e.kind != "summary" for e in outputs)))
        seq.dst_update.append(int(any(e.role == "dst" for e in outputs)))
        requested = any(e.kind == "summary" for e in outputs)
        # upstream leaves the frame a user turn follows unlabeled: the answer comes one frame later
        asked = not outputs and any(e.role == "user" for e in inputs)
        seq.supervised.append(int(head_targets and not requested and not asked))
        self._add_turns(seq, outputs + [e for e in events if e.kind == "summarize_request"])

    def _add_turns(self, seq: TokenSequence, events: list[Event]) -> None:
        for e in events:
            seq.append(self.header_ids(e.role))
            learned = {"assistant": "lm", "dst": "dst_gen"}.get(e.role)
            seq.append(self.body_ids(e.text), learned=learned)

    def render(self, seq: TokenSequence) -> str:
        """Human-readable text of a sequence (image tokens collapsed), for inspection and tests."""
        text = self.tokenizer.decode(seq.input_ids)
        return text.replace(IMAGE * self.tokens_per_frame, f"<image x{self.tokens_per_frame}>")


@dataclass
class PromptContext:
    """What a restarted prompt carries, followed through a clip's events: the DST state, the latest progress
    (an assistant turn's `progress`, or a summary), the knowledge turn, and the clip's system prompt; and the
    reply our restarts keep after it (`kept_reply`): the last one said at a frame with a DST update (the
    instruction for the step that began there; a correction comes without one), or, while none has been, the
    last reply."""

    state: dict[str, str]
    system_prompt: str | None = None
    progress: str | None = None
    knowledge: str | None = None
    kept_reply: str | None = None
    kept_at_update: bool = False  # kept_reply was said with a DST update

    @classmethod
    def of(cls, clip: Clip) -> PromptContext:
        """The context at the clip's start. A later split's prompt already carries a progress (its `progress`) and
        the knowledge turn, `{prompt} {progress} Task knowledge: ...`: they start the context, so that a restart
        replaces that progress, as upstream writes the next split."""
        context = cls(clip.task.start_state(), clip.system_prompt)
        if context.system_prompt is not None:
            prompt = clip.events[0]
            head, sep, knowledge = prompt.text.partition(f" {KNOWLEDGE_PREFIX}")
            if prompt.progress and head.endswith(f" {prompt.progress}"):
                head, context.progress = head[:-len(prompt.progress) - 1], prompt.progress
            context.system_prompt, context.knowledge = head, KNOWLEDGE_PREFIX + knowledge if sep else None
        return context

    def advance(self, events: list[Event]) -> None:
        """Follow the events decided at one frame (or before the first)."""
        replies = [e.text for e in events if e.role == "assistant" and e.kind != "summary"]
        if replies:
            self.said(replies[-1], any(e.role == "dst" for e in events))
        for e in events:
            if e.role == "dst":
                self.state = apply_updates(self.state, e.updates)
            elif e.kind == "knowledge":
                self.knowledge = e.text
            elif e.kind == "summary":
                self.progress = e.text
            elif e.role == "assistant" and e.progress:
                self.progress = e.progress

    def said(self, reply: str, with_update: bool) -> None:
        """A reply said at a frame, `with_update` when a DST update was said there too."""
        if with_update or not self.kept_at_update:
            self.kept_reply, self.kept_at_update = reply, with_update


def decision_mask(seq: TokenSequence, neg_rate: float, rng, mode: str = "perframe") -> list[bool]:
    """Which frames count in the head losses. Positive frames (either head) always count, frames whose turn was
    requested never. `perframe`: each negative frame with probability `neg_rate`; `perturn`: one random negative
    frame per silent gap between turns. `rng` is a numpy Generator (re-seeded each epoch by the caller, so
    negatives are re-drawn)."""
    positive = [bool(s or d) for s, d in zip(seq.speaking, seq.dst_update, strict=True)]
    if mode == "perframe":
        mask = [p or bool(rng.random() < neg_rate) for p in positive]
    elif mode == "perturn":
        mask, gap = list(positive), []
        for i, p in enumerate(positive + [True]):  # a sentinel closes the last gap
            if p and gap:
                mask[gap[rng.integers(len(gap))]] = True
                gap = []
            elif not p and seq.supervised[i]:
                gap.append(i)
    else:
        raise ValueError(f"supervision mode must be 'perframe' or 'perturn', got {mode!r}")
    return [m and bool(s) for m, s in zip(mask, seq.supervised, strict=True)]
