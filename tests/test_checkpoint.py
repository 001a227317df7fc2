"""Checkpoints through the one loader (prospect.model.factory) and through Lightning's resume and test: plain
types under weights_only, loadable from any working directory, and refused on another base model or with
weights the model does not have."""

import warnings
from pathlib import Path

import pytest
import torch
from conftest import compose_train

from prospect.model.factory import CheckpointError, current_weight_names, load_checkpoint
from prospect.model.tiny import build_tiny
from prospect.train import train

SHORT = ["+experiment=perframe", "trainer.max_epochs=1", "++trainer.limit_train_batches=1",
         "++trainer.limit_val_batches=1", "test=false", "callbacks.streaming_validation.num_clips=0",
         "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"]


def test_checkpoint_loads_with_weights_only(trained):
    _, metrics = trained
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
    loaded = load_checkpoint(metrics["checkpoint"])
    weights = loaded.net.state_dict()
    assert ckpt["state_dict"]
    for name, value in ckpt["state_dict"].items():
        torch.testing.assert_close(weights[name.removeprefix("net.")], value, msg=name)
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
    ckpt["state_dict"]["net.speaking_head.extra.weight"] = torch.zeros(1)
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


def _old_weight_name(name: str) -> str:
    """How checkpoints named a weight before issue #25 (the module's `model`, the network's `backbone`, a head's
    `net`)."""
    return "model." + name.removeprefix("net.").replace("peft_model.", "backbone.", 1).replace("_head.layers.",
                                                                                                "_head.net.")


@pytest.mark.parametrize("job", ["load", "test"])
def test_a_checkpoint_from_before_the_weight_renames_loads_the_same_weights(trained, tmp_path, job):
    """Issue #25 renamed the Lightning module's `model` to `net` and the network's `backbone` to `peft_model`:
    a checkpoint written before loads every weight under its new name, with a warning, on both paths (our
    loader, and Lightning's non-strict one when testing or resuming)."""
    tmp, metrics = trained
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
    new = ckpt["state_dict"]
    assert any(".peft_model." in n for n in new) and any("_head.layers." in n for n in new)
    assert all(n.startswith("net.") for n in new)
    ckpt["state_dict"] = {_old_weight_name(n): t for n, t in new.items()}
    torch.save(ckpt, tmp_path / "old.ckpt")
    if job == "load":
        with pytest.warns(UserWarning, match=r"old.ckpt: written before the weights' names changed"):
            weights = load_checkpoint(tmp_path / "old.ckpt").net.state_dict()
        for name, value in new.items():
            torch.testing.assert_close(weights[name.removeprefix("net.")], value, rtol=0, atol=0, msg=name)
        return
    results = {}
    for name in ("old", "new"):
        path = tmp_path / "old.ckpt" if name == "old" else metrics["checkpoint"]
        run = compose_train(tmp_path, [*SHORT, f"data.root={tmp / 'data'}", f"model.backbone.tiny_dir={tmp / 'tiny'}",
                                       "train=false", "test=true", f"ckpt_path={path}"], run=name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[name] = train(run)
        assert any("written before the weights' names changed" in str(w.message) for w in caught) == (name == "old")
    assert results["old"]["test/loss"] == results["new"]["test/loss"]


def test_an_exports_weights_from_before_the_renames_read_under_todays_names():
    """An exported folder's weight file names its weights without the module's prefix."""
    t = torch.zeros(1)
    old = {"backbone.base_model.model.model.connector.modality_projection.proj.weight": t,
           "speaking_head.net.1.weight": t, "dst_head.net.3.bias": t}
    with pytest.warns(UserWarning, match=r"x.safetensors: written before the weights' names changed"):
        new = current_weight_names(old, "x.safetensors")
    assert list(new) == ["peft_model.base_model.model.model.connector.modality_projection.proj.weight",
                         "speaking_head.layers.1.weight", "dst_head.layers.3.bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert current_weight_names(new, "y") == new  # today's names: unchanged, no warning
