"""A trained model outside the project: exported from a training checkpoint in the formats people already use,
and loaded back without pickle (docs/export.md); `load_trained`, the one loader of a trained model, takes either.

    OUT/
        adapter_config.json, adapter_model.safetensors   the LoRA adapter as peft writes it:
                                                          PeftModel.from_pretrained(base, OUT)
        prospect_weights.safetensors                     the two heads, and the connector when it trained
        tokenizer files                                  the tokenizer the model was trained with
        prospect.json                                    base model and its fingerprint, tokens per frame, system
                                                          prompt, layout version, thresholds, training config,
                                                          and the sha256 of every file above

With `merge`, a full SmolVLM with the adapter merged (config.json, model.safetensors:
SmolVLMForConditionalGeneration.from_pretrained(OUT)) replaces the adapter files; the connector is part of it.
Either loads back as a ProspectModel, whose heads the exported weights fill.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import Tensor

from prospect.data.sequence import DEFAULT_SYSTEM_PROMPT
from prospect.model.backbone import load_backbone
from prospect.model.factory import TrainedModel, build_model, current_weight_names, load_checkpoint, with_attention
from prospect.model.hashing import file_sha256
from prospect.model.prospect_model import ProspectModel

META = "prospect.json"
WEIGHTS = "prospect_weights.safetensors"
ADAPTER = "adapter_model.safetensors"
# What a sequence looks like (docs/data-format.md, "What the model sees"): a model trained on one layout is
# refused by code that renders another. Bump it when SequenceBuilder's rendering changes.
LAYOUT_VERSION = 1
_HEADS = ("speaking_head.", "dst_head.")


class PretrainedError(ValueError):
    """An exported directory that is incomplete, altered, or meant for another base model."""


def export(ckpt: TrainedModel, out: str | Path, *, merge: bool = False,
           calibration: Mapping[str, Any] | None = None) -> Path:
    """Write `ckpt` (load_trained) to `out`. `calibration` is eval.py's calibration.json: its thresholds per
    stream setting become the exported model's defaults. The checkpoint's model is changed in place when merging."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = ckpt.net
    trained = {n: p for n, p in net.named_parameters() if p.requires_grad}
    # the heads, and the connector when it trained, unless merged: the merged model holds the connector itself
    extra = {n: p for n, p in trained.items() if n.startswith(_HEADS) or not merge and ".connector." in n}
    save_file({n: t.detach().contiguous().cpu() for n, t in extra.items()}, out / WEIGHTS, metadata={"format": "pt"})
    if merge:
        base_fingerprint = None  # the base model is in `out`
        net.peft_model.merge_and_unload().save_pretrained(out)
    else:
        base_fingerprint = net.base_fingerprint()
        # the embeddings are the base model's (frozen): "auto" would look the base model up on the hub
        net.peft_model.save_pretrained(out, save_embedding_layers=False)
    ckpt.tokenizer.save_pretrained(out)
    model_cfg = ckpt.config["model"]
    meta = {
        "format": "prospect-pretrained/1",
        "layout_version": LAYOUT_VERSION,
        "merged": merge,
        "base_model": model_cfg["backbone"]["source"],
        "base_fingerprint": base_fingerprint,
        "tokens_per_frame": model_cfg["tokens_per_frame"],
        "system_prompt": model_cfg.get("system_prompt") or DEFAULT_SYSTEM_PROMPT,
        "thresholds": {s: {"speaking": c["thresholds"][0], "dst_update": c["thresholds"][1]}
                       for s, c in (calibration or {}).get("settings", {}).items()},
        "config": ckpt.config,
        "files": {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != META},
    }
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_trained(path: str | Path, device: str | torch.device = "cpu", base: str | None = None,
                 attn_implementation: str | None = None) -> TrainedModel:
    """A trained model from a training checkpoint (a file: factory.load_checkpoint) or an exported directory
    (load_exported). `base` replaces an exported adapter's base model with a copy of it elsewhere;
    `attn_implementation` the attention the run loaded its model with (factory.with_attention)."""
    if Path(path).is_dir():
        return load_exported(path, device, base, attn_implementation)
    if base is not None:
        raise ValueError(f"{path}: base= applies to an exported directory; a checkpoint loads onto the base model "
                         "its config names")
    return load_checkpoint(path, device, attn_implementation)


def load_exported(path: str | Path, device: str | torch.device = "cpu", base: str | None = None,
                  attn_implementation: str | None = None) -> TrainedModel:
    """An exported directory, checked file by file against its prospect.json; safetensors only. `base` replaces
    the stored base model (a hub id or local directory holding the same weights: the fingerprint must match);
    a merged directory holds its base model itself."""
    path = Path(path)
    meta = _read_meta(path)
    model_cfg = with_attention(meta["config"]["model"], attn_implementation)
    if meta["merged"]:
        vlm, tokenizer = load_backbone(str(path), attn_implementation=model_cfg["backbone"]["attn_implementation"])
        # the adapter is in the weights: the fresh LoRA that ProspectModel adds changes nothing (its B is zero)
        net = ProspectModel(vlm, model_cfg["tokens_per_frame"], **model_cfg["net"])
    else:
        if base is not None:
            model_cfg = {**model_cfg, "backbone": {**model_cfg["backbone"], "source": base, "build": None}}
        net, tokenizer = build_model(model_cfg)
        if net.base_fingerprint() != meta["base_fingerprint"]:
            raise PretrainedError(f"{path}: exported for a base model with other weights than "
                                  f"{model_cfg['backbone']['source']} (fingerprint {net.base_fingerprint()}, "
                                  f"expected {meta['base_fingerprint']}); the adapter needs the very base model")
        _load_adapter(net.peft_model, load_file(path / ADAPTER), path)
    weights = current_weight_names(load_file(path / WEIGHTS), path / WEIGHTS)
    unknown = set(weights) - set(net.state_dict())
    if unknown:
        raise PretrainedError(f"{path / WEIGHTS}: weights this model does not have: {sorted(unknown)[:3]}")
    net.load_state_dict(weights, strict=False)
    return TrainedModel(net.to(device).eval(), tokenizer, meta["config"], meta["thresholds"])


def _load_adapter(peft_model, state: dict[str, Tensor], path: Path) -> None:
    """peft's own loader; it only warns about keys it does not know, which here mean another LoRA layout."""
    result = set_peft_model_state_dict(peft_model, state)
    if result.unexpected_keys:
        raise PretrainedError(f"{path / ADAPTER}: adapter weights this model does not have: "
                              f"{result.unexpected_keys[:3]}")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise PretrainedError(f"{path / ADAPTER}: LoRA weights missing: {missing[:3]}")


def _read_meta(path: Path) -> dict[str, Any]:
    if not (path / META).is_file():
        raise PretrainedError(f"{path}: no {META}: not a model exported by `python -m prospect.export`")
    meta = json.loads((path / META).read_text())
    if meta.get("layout_version") != LAYOUT_VERSION:
        raise PretrainedError(f"{path / META}: sequence layout {meta.get('layout_version')}, this prospect "
                              f"renders layout {LAYOUT_VERSION}")
    for name, digest in meta["files"].items():
        if not (path / name).is_file():
            raise PretrainedError(f"{path}: {name} is missing (listed in {META})")
        if file_sha256(path / name) != digest:
            raise PretrainedError(f"{path / name}: sha256 differs from the one in {META}: the file was changed "
                                  "after export")
    return meta

