"""Shared test data: hand-written clips in each supported format, written beside real frames files."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.frames import write_arrow_frames

SYSTEM = "You are a proactive assistant. Help the user with the task."

# A ProAssist prepared clip (docs/data-format.md): frames 11..17 of video "vid", two pushed turns.
PROASSIST = {
    "dataset": "ego4d", "video_uid": "vid", "clip_idx": 0, "frames_file": "frames/vid.arrow",
    "max_seq_len": 4096, "seq_len": 321, "num_tokens_per_img": 1, "use_img_sep_token": False,
    "start_frame_idx": 11, "end_frame_idx": 19, "fps": 2,
    "metadata": {"user_type": "talk_some", "user_id": "talk_some_1", "task_goal": "make tea",
                 "knowledge": "1. Boil water. 2. Steep the tea.", "progress": None, "add_knowledge": True,
                 "has_summary": False, "summary_only": False, "quality": 4.0},
    "conversation": [
        {"role": "system", "content": SYSTEM},
        {"role": "frames", "start": 11, "end": 15},
        {"role": "user", "time": 7.8, "content": "I want to make tea.", "labels": ""},
        {"role": "system", "content": "Task knowledge: 1. Boil water. 2. Steep the tea."},
        # 7.9 s is frame floor(15.8) = 15 = the previous end, so upstream pushed the turn one frame later
        {"role": "frames", "start": 15, "end": 16},
        {"role": "assistant", "time": 7.9, "content": "Great, first boil some water.",
         "labels": "initiative|instruction", "progress": "The time elapsed is 7.9 seconds."},
        {"role": "frames", "start": 16, "end": 19},
        {"role": "assistant", "time": 9.6, "content": "Now steep the tea.", "labels": "initiative|instruction",
         "progress": "Water is boiled."},
    ],
}


def proassist_split(clip_idx: int) -> dict:
    """A later / non-final split: summary in the first system turn, summarize request and summary at the end."""
    rec = copy.deepcopy(PROASSIST)
    rec["clip_idx"] = clip_idx
    rec["metadata"].update(has_summary=True, progress="Water boiled, tea steeping.")
    rec["conversation"][0]["content"] = f"{SYSTEM} Progress so far: kettle filled. Task knowledge: 1. Boil water."
    rec["conversation"][-1]["time"] = 9.1  # frame 17 so that the summary frames turn [18, 19) fits
    rec["conversation"][-2]["end"] = 18
    rec["conversation"] += [
        {"role": "system", "content": "Please summarize the progress."},
        {"role": "frames", "start": 18, "end": 19},
        {"role": "assistant", "content": "Water boiled, tea steeping."},
    ]
    return rec


# A DST clip (docs/data-format.md), with the per-turn frame fields deliberately wrong (they must be ignored).
DST = {
    "video_uid": "asm", "inferred_goal": "Assemble a toy car",
    "inferred_knowledge": "1. Attach the chassis. 2. Attach the wheels. 3. Add the cabin.",
    "conversation": [
        {"role": "system", "content": SYSTEM, "start_frame": 0, "end_frame": 1},
        {"role": "DST_UPDATE", "content": [{"id": "S1", "transition": "start"}], "time": 10.2,
         "start_frame": 3, "end_frame": 5, "dst_state": {"S1": "not_started"}},
        {"role": "user", "content": "I want to assemble a toy car.", "time": 10.2, "dst_state": {"S1": "in_progress"}},
        {"role": "assistant", "content": "First attach the chassis.", "time": 10.2, "start_frame": 99},
        {"role": "DST_UPDATE", "content": [{"id": "S1", "transition": "complete"},
                                           {"id": "S2", "transition": "start"}], "time": 14.9},
        {"role": "assistant", "content": "Now the wheels.", "time": 15.0, "speaking": 1, "dst_update": 0},
        {"role": "DST_UPDATE", "content": [{"id": "S2", "transition": "complete"}], "time": 19.95,
         "dst_state": {"S1": "completed", "S2": "in_progress"}},
    ],
    "dst": [
        {"type": "step", "id": "S1", "name": "Attach the chassis.", "start_ts": 10.2, "end_ts": 14.9},
        {"type": "step", "id": "S2", "name": "Attach the wheels.", "start_ts": 14.9, "end_ts": 19.95},
        {"type": "step", "id": "S3", "name": "Add the cabin.", "start_ts": 19.95, "end_ts": 22.0},
    ],
    "frames_file": "frames/asm.arrow", "start_frame_idx": 19, "end_frame_idx": 44, "seq_len": 500,
    "dataset": "assembly101", "clip_idx": 0, "max_seq_len": 4096, "num_tokens_per_img": 1, "fps": 2,
    "quality": 3.5,
}


def write_frames(root: Path, name: str, n: int) -> Path:
    path = root / "frames" / f"{name}.arrow"
    write_arrow_frames(path, (Image.new("RGB", (16, 16), (i % 256, 0, 0)) for i in range(n)))
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A dataset root with frames for the clips above (vid: 30 frames, asm: 50 frames)."""
    write_frames(tmp_path, "vid", 30)
    write_frames(tmp_path, "asm", 50)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The embedded tiny SmolVLM + tokenizer, built once per test session from a small corpus."""
    from prospect.model.tiny import build_tiny

    corpus = ["First, place the red circle.", "Next, place the blue square.", "S1->start; S2->complete",
              "I want to build the comet board.", "Careful, the circle should be red."] * 20
    return build_tiny(tmp_path_factory.mktemp("tiny"), corpus)


REPO = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolVLM-256M's language model offline (model=smolvlm_256m_local), built where that config builds it:
    under models/, one download and one build per checkout."""
    from prospect.model.factory import build_backbone

    out = REPO / "models" / "smolvlm-256m-smollm2"
    build_backbone("smollm2", out)
    return out
