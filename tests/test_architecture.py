"""The layering docs/architecture.md describes, checked on the source: no import cycle
between recsmith's top-level packages, and no generic module names a model family, a
structure or an architecture (they are looked up in their registries)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from recsmith.models.sequential.architectures import ARCHITECTURES
from recsmith.models.structures import STRUCTURES
from recsmith.plugins import DEFAULT_FAMILY, FAMILIES, family

SRC = Path(__file__).resolve().parents[1] / "src" / "recsmith"
# the code every family goes through: it finds families and their parts by name, never names one
GENERIC = ["cli.py", "plugins.py", "registry.py", "config/", "experiments/", "serve/", "monitor/",
           "data/compatibility.py", "train/run.py", "train/trainer.py", "train/evaluate.py",
           "train/evaluate_run.py", "train/resume.py", "train/precision.py", "train/checkpoint.py",
           "families/base.py", "families/__init__.py"]
ALLOWED = {("plugins.py", DEFAULT_FAMILY)}  # the family a config gets when it names none


def package_of(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0]


def imported_packages(path: Path) -> set[str]:
    """recsmith's top-level packages `path` imports (any import, module level or not)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "recsmith" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_no_import_cycle_between_top_level_packages():
    edges = defaultdict(set)
    for path in SRC.rglob("*.py"):
        source = package_of(path)
        edges[source] |= imported_packages(path) - {source}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges[start])

    cycles = sorted((a, b) for a in edges for b in edges[a] if reaches(b, a, {b}))
    assert cycles == [], f"import cycles between packages (a imports b, and b leads back to a): {cycles}"


def registered_names() -> set[str]:
    family(DEFAULT_FAMILY)  # imports the built-in families
    return set(FAMILIES.names()) | set(ARCHITECTURES.names()) | set(STRUCTURES.names())


def test_generic_code_names_no_family_structure_or_architecture():
    names = registered_names()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if not any(rel == g or (g.endswith("/") and rel.startswith(g)) for g in GENERIC):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                named = value in names or any(value.startswith(f"model.{n}") for n in names)
                if named and (rel, value) not in ALLOWED:
                    found.append(f"{rel}:{node.lineno}: {value!r}")
    assert found == [], "generic code naming a family, structure or architecture:\n" + "\n".join(found)


def test_the_name_check_would_see_one():
    """The check above is not vacuous: the families' own modules do name them."""
    names = registered_names()
    own = (SRC / "models" / "sequential" / "architectures.py").read_text()
    assert {"din", "hybrid", "lightgbm"} <= names and '"din"' in own
