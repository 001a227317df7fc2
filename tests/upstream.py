"""Fixtures shaped exactly like the upstream files (docs/data-format.md): a ProAssist dataset folder with a
`dialog-klg_val_L0_I1` whole-video file holding three dialogs of one video, a `dialog-klg-sum_train_L4096_I1`
file holding one of them in two splits (knowledge, summary, later-split prompt) and a `summary_train_L4096_I1`
file (summary only); a DST clip file whose first step starts at the clip start, a clip as the DST fork writes it
(two DST_UPDATE turns per step change) and the fork's split segments of it. Frames turns are written as
upstream's convert_conversation_time_to_index writes them: a turn at t gets the frames up to floor(t * fps)
(exclusive), a turn landing on the previous turn's frame is pushed one frame later, a turn past the video's end
is attached to its last frame.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from PIL import Image

from prospect.data.frames import write_arrow_frames

# two of upstream's proactive system prompts (mmassist/datasets/prepare/prompts.py), sampled per clip
PROMPT_A = ("You are a proactive assistant. Pay close attention to the user's actions and provide relevant "
            "information proactively.")
PROMPT_B = ("You are a helpful and proactive assistant. Always be ready to assist and provide useful information "
            "ahead of time.")
KNOWLEDGE = "1. Fill the kettle. 2. Boil the water. 3. Steep the tea."
KNOWLEDGE_TURN = {"role": "system", "content": f"Task knowledge: {KNOWLEDGE}"}
VIDEO_FRAMES = 40  # 20 s at 2 fps
PROGRESS = ["The user wants tea and is filling the kettle.", "The kettle is filled and the water is boiling.",
            "The water boiled; the user asked if it is hot enough.", "The tea bag is in the cup.", "Tea is ready."]


def _assistant(time: float, text: str, progress: int, labels: str = "initiative|instruction") -> dict:
    return {"role": "assistant", "time": time, "content": text, "labels": labels, "progress": PROGRESS[progress]}


def _user(time: float, text: str) -> dict:
    return {"role": "user", "time": time, "content": text, "labels": ""}


def _frames(start: int, end: int) -> dict:
    return {"role": "frames", "start": start, "end": end}


# talk_some_1, the whole video. Frame comments: the turn is decided after frame `end - 1`.
TALK_SOME = [
    {"role": "system", "content": PROMPT_A},
    _frames(0, 2), _user(1.2, "I want to make tea."), KNOWLEDGE_TURN,  # knowledge right after the first user turn
    _frames(2, 3), _assistant(1.3, "Great, first fill the kettle.", 0),  # floor(2.6) = 2 is the user's: pushed to 3
    _frames(3, 12), _assistant(6.0, "Now boil the water.", 1),
    _frames(12, 16), _user(8.4, "Is it hot enough?"),
    _frames(16, 17), _assistant(8.6, "Yes, it is boiling now.", 2, "responsive|feedback"),
    _frames(17, 28), _assistant(14.1, "Put the tea bag in the cup.", 3),
    _frames(28, 39), _assistant(25.0, "Enjoy your tea.", 4, "initiative|feedback"),  # 25 s > 20 s: last frame
]
NO_TALK = [
    {"role": "system", "content": PROMPT_B},
    _frames(0, 2), _user(1.2, "I want to make tea."), KNOWLEDGE_TURN,
    _frames(2, 3), _assistant(1.3, "Hi! Start by filling the kettle.", 0),
    _frames(3, 12), _assistant(6.0, "Next, boil the water.", 1),
    _frames(12, 28), _assistant(14.1, "Now put the tea bag in the cup.", 3),
]
TALK_MORE = [
    {"role": "system", "content": PROMPT_A},
    _frames(0, 2), _user(1.2, "I want to make tea."), KNOWLEDGE_TURN,
    _frames(2, 3), _assistant(1.3, "Sure, fill the kettle first.", 0),
    _frames(3, 8), _user(4.0, "Where is the kettle?"),
    _frames(8, 9), _assistant(4.2, "It is on the counter.", 0, "responsive|instruction"),  # 8 is the user's: pushed
    _frames(9, 12), _assistant(6.0, "Now boil the water.", 1),
    _frames(12, 16), _user(8.4, "Is it hot enough?"),
    _frames(16, 17), _assistant(8.6, "Yes.", 2, "responsive|feedback"),
]


def _clip(conversation: list, user_type: str, user_idx: int, clip_idx: int = 0, progress: str | None = None,
          has_summary: bool = False, max_seq_len: int = 0) -> dict:
    frames = [t for t in conversation if t["role"] == "frames"]
    return {
        "dataset": "ego4d", "video_uid": "abc", "clip_idx": clip_idx, "frames_file": "frames/abc.arrow",
        "max_seq_len": max_seq_len, "seq_len": 100 + 20 * len(conversation), "num_tokens_per_img": 1,
        "use_img_sep_token": False, "start_frame_idx": frames[0]["start"], "end_frame_idx": frames[-1]["end"],
        "conversation": copy.deepcopy(conversation), "fps": 2,
        "metadata": {"user_type": user_type, "user_id": f"{user_type}_{user_idx}", "task_goal": "make tea",
                     "knowledge": KNOWLEDGE, "progress": progress, "add_knowledge": True, "has_summary": has_summary,
                     "summary_only": False, "quality": 5.0},
    }


def l0_records() -> list[dict]:
    """`dialog-klg_val_L0_I1.jsonl`: the three dialogs of video abc (one per simulated user), unsplit."""
    return [_clip(NO_TALK, "no_talk", 0), _clip(TALK_SOME, "talk_some", 1), _clip(TALK_MORE, "talk_more", 2)]


def split_records() -> list[dict]:
    """`dialog-klg-sum_train_L4096_I1.jsonl`: talk_some_1 in two splits, as upstream's split_conversation cuts it
    after "Now boil the water." (frame 11): the first split ends with [request][the next frame][the progress],
    the second starts with a new prompt + that progress + the knowledge, and re-shows 5 s of context (frames 6 to
    15) before the next turn. no_talk_0 fits unsplit."""
    first = TALK_SOME[:8] + [{"role": "system", "content": "Please summarize the progress."}, _frames(12, 13),
                             {"role": "assistant", "content": PROGRESS[1]}]
    later = [{"role": "system", "content": f"{PROMPT_B} {PROGRESS[1]} Task knowledge: {KNOWLEDGE}"},
             _frames(6, 16), *TALK_SOME[9:]]
    return [_clip(NO_TALK, "no_talk", 0, max_seq_len=4096),
            _clip(first, "talk_some", 1, 0, PROGRESS[1], has_summary=True, max_seq_len=4096),
            _clip(later, "talk_some", 1, 1, PROGRESS[4], max_seq_len=4096)]


SYSTEM = "You are a proactive assistant helping with task completion."
# A DST clip (the DST extension of ProAssist data): S1 starts at the clip start (t = 2.0 s, frame 4 is the first),
# i.e. before any frame; the last reply comes after the clip's end (16 s > 15 s).
DST_CLIP = {
    "video_uid": "toy", "clip_idx": 0, "dataset": "assembly101", "inferred_goal": "Assemble a toy car",
    "inferred_knowledge": "1. Attach the chassis. 2. Attach the wheels. 3. Add the cabin.",
    "frames_file": "frames/toy.arrow", "start_frame_idx": 4, "end_frame_idx": 30, "fps": 2, "seq_len": 400,
    "max_seq_len": 4096, "num_tokens_per_img": 1, "quality": 4.0,
    "dst": [{"type": "step", "id": "S1", "name": "Attach the chassis.", "start_ts": 2.0, "end_ts": 6.1},
            {"type": "step", "id": "S2", "name": "Attach the wheels.", "start_ts": 6.1, "end_ts": 12.3},
            {"type": "step", "id": "S3", "name": "Add the cabin.", "start_ts": 12.3, "end_ts": 14.5}],
    "conversation": [
        {"role": "system", "content": SYSTEM},
        {"role": "DST_UPDATE", "time": 2.0, "content": [{"id": "S1", "transition": "start"}],
         "dst_state": {"S1": "not_started", "S2": "not_started", "S3": "not_started"}},
        {"role": "user", "time": 2.6, "content": "I want to assemble the toy car.", "start_frame": 0},
        {"role": "assistant", "time": 2.6, "content": "Start by attaching the chassis.", "speaking": 1},
        {"role": "DST_UPDATE", "time": 6.1, "content": [{"id": "S1", "transition": "complete"},
                                                       {"id": "S2", "transition": "start"}],
         "dst_state": {"S1": "in_progress", "S2": "not_started", "S3": "not_started"}},
        {"role": "assistant", "time": 6.2, "content": "Now attach the wheels."},
        {"role": "DST_UPDATE", "time": 12.3, "content": [{"id": "S2", "transition": "complete"},
                                                        {"id": "S3", "transition": "start"}]},
        {"role": "assistant", "time": 12.4, "content": "Finally, add the cabin."},
        {"role": "DST_UPDATE", "time": 14.5, "content": [{"id": "S3", "transition": "complete"}]},
        {"role": "assistant", "time": 16.0, "content": "All done, well built!"},
    ],
}


# A DST clip as the DST fork writes it (its own sample, custom/docs/training/6.1-prospect_training_data.json, scaled
# down): one DST_UPDATE turn per transition, so every step change is two turns at one time; the user, the first
# DST update and the answer at one time; per-turn `start_frame` / `end_frame` (ignored) and `labels`; `dst_state`
# before each turn, naming only the steps seen so far.
FORK_PROMPT = PROMPT_B
_DST_LABELS = {"start": "initiative|dst_update,dst_start,steps_1",
               "complete": "initiative|dst_update,dst_complete,steps_1"}


def _fork_dst(time: float, step: str, transition: str, state: dict) -> dict:
    f = int(time * 2) - 1
    return {"role": "DST_UPDATE", "content": [{"id": step, "transition": transition}], "time": time,
            "start_frame": f, "end_frame": f + 2, "dst_state": dict(state), "labels": _DST_LABELS[transition]}


def _fork_say(role: str, time: float, text: str, state: dict) -> dict:
    f = int(time * 2) - 1
    return {"role": role, "content": text, "time": time, "labels": f"{role}|generic", "start_frame": f,
            "end_frame": f + 2, "dst_state": dict(state)}


_DONE1 = {"S1": "completed", "S2": "in_progress"}
_DONE2 = {"S1": "completed", "S2": "completed", "S3": "in_progress"}
FORK_TURNS = [
    {"role": "system", "content": FORK_PROMPT, "start_frame": 0, "end_frame": 1, "labels": "system|generic"},
    _fork_dst(2.2, "S1", "start", {"S1": "not_started"}),
    _fork_say("user", 2.2, "I want to assemble the toy car.", {"S1": "in_progress"}),
    _fork_say("assistant", 2.2, "Great! First, attach the chassis parts together.", {"S1": "in_progress"}),
    _fork_dst(5.3, "S1", "complete", {"S1": "in_progress"}),
    _fork_dst(5.3, "S2", "start", {"S1": "completed", "S2": "not_started"}),
    _fork_say("assistant", 5.3, "Now attach the wheels to the chassis.", _DONE1),
    _fork_say("assistant", 7.1, "Screw the other wheels on too.", _DONE1),
    _fork_dst(10.4, "S2", "complete", _DONE1),
    _fork_dst(10.4, "S3", "start", {"S1": "completed", "S2": "completed", "S3": "not_started"}),
    _fork_say("assistant", 10.4, "Finally, add the cabin.", _DONE2),
    _fork_dst(13.6, "S3", "complete", _DONE2),
]
FORK_CLIP = {
    "video_uid": "toy", "inferred_goal": DST_CLIP["inferred_goal"],
    "inferred_knowledge": DST_CLIP["inferred_knowledge"], "video_labels": {}, "conversation": FORK_TURNS,
    "dst": DST_CLIP["dst"], "frames_file": "frames/toy.arrow",
    "start_frame_idx": 3, "end_frame_idx": 28, "seq_len": 300, "dataset": "assembly101", "clip_idx": 0,
    "max_seq_len": 4096, "num_tokens_per_img": 1, "fps": 2, "quality": 3.5,
}
_STATE_AT_SPLIT = {"S1": "completed", "S2": "in_progress", "S3": "not_started"}


def fork_segments(dst_context: dict | None = None) -> list[dict]:
    """FORK_CLIP as the fork's ConversationSplitter splits it after "Screw the other wheels on too.": segment 0 gets
    the state *at its end* as `initial_dst_state` (top level and metadata) and appended to its system prompt;
    segment 1 starts with the same-time overlap (that reply again) after an inserted system prompt, and its
    per-turn states come from a blank state. With `dst_context`, segment 1 starts with an older fork's
    DST_CONTEXT turn holding that state."""
    stats = {"turn_count": 8, "estimated_tokens": 3000, "frame_range": [3, 15], "is_split": False}
    first = copy.deepcopy({**FORK_CLIP, "conversation": FORK_TURNS[:8], "end_frame_idx": 15, "segment_stats": stats,
                           "initial_dst_state": _STATE_AT_SPLIT,
                           "metadata": {"initial_dst_state": _STATE_AT_SPLIT, "has_initial_dst_state": True}})
    first["conversation"][0]["content"] += ("\n\nDialogue State:\nCurrent step states - Step S1: completed, Step S2: "
                                            "in_progress, Step S3: not_started")
    later_turns = copy.deepcopy(FORK_TURNS[7:])
    later_turns[1]["dst_state"] = {"S1": "not_started", "S2": "not_started", "S3": "not_started"}  # from blank
    context = [{"role": "DST_CONTEXT", "content": f"Previous state: {dst_context}", "time": 7.1, "start_frame": 13,
                "end_frame": 14}] if dst_context else []
    later = copy.deepcopy({**FORK_CLIP, "clip_idx": 1, "start_frame_idx": 13,
                           "conversation": [{"role": "system", "content": "You are a helpful assistant."}, *context,
                                            *later_turns],
                           "segment_stats": {**stats, "frame_range": [13, 28], "is_split": True},
                           "metadata": {"initial_dst_state": _STATE_AT_SPLIT, "has_initial_dst_state": True}})
    return [first, later]


SUMMARY_PROMPT = "Watch the user's actons and track the task progress."  # sic, upstream's summarize_sys_prompt


def summary_records() -> list[dict]:
    """`summary_train_L4096_I1.jsonl`: talk_some_1's first split as upstream's summary_only preparation writes it:
    its own prompt, no knowledge, the assistant turns removed (their frames turns merged), then [request][one
    frame][the progress]. The last split ends at the video's end, has no summary and is left out."""
    conversation = [{"role": "system", "content": SUMMARY_PROMPT}, _frames(0, 2), _user(1.2, "I want to make tea."),
                    _frames(2, 12), {"role": "system", "content": "Please summarize the progress."}, _frames(12, 13),
                    {"role": "assistant", "content": PROGRESS[1]}]
    record = _clip(conversation, "talk_some", 1, 0, PROGRESS[1], has_summary=True, max_seq_len=4096)
    record["metadata"].update(add_knowledge=False, summary_only=True)
    return [record]


