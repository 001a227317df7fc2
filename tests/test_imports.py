"""The import graph runs one way: data -> model -> stream -> eval -> the jobs (train.py, evaluate.py, and the
command-line entry points `__main__`). No module imports from a later layer, counting imports inside functions
and under TYPE_CHECKING."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "prospect"
LAYERS = ("data", "model", "stream", "eval")  # anything else under prospect/ is a job, the last layer


def layer(module: str) -> int:
    """-1 for the package itself (its __init__ imports nothing of ours), else the index of its layer."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[-1] == "__main__":  # an entry point: a job
        return len(LAYERS)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else len(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every prospect module `path` imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "prospect":  # from prospect import data
            names |= {f"prospect.{a.name}" for a in node.names if a.name != "__version__"} | {"prospect"}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n == "prospect" or n.startswith("prospect.")}


def test_imports_run_one_way():
    modules = sorted(SRC.rglob("*.py"))
    assert any(p.parent.name == "data" for p in modules) and any(p.parent.name == "eval" for p in modules)
    backwards = [f"{module_name(p)} imports {m}" for p in modules for m in sorted(imported(p))
                 if layer(m) > layer(module_name(p))]
    assert not backwards, "imports against data -> model -> stream -> eval -> jobs:\n" + "\n".join(backwards)
