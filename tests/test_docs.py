"""The documented example clip is valid in our format."""

import json
import re
from pathlib import Path

from prospect.data import load_clips

DOC = Path(__file__).parents[1] / "docs" / "data-format.md"


def test_documented_example_reads(tmp_path):
    block = re.search(r"```json\n(.*?)\n```", DOC.read_text(), re.S).group(1)
    path = tmp_path / "example.jsonl"
    path.write_text(json.dumps(json.loads(block)) + "\n")
    (clip,) = load_clips(path)
    assert [e.role for e in clip.events] == ["system", "user", "dst", "assistant", "dst", "system", "assistant"]
    assert clip.events[4].text == "S1->complete; S2->start"
