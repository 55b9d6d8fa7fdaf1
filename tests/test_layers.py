"""Unit tier: the package's structure, as docs/design.md and docs/architecture.md
describe it. Imports go one way (no circle, type-only imports included), modules
stay small, and the layers above the client core build no protocol requests."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "pohmelfs"
MAX_LINES = 600
# The packages, lowest first: each may import only those on a lower level (and
# itself). The server and the client core are on one level and import neither other.
LEVELS = [("protocol",), ("security",), ("wire",), ("server", "client"),
          ("fuse", "fsspec_backend"), ("cli",)]  # fmt: skip
LEVEL = {package: i for i, level in enumerate(LEVELS) for package in level}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in it (type-only too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from . import kernel``: the module, if it is one; else the package.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def test_no_import_cycles_type_only_ones_included() -> None:
    g = graph()
    # A package imports its own modules to export them (``protocol/__init__``): that
    # is not a circle unless one of them imports a module that imports it back.
    done: set[str] = set()
    on_path: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in on_path, " -> ".join([*on_path[on_path.index(name) :], name])
        on_path.append(name)
        for dep in sorted(g[name]):
            visit(dep)
        on_path.pop()
        done.add(name)

    for name in sorted(g):
        visit(name)


def test_the_layers_import_downwards_only() -> None:
    def package(name: str) -> str | None:
        parts = name.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in LEVEL else None

    wrong = []
    for name, deps in graph().items():
        here = package(name)
        for dep in deps:
            there = package(dep)
            if here is None or there is None or here == there:
                continue
            if LEVEL[there] >= LEVEL[here]:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, wrong


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, long


def test_the_mount_builds_no_protocol_requests() -> None:
    """fuse/ asks through the client core's typed calls (client/calls.py and the
    client's methods): it names no protocol command and sends no raw request."""
    sends = {"request", "start", "call"}
    found = []
    for path in sorted((PACKAGE / "fuse").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "Command":
                found.append(f"{path.name}:{node.lineno}: Command")
            elif isinstance(node, ast.Attribute) and node.attr == "Command":
                found.append(f"{path.name}:{node.lineno}: p.Command")
            elif isinstance(node, ast.ImportFrom) and any(a.name == "Command" for a in node.names):
                found.append(f"{path.name}:{node.lineno}: imports Command")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in sends and _is_connection(node.func.value)):  # fmt: skip
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
    assert not found, found


def _is_connection(value: ast.expr) -> bool:
    """``conn.x(...)``, ``client.x(...)``, ``self.client.x(...)``, ``x.connection().y``."""
    if isinstance(value, ast.Name):
        return value.id in ("conn", "client")
    if isinstance(value, ast.Attribute):
        return value.attr in ("client", "_client", "conn")
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
        return value.func.attr == "connection"
    return False
