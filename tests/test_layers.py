"""The house rules, enforced: every import points down the stage order, and the import graph has no cycle.

Counted are all import statements (top-level, function-local and under `TYPE_CHECKING`), `importlib`
calls with a literal module name, and string constants that name a module (`"headhunter.format.headset"`)
or a registration reference (`"module:attr"`), which is how plugins register things lazily.
docs/architecture.md draws the same order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> import package (pyproject.toml's package-dir).
PACKAGES = {"core": "headhunter", "plugins": "headhunter.plugins", "cli": "headhunter.cli",
            "headsets": "headhunter.headsets"}
#: The stages, bottom first. A module may import only from a lower stage or from its own folder (acyclically).
STAGES = (
    ("headhunter.errors", "headhunter._version", "headhunter.headsets"),  # headsets/: package data only
    ("headhunter.plugin_system",),
    ("headhunter.format",),
    ("headhunter.contracts",),
    ("headhunter.plan",),
    ("headhunter.engine",),
    ("headhunter.objective",),
    ("headhunter.search",),
    ("headhunter.atlases",),
    ("headhunter.report",),
    ("headhunter.workflow",),
    ("headhunter",),  # the public facade (headhunter/__init__.py): lazy names for everything below
    ("headhunter.plugins",),
    ("headhunter.cli",),
    ("headhunter.bench",),  # apart: the library never imports it; only the CLI's bench verb does
)
#: The one edge into the bench room.
ALLOWED_UP = {("headhunter.cli", "headhunter.bench")}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _stage(module: str) -> tuple[int, str]:
    """(stage index, room) of a module: the longest matching stage prefix."""
    best = None
    for index, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or (module.startswith(prefix + ".") and prefix != "headhunter"):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no stage; add its folder to STAGES (and docs/architecture.md)")
    return best


def _target(name: str) -> str | None:
    """The project module `name` refers to (a module, or an attribute of one), or None if not ours."""
    while name:
        if name in MODULES:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def _imports(module: str, path: Path) -> list[tuple[str, int, str]]:
    """(target module, line, kind) for every reference from `module` to another project module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        names: list[tuple[str, str]] = []
        if isinstance(node, ast.Import):
            names = [(a.name, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, "import") for a in node.names]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names = [(node.args[0].value, "importlib")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("headhunter.") \
                and " " not in node.value and "\n" not in node.value:
            names = [(node.value.split(":", 1)[0], "string")]
        for name, kind in names:
            target = _target(name)
            if target is not None and target != module:
                found.append((target, getattr(node, "lineno", 0), kind))
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_stage():
    for module in MODULES:
        _stage(module)


def test_imports_only_point_down_the_stages():
    upward = []
    for module, edges in GRAPH.items():
        own, room = _stage(module)
        for target, line, kind in edges:
            theirs, their_room = _stage(target)
            if (room, their_room) in ALLOWED_UP:
                continue
            if theirs > own or (theirs == own and their_room != room):
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line} ({kind}) {module} -> {target}")
    assert not upward, "imports that point up the stage order:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = {m: sorted({t for t, _, _ in edges}) for m, edges in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_library_never_imports_the_benches():
    for module, edges in GRAPH.items():
        if _stage(module)[1] in ("headhunter.bench", "headhunter.cli"):
            continue
        assert not [t for t, _, _ in edges if t.startswith("headhunter.bench")], module


@pytest.mark.parametrize("bad", ["headhunter.plan.plan:Plan"])
def test_the_checker_sees_registration_strings(bad, tmp_path):
    """The rule has teeth: a registration string from a low stage to a higher one is caught."""
    path = tmp_path / "x.py"
    path.write_text(f"REF = {bad!r}\n")
    assert _imports("headhunter.format.x", path) == [("headhunter.plan.plan", 1, "string")]