CONF = REPO / "conf"
# conf/paths resolves under the project root, as train.py and eval.py set it
if not os.environ.get("PROSPECT_ROOT"):
    os.environ["PROSPECT_ROOT"] = str(REPO)


QUICK_ENCODER = "all-MiniLM-L6-v2"  # the tests' sentence encoder: upstream's default is a 404 MB download


def compose_train(tmp_path: Path, overrides: list[str], run: str = "run"):
    """The configs users run plus `+debug=fast` (conf/debug: shrunk for CPU) and the quick sentence encoder,
    writing under tmp_path."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # `overrides` come after the folders (they may name others) and before +debug=fast, as users type it;
        # every key=value override applies after the configs merge, so theirs win over the debug config's
        return compose("train", overrides=[
            f"paths.output_dir={tmp_path / run}", f"data.root={tmp_path / 'data'}",
            f"model.backbone.tiny_dir={tmp_path / 'tiny'}", f"callbacks.streaming_validation.encoder={QUICK_ENCODER}",
            *overrides, "+debug=fast"])


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Two epochs of `+experiment=perframe` on the shrunk configs: (folder, metrics)."""
    from prospect.train import train

    tmp = tmp_path_factory.mktemp("train")
    cfg = compose_train(tmp, ["+experiment=perframe", "trainer.max_epochs=2"])
    return tmp, train(cfg)


@pytest.fixture
def clip(tmp_path):
    """A 60-frame clip of random frames with two steps and two user turns (the streaming tests' clip)."""
    rng, n = np.random.default_rng(), 60
    write_arrow_frames(tmp_path / "frames" / "v.arrow",
                       (Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)))
    return Clip(id="v/0", video=Video("frames/v.arrow", 2.0, 0, n), root=tmp_path,
                task=Task(steps=[Step("S1", "place the red circle"), Step("S2", "place the blue square")],
                          initial_state={"S1": "not_started", "S2": "not_started"}),
                events=[Event("user", 1.2, 1, "I want to build the comet board."),
                        Event("user", 10.3, 19, "What next?")])
