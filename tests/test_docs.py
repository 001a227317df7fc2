"""The docs say what runs: the documented example clip is valid in our format, and every `python -m prospect...`
command named in the docs, the README, the Makefile, the configs and the code runs a module that exists."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from prospect.data import load_clips

REPO = Path(__file__).parents[1]
DOC = REPO / "docs" / "data-format.md"
COMMAND = re.compile(r"python -m (prospect[\w.]*)(?: ([a-z]\w*))?")  # the module and what may be a subcommand
NAMED_IN = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "conf").rglob("*.yaml"))]


def test_documented_example_reads(tmp_path):
    block = re.search(r"```json\n(.*?)\n```", DOC.read_text(), re.S).group(1)
    path = tmp_path / "example.jsonl"
    path.write_text(json.dumps(json.loads(block)) + "\n")
    (clip,) = load_clips(path)
    assert [e.role for e in clip.events] == ["system", "user", "dst", "assistant", "dst", "system", "assistant"]
    assert clip.events[4].text == "S1->complete; S2->start"


def commands() -> dict[tuple[str, str | None], list[str]]:
    """{(module, the word after it): where it is named}."""
    found: dict[tuple[str, str | None], list[str]] = {}
    for path in NAMED_IN:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            for match in COMMAND.finditer(line):
                found.setdefault(match.groups(), []).append(f"{path.relative_to(REPO)}:{n}")
    return found


def entry_point(module: str) -> str | None:
    """The source `python -m module` runs, or None when it runs nothing: a package runs its `__main__`, a module
    only what it guards with `if __name__ == "__main__"`."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations is not None:
        spec = importlib.util.find_spec(f"{module}.__main__")
        return Path(spec.origin).read_text() if spec else None
    source = Path(spec.origin).read_text()
    return source if re.search(r"^if __name__ == ['\"]__main__['\"]:", source, re.M) else None


def test_every_python_m_command_named_runs_a_module():
    found = commands()
    assert ("prospect.data", "validate") in found and ("prospect.export", None) in found  # the search finds them
    wrong = []
    for (module, word), where in sorted(found.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        source = entry_point(module)
        if source is None:
            wrong.append(f"python -m {module} runs nothing ({', '.join(where)})")
        elif word and "add_subparsers" in source and f'add_parser("{word}"' not in source:
            wrong.append(f"python -m {module} has no command {word} ({', '.join(where)})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["prospect.model", "prospect.stream.cache"])
def test_a_module_that_runs_nothing_is_told_apart(module):
    assert entry_point(module) is None
