"""Procedurally generated task videos: the embedded default dataset (docs/synthetic-tasks.md).

A video shows a board with one outlined slot per task step (slots the task does not use stay blank, so how
many steps remain is visible). A step in progress shows its object as an outline with a jittering hand; a
completed step shows it filled. Transitions and occasional mistake cues happen at random
times and are visible only in the frames. Output uses the real on-disk formats (frames Arrow + clips JSONL),
so the whole real data path is exercised. It is not a model of real video, only something a tiny
vision-language model can learn on a CPU in minutes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate, apply_updates
from prospect.data.frames import write_arrow_frames
from prospect.data.timebase import frame_at

VERSION = 5  # of the rendering and events: data written by another version is regenerated
SPLITS = {"train": 0, "val": 1, "test": 2}  # split name -> code in the per-video RNG seed
# As many shapes and colours as slots: a task uses each at most once, so no two of its step names share a word
# the model could copy from the wrong step (docs/synthetic-tasks.md, "Step names").
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = {
    "red": (225, 45, 40),
    "green": (50, 185, 70),
    "blue": (55, 95, 235),
    "yellow": (240, 215, 45),
    "pink": (240, 90, 200),
    "purple": (150, 60, 215),
}
GOAL_WORDS = ("sunrise", "harbor", "garden", "rocket", "castle", "meadow", "lantern", "river", "comet", "forest")
USER_TEMPLATES = ("I want to {goal}.", "Can you help me {goal}?", "Let's {goal} today.")

GRID_COLS, GRID_ROWS = 3, 2
MAX_STEPS = GRID_COLS * GRID_ROWS
_MARGIN = 0.05  # board inset, as a fraction of the image size
_BACKGROUND = (150, 120, 90)  # table around the board
_BOARD = (45, 50, 60)  # dark, so every palette colour stands out
_SLOT_LINE = (100, 108, 125)  # outline of the slots the task uses
_HAND = (232, 186, 150)
_WARNING = (255, 140, 0)  # not a palette colour: the marker is never mistaken for an object
_FLASH = (255, 255, 255)  # the one-frame ring marking the moment a step starts or completes
_MUTED = ((118, 118, 118), (138, 124, 104), (100, 110, 116), (132, 132, 120))
_SUPERSAMPLE = 4
_HAND_JITTER = 0.012  # largest hand offset per axis, as a fraction of the image size (0.8 px at 64 px)
_CUE_MARGIN = 3  # frames kept between a mistake cue and either end of its step (clear of the one-frame rings)
_CUE_FRAMES = (2, 4)
CUE_MARKS = ("triangle", "ring", "board")  # a mistake cue's first frame: a small orange triangle, an orange ring
                                           # as large as a step's white one, or the board's edge in orange, seen by
                                           # every quarter of the frame (docs/synthetic-tasks.md)

_LABEL_INSTRUCTION = "initiative|instruction"
_LABEL_CORRECTION = "initiative|correction"
_LABEL_FEEDBACK = "initiative|feedback"


def slot_box(slot: int, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1; end exclusive) of slot `slot` (0-based; step S<k> lives in slot k - 1)."""
    if not 0 <= slot < MAX_STEPS:
        raise ValueError(f"slot {slot} outside [0, {MAX_STEPS})")
    col, row = slot % GRID_COLS, slot // GRID_COLS
    inner = 1 - 2 * _MARGIN
    x0 = _MARGIN + inner * col / GRID_COLS
    y0 = _MARGIN + inner * row / GRID_ROWS
    return (round(x0 * image_size), round(y0 * image_size),
            round((x0 + inner / GRID_COLS) * image_size), round((y0 + inner / GRID_ROWS) * image_size))


@dataclass(frozen=True)
class _StepPlan:
    shape: str
    colour: str
    start: int  # first frame showing the step in progress
    end: int  # first frame showing it completed
    cue: tuple[int, int, str] | None  # mistake cue: first frame, end frame (exclusive), wrong colour

    @property
    def name(self) -> str:
        return f"place the {self.colour} {self.shape}"


