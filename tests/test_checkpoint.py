"""Checkpoints through the one loader (prospect.model.factory) and through Lightning's resume and test: plain
types under weights_only, loadable from any working directory, and refused on another base model or with
weights the model does not have."""

from pathlib import Path

import pytest
import torch
from conftest import compose_train

from prospect.model.factory import CheckpointError, load_checkpoint
from prospect.model.tiny import build_tiny
from prospect.train import train

SHORT = ["+experiment=perframe", "trainer.max_epochs=1", "++trainer.limit_train_batches=1",
         "++trainer.limit_val_batches=1", "test=false", "callbacks.streaming_validation.num_clips=0",
         "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"]


def test_checkpoint_loads_with_weights_only(trained):
    _, metrics = trained
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
    loaded = load_checkpoint(metrics["checkpoint"])
    weights = loaded.model.state_dict()
    assert ckpt["state_dict"]
    for name, value in ckpt["state_dict"].items():
        torch.testing.assert_close(weights[name.removeprefix("model.")], value, msg=name)
    assert loaded.config == ckpt["prospect_config"]


def test_checkpoint_loads_from_another_working_directory(trained, tmp_path, monkeypatch):
    """Trained with paths relative to the working directory, loaded from another one."""
    tmp, _ = trained
    monkeypatch.chdir(tmp)  # where the fixture's data/ and tiny/ are
    metrics = train(compose_train(tmp_path, [*SHORT, "data.root=data", "model.backbone.tiny_dir=tiny"]))
    last = Path(metrics["output_dir"]) / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(tmp_path)
    loaded = load_checkpoint(last)
    assert loaded.config["model"]["backbone"]["tiny_dir"] == str((tmp / "tiny").resolve())
    assert loaded.config["data"]["root"] == str((tmp / "data").resolve())


@pytest.mark.parametrize("job", ["resume", "test"])
def test_another_base_model_is_refused(trained, tmp_path, job):
    """`trainer.fit(ckpt_path=...)` and `trainer.test(ckpt_path=...)` load non-strictly: the module checks."""
    tmp, metrics = trained
    other = build_tiny(tmp_path / "other", ["place the red circle"] * 10, seed=1)
    cfg = compose_train(tmp_path, [*SHORT, f"data.root={tmp / 'data'}", f"model.backbone.tiny_dir={other}",
                                   f"ckpt_path={metrics['checkpoint']}", *(["train=false", "test=true"]
                                                                          if job == "test" else [])])
    with pytest.raises(CheckpointError, match="trained on a base model with other weights"):
        train(cfg)


def test_unknown_weights_are_refused(trained, tmp_path):
    tmp, metrics = trained
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
    ckpt["state_dict"]["model.speaking_head.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "unknown.ckpt")
    with pytest.raises(CheckpointError, match=r"weights that this model does not have: \['speaking_head.extra"):
        load_checkpoint(tmp_path / "unknown.ckpt")
    cfg = compose_train(tmp_path, [*SHORT, f"data.root={tmp / 'data'}", f"model.backbone.tiny_dir={tmp / 'tiny'}",
                                   f"ckpt_path={tmp_path / 'unknown.ckpt'}"])
    with pytest.raises(CheckpointError, match="weights that this model does not have"):
        train(cfg)


def test_a_checkpoint_from_before_the_renames_loads_under_the_new_names(trained, tmp_path):
    """Checkpoints written before issue #13's renames (data.features, loss.dst_weight, stream.dst_threshold)."""
    _, metrics = trained
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
    config = ckpt["prospect_config"]
    config["data"]["features"] = config["data"].pop("feature_store")
    config["loss"]["dst_weight"] = config["loss"].pop("dst_update_weight")
    config["stream"]["dst_threshold"] = config["stream"].pop("dst_update_threshold")
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match=r"old.ckpt: written before data.features was renamed data.feature_store"):
        loaded = load_checkpoint(tmp_path / "old.ckpt")
    current = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)["prospect_config"]
    assert loaded.config == current
