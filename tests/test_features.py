"""The frame feature cache: the same logits as encoding on the fly (training batches and streaming), a store
of another model or other settings refused, and a training run on cached features equal to one on frames (and
evaluated from the store, the same scores)."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import CONF, compose_train
from hydra import compose, initialize_config_dir

from prospect.data.__main__ import main as data_cli
from prospect.data.batch import collate
from prospect.data.datamodule import SequenceDataset
from prospect.data.sequence import SequenceBuilder
from prospect.data.synthetic import synthesize
from prospect.evaluate import run_eval
from prospect.model.backbone import load_backbone
from prospect.model.features import FeatureStore, SampleFrames, feature_identity, write_features
from prospect.model.prospect_model import ProspectModel
from prospect.model.tiny import build_tiny
from prospect.stream import StreamingGenerator
from prospect.train import train

TPF = 4


@pytest.fixture(scope="module")
def cached(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    clips = synthesize(tmp / "data", 2, 3, val_videos=0, test_videos=0, image_size=32)["train"]
    vlm, _ = load_backbone(str(tiny_dir))
    return clips, write_features(tmp / "store", clips, vlm, TPF, batch_size=7)


def test_training_logits_equal_with_cached_features(tiny_dir, cached):
    clips, store = cached
    vlm, tok = load_backbone(str(tiny_dir))
    builder, size = SequenceBuilder(tok, TPF), vlm.config.vision_config.image_size
    raw = SequenceDataset(clips, builder, SampleFrames(size), 1.0, "perframe", 0)
    from_store = SequenceDataset(clips, builder, SampleFrames(size, store), 1.0, "perframe", 0)
    a = collate([raw[0], raw[1]], tok.pad_token_id)
    b = collate([from_store[0], from_store[1]], tok.pad_token_id)
    assert b.pixel_values.numel() == 0 and b.frame_features.shape == (a.pixel_values.shape[0], TPF, 128)
    model = ProspectModel(vlm, TPF).eval()
    with torch.no_grad():
        out_a, out_b = model(a), model(b)
    for key in ("speaking_logits", "dst_update_logits", "lm_logits", "dst_gen_logits"):
        torch.testing.assert_close(getattr(out_b, key), getattr(out_a, key), atol=1e-5, rtol=1e-5, msg=key)


def test_streaming_with_cached_features(tiny_dir, cached):
    clips, store = cached
    vlm, tok = load_backbone(str(tiny_dir))
    gen = StreamingGenerator.untrained(vlm, tok, TPF, max_new_tokens=2)
    clip = clips[0]
    on_the_fly, from_store = list(gen.stream(clip)), list(gen.stream(clip, store))
    assert len(on_the_fly) == len(from_store) == len(clip.frame_indices)
    for r, s in zip(on_the_fly, from_store, strict=True):
        assert (r.text, r.dst_text) == (s.text, s.dst_text)
        assert r.speaking_prob == pytest.approx(s.speaking_prob, abs=1e-5)


def test_store_of_another_model_or_setting_is_refused(tiny_dir, cached, tmp_path):
    clips, store = cached
    with pytest.raises(ValueError, match="another model or settings.*tokens_per_frame"):
        FeatureStore(store.path, {**store.identity, "tokens_per_frame": 16})
    other = build_tiny(tmp_path / "other", ["place the red circle"] * 10, seed=1)
    vlm, _ = load_backbone(str(other))
    with pytest.raises(ValueError, match="fingerprint"):
        FeatureStore(store.path, feature_identity(vlm, TPF))
    clip = clips[0]
    clip.video.source = str(tmp_path / "elsewhere.arrow")
    with pytest.raises(KeyError, match="not in the feature store"):
        store(clip, clip.video.start_frame)
    rewritten, frames = clips[1], clips[1].frames_path  # frames written again after the store (same path)
    stat = frames.stat()
    os.utime(frames, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    try:
        with pytest.raises(ValueError, match="changed since this store was written"):
            FeatureStore(store.path, store.identity)(rewritten, rewritten.video.start_frame)
    finally:
        os.utime(frames, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_training_on_cached_features_equals_training_on_frames(trained, tmp_path):
    """`python -m prospect.data features` over the trained fixture's data, then one epoch with and without the
    store from the same seed: the same trained weights."""
    tmp, _ = trained
    files = [str(tmp / "data" / f"{s}.jsonl") for s in ("train", "val", "test")]
    assert data_cli(["features", *files, "--out", str(tmp_path / "store"), "--model", "tiny",
                     "--tiny-dir", str(tmp / "tiny"), "--tokens-per-frame", "16"]) == 0
    base = ["+experiment=perframe", f"data.root={tmp / 'data'}", f"model.backbone.tiny_dir={tmp / 'tiny'}",
            "test=false", "trainer.max_epochs=1", "model.net.train_connector=false",
            "callbacks.streaming_validation.num_clips=0", "callbacks.model_checkpoint.monitor=val/loss",
            "callbacks.model_checkpoint.mode=min"]
    frames = train(compose_train(tmp_path, base, "frames"))
    features = train(compose_train(tmp_path, [*base, f"data.feature_store={tmp_path / 'store'}"], "features"))
    a = torch.load(Path(frames["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(Path(features["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    assert json.loads((tmp_path / "store" / "identity.json").read_text())["tokens_per_frame"] == 16
    # eval.py on the features run streams from the store its data config names: the same scores and dialog
    reports = {}
    for run in ("frames", "features"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("eval", overrides=[f"ckpt_path={tmp_path / run / 'checkpoints' / 'last.ckpt'}",
                                             f"paths.output_dir={tmp_path / ('eval-' + run)}", "calibrate=false",
                                             "num_clips=1", "stream.settings=[none]", "stream.max_new_tokens=4",
                                             "encoder=all-MiniLM-L6-v2"])
        reports[run] = run_eval(cfg)
    for key in ("f1", "dst_f1", "speaking_auroc", "peak_cache_tokens"):
        assert reports["features"]["none"][key] == pytest.approx(reports["frames"]["none"][key], abs=1e-6), key
    assert (tmp_path / "eval-features" / "dialog.csv").read_text() == (tmp_path / "eval-frames" /
                                                                       "dialog.csv").read_text()
    with pytest.raises(ValueError, match="connector frozen"):
        train(compose_train(tmp_path, [*base, "model.net.train_connector=true",
                                       f"data.feature_store={tmp_path / 'store'}"], "refused"))
