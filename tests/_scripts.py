"""The repository's scripts (benchmarks/, examples/), which are not packages, imported by path
for the tests that call their functions."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(folder: str, name: str):
    """<folder>/<name>.py of the repository imported as a module named <folder>_<name>."""
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
