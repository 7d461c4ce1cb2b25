"""A plain `pip install .` builds in an isolated environment without torch: setup.py must stop
with one message saying what to run, not a traceback, and HARDLOSS_BUILD_TORCH must make the
build backend ask pip for that torch (build_backend/hardloss_build.py). Each check runs in a
subprocess where `import torch` fails, as it does in pip's isolated build environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = "import sys; sys.modules['torch'] = None\n"  # `import torch` raises ModuleNotFoundError


def _run(code: str, build_torch=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HARDLOSS_BUILD_TORCH"}
    if build_torch is not None:
        env["HARDLOSS_BUILD_TORCH"] = build_torch
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def _assert_no_torch_message(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "pip install --no-build-isolation ." in proc.stderr and "HARDLOSS_BUILD_TORCH=" in proc.stderr


def test_setup_py_without_torch_says_what_to_run():
    proc = _run("import runpy; sys.argv = ['setup.py', '--version']; runpy.run_path('setup.py', run_name='__main__')")
    _assert_no_torch_message(proc)


def test_isolated_build_without_torch_stops_at_requirements():
    # pip's first hook after installing [build-system] requires, as in a plain `pip install .`
    proc = _run("sys.path.insert(0, 'build_backend'); import hardloss_build as b; "
                "print(b.get_requires_for_build_wheel())")
    _assert_no_torch_message(proc)


@pytest.mark.parametrize(("spec", "want"), [("2.13.0", "torch==2.13.0"), ("2.13.0+cpu", "torch==2.13.0+cpu"),
                                            ("torch>=2.13,<2.14", "torch>=2.13,<2.14")])
@pytest.mark.parametrize("hook", ["wheel", "editable"])
def test_build_torch_becomes_a_build_requirement(spec, want, hook):
    # without running setup.py: torch is installed only after this hook has answered
    proc = _run(f"sys.path.insert(0, 'build_backend'); import hardloss_build as b; "
                f"print(repr(b.get_requires_for_build_{hook}()))", build_torch=spec)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr([want])


@pytest.mark.parametrize("spec", ["numpy", "torchvision", "torch-nightly"])
def test_build_torch_other_than_torch_is_refused(spec):
    proc = _run("sys.path.insert(0, 'build_backend'); import hardloss_build as b; b.get_requires_for_build_wheel()",
                build_torch=spec)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "HARDLOSS_BUILD_TORCH" in proc.stderr and repr(spec) in proc.stderr


def test_pyproject_uses_the_backend():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'build-backend = "hardloss_build"' in text and 'backend-path = ["build_backend"]' in text
    assert (ROOT / "build_backend" / "hardloss_build.py").is_file()
