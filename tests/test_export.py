"""Exported models (prospect.model.pretrained, `python -m prospect.export`): what they stream equals the training
checkpoint's, peft and transformers load them with their own loaders, and an altered or mismatched directory is
refused by name."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import SmolVLMForConditionalGeneration

from prospect.data.load import load_clips
from prospect.data.sequence import DEFAULT_SYSTEM_PROMPT
from prospect.export import main as export_main
from prospect.model.backbone import load_backbone
from prospect.model.factory import load_checkpoint
from prospect.model.pretrained import META, WEIGHTS, PretrainedError, load_exported, load_trained
from prospect.model.prospect_model import ProspectModel
from prospect.model.tiny import build_tiny
from prospect.stream import StreamingGenerator

REPO = Path(__file__).parents[1]
CALIBRATION = {"split": "val", "settings": {"none": {"thresholds": [0.3, 0.7]},
                                            "drop_middle_1k": {"thresholds": [0.5, 0.3]}}}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained checkpoint exported twice: {"adapter": dir, "merged": dir}, with a calibration."""
    _, metrics = trained
    tmp = tmp_path_factory.mktemp("export")
    calibration = tmp / "calibration.json"
    calibration.write_text(json.dumps(CALIBRATION))
    dirs = {"adapter": tmp / "adapter", "merged": tmp / "merged"}
    assert export_main([metrics["checkpoint"], str(dirs["adapter"]), "--calibration", str(calibration)]) == 0
    assert export_main([metrics["checkpoint"], str(dirs["merged"]), "--merge", "--calibration", str(calibration)]) == 0
    return dirs


def _records(generator, clip):
    return list(generator.stream(clip))


@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_exported_model_streams_as_the_checkpoint(trained, exported, kind):
    """Every frame speaks (threshold 0): the same probabilities and the same generated replies and DST text."""
    tmp, metrics = trained
    clip = load_clips(tmp / "data" / "test.jsonl")[0]
    kwargs = {"speaking_threshold": 0.0, "dst_update_threshold": 0.0, "max_new_tokens": 6}
    want = _records(StreamingGenerator.from_pretrained(metrics["checkpoint"], **kwargs), clip)
    got = _records(StreamingGenerator.from_pretrained(str(exported[kind]), **kwargs), clip)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g.speaking_prob == pytest.approx(w.speaking_prob, abs=1e-5), g.frame
        assert g.dst_update_prob == pytest.approx(w.dst_update_prob, abs=1e-5), g.frame
        assert (g.text, g.dst_text, g.dst_state) == (w.text, w.dst_text, w.dst_state), g.frame
    assert any(r.text for r in want)


def test_inference_folds_the_adapter_and_streams_as_the_training_model(trained):
    """load folds LoRA into the weights (one matrix product per layer); it streams what the checkpoint's
    model streams with its adapter apart, as training runs it."""
    tmp, metrics = trained
    clip = load_clips(tmp / "data" / "test.jsonl")[0]
    kwargs = {"speaking_threshold": 0.0, "dst_update_threshold": 0.0, "max_new_tokens": 6}
    folded = StreamingGenerator.from_pretrained(metrics["checkpoint"], **kwargs)
    lora = [m for m in folded.vlm.modules() if isinstance(m, BaseTunerLayer)]
    assert lora and all(m.merged for m in lora)
    ckpt = load_checkpoint(metrics["checkpoint"])
    net = ckpt.net.eval()
    apart = StreamingGenerator(net.vlm, ckpt.tokenizer, net.tokens_per_frame, net.speaking_head, net.dst_head,
                               system_prompt=ckpt.config["model"].get("system_prompt"), **kwargs)
    assert not any(m.merged for m in apart.vlm.modules() if isinstance(m, BaseTunerLayer))
    got, want = _records(folded, clip), _records(apart, clip)
    for g, w in zip(got, want, strict=True):
        assert (g.speaking_prob, g.dst_update_prob) == pytest.approx((w.speaking_prob, w.dst_update_prob), abs=1e-5)
        assert (g.text, g.dst_text, g.dst_state) == (w.text, w.dst_text, w.dst_state), g.frame
    assert any(r.text for r in want)


def test_one_loader_takes_a_checkpoint_or_an_exported_directory(trained, exported):
    """load_trained gives the ProspectModel the checkpoint was trained as, its heads filled with the trained weights,
    from the checkpoint file or either exported directory (a merged one too: its heads are ProspectModel's)."""
    _, metrics = trained
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    heads = {k.removeprefix("net."): v for k, v in state.items() if k.startswith(("net.speaking_head.",
                                                                                 "net.dst_head."))}
    assert heads
    for path in (metrics["checkpoint"], exported["adapter"], exported["merged"]):
        loaded = load_trained(path)
        assert isinstance(loaded.net, ProspectModel), path
        weights = loaded.net.state_dict()
        for name, value in heads.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=0)
    assert load_trained(exported["adapter"]).thresholds["drop_middle_1k"] == {"speaking": 0.5, "dst_update": 0.3}
    with pytest.raises(ValueError, match="base= applies to an exported directory"):
        load_trained(metrics["checkpoint"], base=str(exported["merged"]))


