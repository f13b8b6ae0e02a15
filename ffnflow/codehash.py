"""Fingerprints of library code, so that Snakemake reruns a stage when its code changes.

Snakemake tracks a rule's own script but not the modules it imports. The fingerprint of a
stage is a hash over the source of its module and every ``ffnflow`` module it imports,
directly or not (found by parsing imports, nothing is executed).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "ffnflow":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> frozenset[str]:
    return _parsed_imports(str(path), path.stat().st_mtime_ns)


@functools.cache
def _parsed_imports(path: str, mtime_ns: int) -> frozenset[str]:
    """ffnflow modules imported by the file at ``path`` (parsed once per version: the
    workflow asks for the fingerprints of many stages that share most of their modules)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_text(), filename=path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(n for n in names if n.split(".")[0] == "ffnflow")


def module_closure(module: str) -> list[Path]:
    """Source files of ``module`` and of all ffnflow modules it imports, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or str(path) in seen:
            continue
        seen[str(path)] = path
        todo.extend(_imports(path))
    return sorted(seen.values())


def code_fingerprint(module: str) -> str:
    """SHA-256 (first 16 hex digits) of the sources in the import closure of ``module``."""
    digest = hashlib.sha256()
    for path in module_closure(module):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