def _write_frames(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    write_arrow_frames(path, (Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)))


def write_upstream(root: Path) -> dict[str, Path]:
    """The files above under `root`: ego4d/{prepared,frames}/... and dst/{clips.json,frames/}."""
    prepared = root / "ego4d" / "prepared"
    prepared.mkdir(parents=True)
    _write_frames(root / "ego4d" / "frames" / "abc.arrow", VIDEO_FRAMES, 0)
    _write_frames(root / "dst" / "frames" / "toy.arrow", 40, 1)
    paths = {"l0": prepared / "dialog-klg_val_L0_I1.jsonl", "splits": prepared / "dialog-klg-sum_train_L4096_I1.jsonl",
             "summary": prepared / "summary_train_L4096_I1.jsonl", "dst": root / "dst" / "clips.json",
             "fork": root / "dst" / "fork.json", "fork_segments": root / "dst" / "fork_segments.json"}
    for key, records in (("l0", l0_records()), ("splits", split_records()), ("summary", summary_records())):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["dst"].write_text(json.dumps([DST_CLIP]))
    paths["fork"].write_text(json.dumps(FORK_CLIP, indent=4))  # one clip per file, as the fork's sample
    paths["fork_segments"].write_text(json.dumps(fork_segments(), indent=4))
    return paths
