"""Hashes that tell files and weights apart: the sha256 of a file (downloads, exported models) and a short
fingerprint of weights (checkpoints and feature stores name the base model they belong to)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of weights (names, shapes, a sum and the first values of each): tells apart two models
    whose checkpoints or caches must not be mixed, such as two tiny models built from different data."""
    digest = hashlib.sha256()
    for name, t in named_tensors:
        flat = t.detach().flatten().float().cpu()
        digest.update(f"{name}{tuple(t.shape)}{float(flat.double().sum()):.6e}".encode())
        digest.update(flat[:256].numpy().tobytes())
    return digest.hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in blocks (model files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
