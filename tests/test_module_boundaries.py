"""The package's module boundaries (issue #30): no shipped module but the reference backend's
registration imports the oracle, and no module imports another's private names."""

import ast
from pathlib import Path

import hardloss_cuda

PKG = Path(hardloss_cuda.__file__).resolve().parent
# __init__ exports the oracle as hardloss_cuda.reference; _ops.py registers it as the
# "reference" backend's ops.
MAY_IMPORT_REFERENCE = {"__init__.py", "_ops.py", "reference.py"}


def _imports(path: Path):
    """(module, names) of every relative import of the file, module as written after the dots."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node.module or "", [a.name for a in node.names]


def test_only_the_reference_backend_imports_the_oracle():
    bad = [p.name for p in PKG.glob("*.py") if p.name not in MAY_IMPORT_REFERENCE
           for module, names in _imports(p) if module == "reference" or (module == "" and "reference" in names)]
    assert not bad, f"shipped modules importing reference.py: {bad}"


def test_no_private_names_across_modules():
    bad = [f"{p.relative_to(PKG)}: from .{module} import {name}" for p in PKG.rglob("*.py")
           for module, names in _imports(p) if module for name in names if name.startswith("_")]
    assert not bad, "\n".join(bad)
