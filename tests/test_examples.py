"""examples/digits.py trains with every technique; each must learn (not collapse)."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")


def test_digits_example_learns_with_every_technique():
    path = Path(__file__).parents[1] / "examples" / "digits.py"
    spec = importlib.util.spec_from_file_location("digits_example", path)
    digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits)
    results = digits.main(epochs=10, seed=0)
    assert len(results) == 7
    for name, acc in results.items():
        assert acc > 0.85, f"{name}: test accuracy {acc:.3f}"  # chance is 0.1