@dataclass(frozen=True)
class _Distractor:
    shape: str
    colour: tuple[int, int, int]
    radius: float
    position: np.ndarray  # [2] at frame 0, pixels
    velocity: np.ndarray  # [2] pixels per frame

    def centre(self, frame: int, size: int) -> tuple[float, float]:
        """Position at `frame`, bouncing off the image borders (a triangle wave)."""
        lo, hi = self.radius, size - self.radius
        p = (self.position + self.velocity * frame - lo) % (2 * (hi - lo))
        p = np.where(p > hi - lo, 2 * (hi - lo) - p, p) + lo
        return float(p[0]), float(p[1])


def synthesize(out_dir: Path, num_videos: int, seed: int, *, val_videos: int | None = None,
               test_videos: int | None = None, **settings) -> dict[str, list[Clip]]:
    """Write `num_videos` train videos (val and test: max(2, num_videos // 4) each unless given) to `out_dir`.
    `settings` are the keyword arguments of `_generation_settings` (image_size, fps, step_seconds, ...).

    Layout: frames/<video_id>.arrow, {train,val,test}.jsonl (one clip per video), manifest.json. Video i of a
    split depends only on (seed, split, i, generation settings), so changing one split's count leaves the
    others byte-identical.
    """
    manifest = synthetic_manifest(num_videos, seed, val_videos=val_videos, test_videos=test_videos, **settings)
    counts, settings = manifest["videos"], _generation_settings(**settings)
    _check_settings(counts, **settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips: dict[str, list[Clip]] = {}
    for split, count in counts.items():
        split_settings = _split_settings(split, **settings)
        clips[split] = [_make_video(out_dir, split, i, seed, **split_settings) for i in range(count)]
        lines = [json.dumps(clip.to_dict(root=out_dir)) + "\n" for clip in clips[split]]
        (out_dir / f"{split}.jsonl").write_text("".join(lines))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return clips


def synthetic_manifest(num_videos: int, seed: int, *, val_videos: int | None = None,
                       test_videos: int | None = None, **settings) -> dict:
    """What manifest.json holds for these arguments: the video counts per split and every setting."""
    default_eval = max(2, num_videos // 4)
    counts = {"train": num_videos, "val": default_eval if val_videos is None else val_videos,
              "test": default_eval if test_videos is None else test_videos}
    manifest = {"generator": "prospect.data.synthetic", "version": VERSION, "seed": seed, "videos": counts,
                **_generation_settings(**settings)}
    return json.loads(json.dumps(manifest))  # tuples as JSON lists, as read back from the file


def ensure_synthetic(out_dir: Path, num_videos: int, seed: int, **kwargs) -> bool:
    """Generate the data unless `out_dir` already holds exactly it (same manifest); True if generated."""
    out_dir = Path(out_dir)
    path = out_dir / "manifest.json"
    if path.exists() and json.loads(path.read_text()) == synthetic_manifest(num_videos, seed, **kwargs):
        return False
    if not path.exists() and out_dir.exists() and any(out_dir.iterdir()):  # never overwrite someone's data
        raise FileExistsError(f"{out_dir} holds files but no synthetic manifest.json: synthetic data is only "
                              "(re)generated into an empty folder or one it generated before (is data.root a real "
                              "dataset combined with synthetic settings?)")
    if (out_dir / "frames").exists():  # videos of other settings must not linger beside the new ones
        shutil.rmtree(out_dir / "frames")
    synthesize(out_dir, num_videos, seed, **kwargs)
    return True


def _generation_settings(image_size: int = 64, fps: float = 2.0, num_steps: tuple[int, int] = (3, 5),
                         step_seconds: tuple[float, float] = (4.0, 12.0),
                         lead_seconds: tuple[float, float] = (2.0, 4.0),
                         tail_seconds: tuple[float, float] = (2.0, 4.0), mistake_prob: float = 0.3,
                         noise_std: float = 6.0, cue_mark: str = "triangle",
                         eval_num_steps: tuple[int, int] | None = None,
                         eval_step_seconds: tuple[float, float] | None = None,
                         eval_mistake_prob: float | None = None) -> dict:
    """The generation settings and their defaults, in one place. `cue_mark` is what marks a mistake cue's
    first frame (CUE_MARKS). `eval_num_steps` / `eval_step_seconds` / `eval_mistake_prob` replace num_steps /
    step_seconds / mistake_prob in the val and test splits (long held-out streams); None: the same."""
    return dict(image_size=image_size, fps=fps, num_steps=tuple(num_steps), step_seconds=tuple(step_seconds),
                lead_seconds=tuple(lead_seconds), tail_seconds=tuple(tail_seconds), mistake_prob=mistake_prob,
                noise_std=noise_std, cue_mark=cue_mark, eval_num_steps=tuple(eval_num_steps or num_steps),
                eval_step_seconds=tuple(eval_step_seconds or step_seconds),
                eval_mistake_prob=mistake_prob if eval_mistake_prob is None else eval_mistake_prob)


def _split_settings(split: str, eval_num_steps: tuple[int, int], eval_step_seconds: tuple[float, float],
                    eval_mistake_prob: float, **settings) -> dict:
    """The settings one split's videos are drawn with."""
    if split != "train":
        settings.update(num_steps=eval_num_steps, step_seconds=eval_step_seconds, mistake_prob=eval_mistake_prob)
    return settings


def _check_settings(counts: dict[str, int], image_size: int, fps: float, num_steps: tuple[int, int],
                    step_seconds: tuple[float, float], lead_seconds: tuple[float, float],
                    tail_seconds: tuple[float, float], mistake_prob: float, noise_std: float, cue_mark: str,
                    eval_num_steps: tuple[int, int], eval_step_seconds: tuple[float, float],
                    eval_mistake_prob: float) -> None:
    if min(counts.values()) < 0:
        raise ValueError(f"video counts must be >= 0, got {counts}")
    if image_size < 16:
        raise ValueError(f"image_size {image_size} is too small to draw the slots (use >= 16)")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    for name, prob in (("mistake_prob", mistake_prob), ("eval_mistake_prob", eval_mistake_prob)):
        if not 0 <= prob <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    if cue_mark not in CUE_MARKS:
        raise ValueError(f"cue_mark must be one of {CUE_MARKS}, got {cue_mark!r}")
    for name, (lo, hi) in (("num_steps", num_steps), ("eval_num_steps", eval_num_steps)):
        if not 1 <= lo <= hi <= MAX_STEPS:
            raise ValueError(f"{name} {(lo, hi)} must satisfy 1 <= low <= high <= {MAX_STEPS}")
    for name, (lo, hi) in (("step_seconds", step_seconds), ("eval_step_seconds", eval_step_seconds),
                           ("lead_seconds", lead_seconds), ("tail_seconds", tail_seconds)):
        if not 0 < lo <= hi or round(lo * fps) < 1:
            raise ValueError(f"{name} {(lo, hi)} must satisfy 0 < low <= high and last at least one frame")


def _frames(rng: np.random.Generator, seconds: tuple[float, float], fps: float) -> int:
    """Random whole number of frames for a duration drawn from `seconds` (inclusive range)."""
    return int(rng.integers(round(seconds[0] * fps), round(seconds[1] * fps) + 1))


def _event_time(rng: np.random.Generator, frame: int, fps: float) -> float:
    """A time inside the decision interval of `frame`: the event is decided right after that frame."""
    time = round((frame + 1 + rng.uniform(0.0, 0.9)) / fps, 2)
    assert frame_at(time, fps) == frame, (time, frame, fps)
    return time


def _plan_steps(rng: np.random.Generator, num_steps: tuple[int, int], step_seconds: tuple[float, float],
                lead: int, fps: float, mistake_prob: float) -> list[_StepPlan]:
    k = int(rng.integers(num_steps[0], num_steps[1] + 1))
    colours = list(COLOURS)
    shapes, step_colours = rng.permutation(SHAPES)[:k], rng.permutation(colours)[:k]
    steps, start = [], lead
    for shape, colour in zip(shapes.tolist(), step_colours.tolist(), strict=True):
        duration = _frames(rng, step_seconds, fps)
        end = start + duration
        cue = None
        room = duration - 2 * _CUE_MARGIN
        if rng.random() < mistake_prob and room >= _CUE_FRAMES[0]:
            length = int(rng.integers(_CUE_FRAMES[0], min(_CUE_FRAMES[1], room) + 1))
            first = int(rng.integers(start + _CUE_MARGIN, end - _CUE_MARGIN - length + 1))
            wrong = str(rng.choice([c for c in colours if c != colour]))
            cue = (first, first + length, wrong)
        steps.append(_StepPlan(shape, colour, start, end, cue))
        start = end
    return steps


def _progress(steps: list[_StepPlan], state: dict[str, str]) -> str:
    """The step in progress, which the last instruction named. The completed steps are left to the state the
    restarted prompt carries: a model writing them miscounted, and a summary that contradicts the state sent the
    stream to the wrong step (docs/synthetic-tasks.md, "Summaries")."""
    doing = [s.name for s, st in zip(steps, state.values(), strict=True) if st == "in_progress"]
    return f"In progress: {', '.join(doing) or 'none'}."


@dataclass(frozen=True)
class SyntheticTurn:
    """What an assistant turn of the synthetic tasks says: its type and the piece it names (colour, shape)."""

    kind: str  # first | next | finally | correction | done
    colour: str | None = None
    shape: str | None = None


_INSTRUCTION = re.compile(r"(First|Next|Finally), place the (\w+) (\w+)\.")
_CORRECTION = re.compile(r"Careful, the (\w+) should be (\w+)\.")
_DONE = re.compile(r"All steps are done\. The \w+ board is finished\.")


def read_turn(text: str) -> SyntheticTurn | None:
    """The synthetic phrasing of `text` (as _events writes it), or None when it is not one of them."""
    text = text.strip()
    if m := _INSTRUCTION.fullmatch(text):
        return SyntheticTurn(m[1].lower(), m[2], m[3])
    if m := _CORRECTION.fullmatch(text):
        return SyntheticTurn("correction", m[2], m[1])
    if _DONE.fullmatch(text):
        return SyntheticTurn("done")
    return None


def _instruction(index: int, steps: list[_StepPlan]) -> str:
    prefix = "First" if index == 0 else "Finally" if index == len(steps) - 1 else "Next"
    return f"{prefix}, {steps[index].name}."


def _events(rng: np.random.Generator, steps: list[_StepPlan], goal: str, word: str, user_frame: int,
            fps: float) -> list[Event]:
    """Time-ordered events: the user's goal, then a DST update and an instruction at every transition frame,
    and a correction at the first frame of each mistake cue."""
    ids = [f"S{k + 1}" for k in range(len(steps))]
    state = dict.fromkeys(ids, "not_started")
    user_text = str(rng.choice(USER_TEMPLATES)).format(goal=goal)
    events = [Event("user", _event_time(rng, user_frame, fps), user_frame, user_text)]
    for k, step in enumerate(steps):
        if k == 0:
            events += _transition(rng, steps, state, step.start, [StepUpdate(ids[0], "start")],
                                  _instruction(0, steps), _LABEL_INSTRUCTION, fps)
        if step.cue is not None:
            frame = step.cue[0]
            events.append(Event("assistant", _event_time(rng, frame, fps), frame,
                                f"Careful, the {step.shape} should be {step.colour}.", labels=_LABEL_CORRECTION,
                                progress=_progress(steps, state)))
        if k + 1 < len(steps):
            events += _transition(rng, steps, state, step.end,
                                  [StepUpdate(ids[k], "complete"), StepUpdate(ids[k + 1], "start")],
                                  _instruction(k + 1, steps), _LABEL_INSTRUCTION, fps)
        else:
            events += _transition(rng, steps, state, step.end, [StepUpdate(ids[k], "complete")],
                                  f"All steps are done. The {word} board is finished.", _LABEL_FEEDBACK, fps)
    return events


def _transition(rng: np.random.Generator, steps: list[_StepPlan], state: dict[str, str], frame: int,
                updates: list[StepUpdate], text: str, label: str, fps: float) -> list[Event]:
    """The DST update and the assistant turn decided after `frame`; updates `state` in place."""
    state.update(apply_updates(state, updates))
    time = _event_time(rng, frame, fps)
    return [Event("dst", time, frame, updates=updates),
            Event("assistant", time, frame, text, labels=label, progress=_progress(steps, state))]


def _make_video(out_dir: Path, split: str, index: int, seed: int, *, image_size: int, fps: float,
                num_steps: tuple[int, int], step_seconds: tuple[float, float], lead_seconds: tuple[float, float],
                tail_seconds: tuple[float, float], mistake_prob: float, noise_std: float, cue_mark: str) -> Clip:
    rng = np.random.default_rng([seed, SPLITS[split], index])
    video_id = f"syn{seed}-{split}-{index:04d}"
    lead = _frames(rng, lead_seconds, fps)
    steps = _plan_steps(rng, num_steps, step_seconds, lead, fps, mistake_prob)
    num_frames = steps[-1].end + _frames(rng, tail_seconds, fps)
    word = str(rng.choice(GOAL_WORDS))
    goal = f"build the {word} board"
    user_frame = int(rng.integers(0, min(3, lead)))
    events = _events(rng, steps, goal, word, user_frame, fps)

    source = f"frames/{video_id}.arrow"
    write_arrow_frames(out_dir / source, _render_video(rng, steps, num_frames, image_size, noise_std, cue_mark))
    times = {(u.id, u.transition): e.time for e in events if e.role == "dst" for u in e.updates}
    ids = [f"S{k + 1}" for k in range(len(steps))]
    task = Task(goal=goal,
                knowledge="\n".join(f"{k + 1}. {s.name}" for k, s in enumerate(steps)),
                steps=[Step(i, s.name, start=times[i, "start"], end=times[i, "complete"])
                       for i, s in zip(ids, steps, strict=True)],
                initial_state=dict.fromkeys(ids, "not_started"))
    return Clip(id=f"{video_id}/0", video=Video(source, fps, 0, num_frames), task=task, events=events,
                dataset="synthetic", metadata={"split": split, "seed": seed, "index": index}, root=out_dir)


def _render_video(rng: np.random.Generator, steps: list[_StepPlan], num_frames: int, size: int,
                  noise_std: float, cue_mark: str) -> Iterator[Image.Image]:
    """Frames in order; all randomness comes from `rng`, so the video is a function of its seed.

    Drawn at _SUPERSAMPLE x the output size and box-filtered down: edges are antialiased, so sub-pixel motion
    of the hand and distractors stays small in the output instead of jumping a whole pixel at 32 px.
    """
    canvas = size * _SUPERSAMPLE
    distractors = [
        _Distractor(str(rng.choice(["circle", "square"])), _MUTED[int(rng.integers(len(_MUTED)))],
                    float(rng.uniform(0.04, 0.07) * canvas), rng.uniform(0, canvas, 2),
                    rng.uniform(-0.011, 0.011, 2) * canvas)
        for _ in range(int(rng.integers(2, 5)))
    ]
    for frame in range(num_frames):
        image = Image.new("RGB", (canvas, canvas), _BACKGROUND)
        draw = ImageDraw.Draw(image)
        draw.rectangle(_board_box(canvas), fill=_BOARD)
        for slot in range(len(steps)):  # the task's slots only
            x0, y0, x1, y1 = slot_box(slot, canvas)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=_SLOT_LINE, width=_SUPERSAMPLE)
        for d in distractors:
            _draw_shape(draw, d.shape, *d.centre(frame, canvas), d.radius, d.colour, filled=True)
        for slot, step in enumerate(steps):
            if frame >= step.start:
                hand = rng.uniform(-_HAND_JITTER, _HAND_JITTER, 2) * canvas if frame < step.end else None
                _draw_step(draw, slot, step, frame, canvas, hand, cue_mark)
        image = image.resize((size, size), Image.Resampling.BOX)
        pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.96, 1.04)
        pixels += rng.normal(0.0, noise_std, pixels.shape)
        yield Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _board_box(canvas: int) -> list[int]:
    """Pixel box [x0, y0, x1, y1] (end inclusive, as PIL draws it) of the board on a canvas of `canvas` pixels."""
    board = round(_MARGIN * canvas)
    return [board, board, canvas - board - 1, canvas - board - 1]