def test_stored_thresholds_apply_unless_given(exported):
    generator = StreamingGenerator.from_pretrained(str(exported["adapter"]), "drop_middle_1k")
    assert (generator.speaking_threshold, generator.dst_update_threshold) == (0.5, 0.3)
    generator = StreamingGenerator.from_pretrained(str(exported["adapter"]), "none", speaking_threshold=0.9)
    assert (generator.speaking_threshold, generator.dst_update_threshold) == (0.9, 0.7)
    generator = StreamingGenerator.from_pretrained(str(exported["adapter"]), "summarize_1k")  # not calibrated
    assert (generator.speaking_threshold, generator.dst_update_threshold) == (0.5, 0.5)


def _text_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_peft_loads_the_adapter_and_merging_keeps_the_logits(exported):
    """peft's own loader on the exported adapter gives our loader's logits; the merged SmolVLM, read by
    transformers alone, gives base + adapter's."""
    ours = load_exported(exported["adapter"])
    meta = json.loads((exported["adapter"] / META).read_text())
    base, tokenizer = load_backbone(meta["config"]["model"]["backbone"]["tiny_dir"])
    peft = PeftModel.from_pretrained(base, exported["adapter"]).eval()
    ids = torch.tensor([tokenizer("Next, place the blue square. S1->start")["input_ids"]])
    reference = _text_logits(peft, ids)
    assert (reference - _text_logits(ours.net.vlm, ids)).abs().max() < 1e-5
    with peft.disable_adapter():
        assert (reference - _text_logits(peft, ids)).abs().max() > 1e-3  # the adapter changes the logits
    merged = SmolVLMForConditionalGeneration.from_pretrained(exported["merged"]).eval()
    assert (reference - _text_logits(merged, ids)).abs().max() < 1e-4


def test_export_layout(exported):
    for kind, model_files in (("adapter", {"adapter_config.json", "adapter_model.safetensors"}),
                              ("merged", {"config.json", "model.safetensors"})):
        names = {p.name for p in exported[kind].iterdir()}
        assert model_files | {META, WEIGHTS, "tokenizer.json"} <= names, kind
        meta = json.loads((exported[kind] / META).read_text())
        assert meta["merged"] == (kind == "merged") and meta["tokens_per_frame"] == 16  # tiny.yaml
        assert meta["thresholds"]["none"] == {"speaking": 0.3, "dst_update": 0.7}
        assert meta["system_prompt"] == DEFAULT_SYSTEM_PROMPT  # the config's null, said as the text it means
        assert set(meta["files"]) == names - {META}
        heads = load_file(exported[kind] / WEIGHTS)
        assert any(k.startswith("speaking_head.") for k in heads) and any(k.startswith("dst_head.") for k in heads)
        assert any(".connector." in k for k in heads) == (kind == "adapter")  # merged: inside the model


def test_altered_or_mismatched_directories_are_refused(exported, tmp_path):
    import shutil

    altered = shutil.copytree(exported["adapter"], tmp_path / "altered")
    weights = altered / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match=r"prospect_weights.safetensors: sha256 differs"):
        load_exported(altered)
    weights.unlink()
    with pytest.raises(PretrainedError, match=r"prospect_weights.safetensors is missing"):
        load_exported(altered)
    with pytest.raises(PretrainedError, match="no prospect.json"):
        load_exported(tmp_path)
    other = build_tiny(tmp_path / "other", ["place the red circle"] * 10, seed=1)
    with pytest.raises(PretrainedError, match="base model with other weights"):
        load_exported(exported["adapter"], base=str(other))
    layout = shutil.copytree(exported["adapter"], tmp_path / "layout")
    meta = json.loads((layout / META).read_text())
    meta["layout_version"] = 0
    (layout / META).write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match="sequence layout 0"):
        load_exported(layout)


def test_eval_py_and_demo_take_an_exported_directory(trained, exported, tmp_path, capsys):
    from prospect.stream.demo import main as demo_main

    tmp, _ = trained
    out = tmp_path / "eval"
    cmd = [sys.executable, "eval.py", f"ckpt_path={exported['merged']}", "stream.settings=[none,summarize_1k]",
           "num_clips=1", "calibrate=false", "stream.max_new_tokens=4", "encoder=all-MiniLM-L6-v2",
           f"hydra.run.dir={out}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval_metrics.json").read_text())
    assert report["none"]["checkpoint"] == str(exported["merged"]) and report["none"]["split"] == "test"
    # without calibration, the thresholds the export stores for a setting (CALIBRATION), the config's for the rest
    assert [(m["speaking_threshold"], m["dst_update_threshold"], m["thresholds_from"]) for m in report.values()] == [
        (0.3, 0.7, "exported model"), (0.5, 0.5, "config")]
    assert demo_main([str(exported["adapter"]), "--clips", str(tmp / "data" / "test.jsonl"),
                      "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.startswith("task: build the")


def test_stored_thresholds_can_be_set_aside():
    """`stored_thresholds=false`: the config's thresholds for every setting, whatever the export stores."""
    from prospect.evaluate import _uncalibrated_thresholds

    generator = SimpleNamespace(stored_thresholds={"none": {"speaking": 0.3, "dst_update": 0.7}})
    assert _uncalibrated_thresholds(generator, ["none", "drop_all_1k"], (0.6, 0.4), True) == (
        {"none": (0.3, 0.7), "drop_all_1k": (0.6, 0.4)}, {"none": "exported model", "drop_all_1k": "config"})
    assert _uncalibrated_thresholds(generator, ["none"], (0.6, 0.4), False) == (
        {"none": (0.6, 0.4)}, {"none": "config"})
