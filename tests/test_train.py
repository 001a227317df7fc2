"""The training job through the real Hydra configs, shrunk for CPU: fit + test, metrics.json, checkpoints that
hold only trained weights, exact resume, and testing a checkpoint on a fresh synthetic seed."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose_train

from prospect.train import train


def test_train_perframe_runs(trained):
    tmp, metrics = trained
    run = tmp / "run"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    for key in ("train/loss", "val/loss", "test/loss", "test/speaking_auroc", "test/speaking_f1",
                "test/dst_update_auroc", "test/dst_update_f1", "test/lm_token_accuracy"):
        assert math.isfinite(metrics[key]), key
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k or "_head." in k or "connector" in k for k in keys), keys[:5]
    assert ckpt["prospect_config"]["model"]["tokens_per_frame"] == 16
    assert list((run / "plots").glob("timeline_*.png")), "timeline plots are written after testing"


class Interrupt(L.Callback):
    """Stops a run after its first epoch, as a crash or a time limit would."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resume_is_exact(tmp_path, trained):
    tmp, _ = trained
    # the shared data and tiny model; two epochs straight vs interrupted after one and resumed
    base = ["+experiment=perframe", f"data.root={tmp / 'data'}", f"model.backbone.tiny_dir={tmp / 'tiny'}",
            "test=false", "trainer.max_epochs=2"]
    straight = train(compose_train(tmp_path, base, "straight"))
    first = train(compose_train(tmp_path, [*base, "+callbacks.interrupt._target_=test_train.Interrupt"], "first"))
    last = Path(first["output_dir"]) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    resumed = train(compose_train(tmp_path, [*base, f"ckpt_path={last}"], "resumed"))
    a = torch.load(Path(straight["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(Path(resumed["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_test_only_on_fresh_seed(tmp_path, trained):
    tmp, metrics = trained
    common = ["+experiment=perframe", "train=false", "data.seed=123", f"model.backbone.tiny_dir={tmp / 'tiny'}"]
    tested = train(compose_train(tmp_path, [*common, f"ckpt_path={metrics['checkpoint']}"], "tested"))
    untrained = train(compose_train(tmp_path, common, "untrained"))
    for m in (tested, untrained):
        assert math.isfinite(m["test/speaking_auroc"]) and (Path(m["output_dir"]) / "metrics.json").exists()
    assert tested["test/loss"] != untrained["test/loss"]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["seed"] == 123


@pytest.mark.slow
def test_multirun_sweep_with_offline_wandb(tmp_path, trained):
    """`-m` over a loss weight: one output directory and one (offline) wandb run per job, grouped by sweep."""
    import os
    import subprocess
    import sys

    tmp, _ = trained
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    cmd = [sys.executable, "train.py", "-m", "+experiment=perframe", "loss.speaking_weight=0.5,2",
           "trainer.max_steps=1", "test=false", "+debug=fast", "logger=wandb", f"data.root={tmp / 'data'}",
           f"model.backbone.tiny_dir={tmp / 'tiny'}", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600,
                            env={**env, "HOME": str(tmp_path)})  # no ~/.netrc: no API key
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").exists()
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"job {job}: expected one offline wandb run"
    overrides = [(sweep / j / ".hydra" / "overrides.yaml").read_text() for j in ("0", "1")]
    assert "loss.speaking_weight=0.5" in overrides[0] and "loss.speaking_weight=2" in overrides[1]


def test_streaming_generator_loads_a_checkpoint(trained):
    from prospect.data import load_clips
    from prospect.stream import StreamingGenerator

    tmp, metrics = trained
    gen = StreamingGenerator.from_pretrained(metrics["checkpoint"], setting="drop_middle_1k", max_new_tokens=4)
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(gen.speaking_head.layers[1].weight, state["net.speaking_head.layers.1.weight"])
    lora = next(k for k in state if "lora_B" in k)
    torch.testing.assert_close(gen.vlm.get_submodule(lora[len("net.peft_model.base_model.model."):
                                                            -len(".weight")]).weight, state[lora])
    clip = load_clips(tmp / "data" / "test.jsonl")[0]
    records = list(gen.stream(clip))
    assert [r.frame for r in records] == list(clip.frame_indices)
    assert gen.strategy.name == "drop_middle" and all(r.cache_tokens <= 1024 for r in records)


def test_max_seq_len_past_the_models_positions_is_refused_at_start(tmp_path):
    from prospect.train import build

    cfg = compose_train(tmp_path, ["+experiment=perframe", "data.max_seq_len=9000"])
    with pytest.raises(ValueError, match=r"data.max_seq_len=9000 is more than the model's max_position_embeddings"):
        build(cfg)