def _draw_step(draw: ImageDraw.ImageDraw, slot: int, step: _StepPlan, frame: int, canvas: int,
               hand: np.ndarray | None, cue_mark: str) -> None:
    """Filled object once completed; otherwise outline, hand (offset by `hand`) and any mistake cue."""
    x0, y0, x1, y1 = slot_box(slot, canvas)
    w, h = x1 - x0, y1 - y0
    cx, cy, r = x0 + w / 2, y0 + 0.38 * h, 0.42 * w
    ring = [cx - 1.18 * r, cy - 1.18 * r, cx + 1.18 * r, cy + 1.18 * r]
    ring_width = round(0.03 * canvas)
    if frame in (step.start, step.end):  # the moment of the action: a white ring for exactly one frame
        draw.ellipse(ring, outline=_FLASH, width=ring_width)
    if hand is None:
        _draw_shape(draw, step.shape, cx, cy, r, COLOURS[step.colour], filled=True)
        return
    cue = step.cue is not None and step.cue[0] <= frame < step.cue[1]
    colour = COLOURS[step.cue[2] if cue else step.colour]
    _draw_shape(draw, step.shape, cx, cy, r, colour, filled=False, width=round(0.035 * canvas))
    hx, hy, hr = cx + hand[0], y0 + 0.78 * h + hand[1], 0.24 * w
    draw.ellipse([hx - hr, hy - 0.7 * hr, hx + hr, hy + 0.7 * hr], fill=_HAND)
    if not cue or frame != step.cue[0]:
        return
    if cue_mark == "ring":  # the moment the mistake shows: an orange ring, as a step's moment shows a white one
        draw.ellipse(ring, outline=_WARNING, width=ring_width)
    elif cue_mark == "board":  # the board's edge, as wide as the ring
        draw.rectangle(_board_box(canvas), outline=_WARNING, width=ring_width)
    else:  # an orange triangle in the lower-left corner
        left, base = x0 + 0.03 * w, y0 + 0.95 * h
        draw.polygon([(left, base), (left + 0.16 * w, base - 0.34 * w), (left + 0.32 * w, base)], fill=_WARNING)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                colour: tuple[int, int, int], *, filled: bool, width: int = 1) -> None:
    """Shape of radius about `r`; triangle and diamond are drawn larger so that they cover about what a circle
    does; the star covers about half of that."""
    fill, outline = (colour, None) if filled else (None, colour)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
        return
    if shape == "square":
        s = 0.85 * r
        points = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    elif shape == "triangle":
        points = [(cx, cy - 1.15 * r), (cx + 1.1 * r, cy + 0.75 * r), (cx - 1.1 * r, cy + 0.75 * r)]
    elif shape == "diamond":
        points = [(cx, cy - 1.1 * r), (cx + 1.1 * r, cy), (cx, cy + 1.1 * r), (cx - 1.1 * r, cy)]
    elif shape == "star":  # five points, the inner corners at 0.45 of the outer radius
        radii = (1.15 * r, 0.52 * r)  # corner i, every 36 degrees from the top, alternates point and inner corner
        points = [(cx + radii[i % 2] * np.sin(i * np.pi / 5), cy - radii[i % 2] * np.cos(i * np.pi / 5))
                  for i in range(10)]
    else:  # cross: a plus sign with arms of half-width t
        t = 0.5 * r
        points = [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                  (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                  (cx - r, cy - t), (cx - t, cy - t)]
    draw.polygon(points, fill=fill, outline=outline, width=width)
