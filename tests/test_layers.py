"""Dependencies point one way: plumbing (hart.common) <- data (hart.data) <- tokenizer <- generator (hart)
<- sampling <- demo.

Every import in the installed packages (module level or inside a function) is read with ast;
an edge from a lower layer to a higher one fails, whether or not it would run today.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["hart.common", "hart.data", "tokenizer", "hart", "sampling", "demo"]  # low -> high


def layer(module: str) -> int | None:
    """Index in LAYERS of a project module name (the longest prefix wins), None if external."""
    best = None
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            if best is None or len(name) > len(LAYERS[best]):
                best = i
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: the project uses absolute imports"
            mod = node.module
            out.append((mod, node.lineno))
            # `from hart import common` names a subpackage
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names if layer(f"{mod}.{a.name}") is not None
                    and layer(f"{mod}.{a.name}") != layer(mod)]
    return out


def project_files():
    for pkg in ("hart", "tokenizer", "sampling", "demo"):
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_layer_table_is_total():
    files = list(project_files())
    assert files and all(layer(module_name(f)) is not None for f in files)


def test_imports_point_down():
    bad = []
    for f in project_files():
        mine = layer(module_name(f))
        for mod, line in imports(f):
            theirs = layer(mod)
            if theirs is not None and theirs > mine:
                bad.append(f"{f.relative_to(ROOT)}:{line} ({LAYERS[mine]}) imports {mod} ({LAYERS[theirs]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize("sub, allowed", [("common", {0}), ("data", {0, 1})])
def test_bottom_layers_import_only_the_bottom(sub, allowed):
    """Plumbing imports only plumbing; data only plumbing and data."""
    for f in sorted((ROOT / "hart" / sub).glob("*.py")):
        for mod, line in imports(f):
            if layer(mod) is not None:
                assert layer(mod) in allowed, f"{sub}/{f.name}:{line} imports {mod}"


@pytest.mark.parametrize("first", ["tokenizer", "hart.common.io", "hart.data", "hart.model", "sampling", "hart.train"])
def test_each_package_imports_alone(first):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"import {first}"], cwd=ROOT, check=True)
