"""docs/ARCHITECTURE.md names every module, and the code keeps the dependency rules it
states: a module missing from the page, a stale name on it, or an import against the
direction fails here."""
import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("genome", "experiments", "swarm")


def documented() -> dict[str, set[str]]:
    """folder -> names listed under it in the layout block (the page's first code block)."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("```\n", 2)[1]
    out, folder = defaultdict(set), None
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            head = line.split()[0]
            folder = head if head.endswith("/") else None
            if folder is None:
                out[""].add(head)
            continue
        names = re.split(r"\s{2,}", line.strip())[0]
        if folder is not None and not line.startswith(" " * 10):
            out[folder].update(n.strip() for n in names.split(","))
    return out


def modules() -> dict[str, set[str]]:
    """folder -> the .py files in it (package markers and the corpus build script aside)."""
    out = defaultdict(set)
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO)
            if path.name == "__init__.py" or "data" in rel.parts or "__pycache__" in rel.parts:
                continue
            out[str(rel.parent) + "/"].add(path.name)
    return out


def test_every_module_is_on_the_architecture_page_and_nothing_stale():
    listed, real = documented(), modules()
    missing = {f"{folder}{name}" for folder, names in real.items()
               for name in names if name not in listed.get(folder, set())}
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {sorted(missing)}"
    stale = {f"{folder}{name}" for folder, names in listed.items() for name in names
             if name.endswith(".py") and not (REPO / folder / name).is_file()}
    assert not stale, f"docs/ARCHITECTURE.md names files that do not exist: {sorted(stale)}"


def imports() -> dict[str, set[str]]:
    """module -> the project modules it imports at run time (lazily or not)."""
    out = {}
    paths = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
             if "data" not in p.relative_to(REPO).parts] + [REPO / "node.py"]
    names = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
             for p in paths}
    for path in paths:
        mod = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", None) == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: no import at run time
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in names:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    found.add(target)
                    break
        out[mod] = found
    return out


def external_imports(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
    return tops


GRAPH = imports()


def layer(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] == "experiments" and len(parts) > 1:
        return ".".join(parts[:2]) if parts[1] != "simulation" else mod
    return parts[0]


@pytest.mark.parametrize("importer, forbidden", [
    ("swarm", ("experiments", "node")),
    ("genome", ("experiments", "node")),
    ("experiments.run", ("experiments.agents", "experiments.research", "experiments.views",
                         "experiments.simulation", "node")),
    ("experiments.agents", ("experiments.research", "experiments.views",
                            "experiments.simulation", "node")),
    ("experiments.research", ("experiments.views", "experiments.simulation.simulate", "node")),
    ("experiments.views", ("experiments.simulation.simulate", "node")),
])
def test_imports_point_down(importer, forbidden):
    wrong = sorted(f"{mod} -> {target}" for mod, targets in GRAPH.items()
                   if mod == importer or mod.startswith(importer + ".")
                   for target in targets
                   if any(target == f or target.startswith(f + ".") for f in forbidden))
    assert not wrong


def test_swarm_never_imports_torch():
    wrong = sorted(str(p.relative_to(REPO)) for p in (REPO / "swarm").rglob("*.py")
                   if "torch" in external_imports(p))
    assert not wrong


def test_no_import_cycles():
    seen, on_path, cycles = set(), [], []

    def visit(mod):
        if mod in on_path:
            cycles.append(on_path[on_path.index(mod):] + [mod])
            return
        if mod in seen:
            return
        seen.add(mod)
        on_path.append(mod)
        for target in sorted(GRAPH.get(mod, ())):
            visit(target)
        on_path.pop()

    for mod in sorted(GRAPH):
        visit(mod)
    # a package's __init__ re-exporting its own modules is not a cycle of jobs
    real = [c for c in cycles if len({x for x in c if x.count(".") > 0}) > 1
            and not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]
    assert not real, [" -> ".join(c) for c in real]
