"""hardloss_cuda's Triton kernels are its subpackage ``hardloss_cuda.triton_kernels``: a foreign
top-level ``triton_kernels`` (another project's) earlier on sys.path is never picked up."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

# find_spec, not import: triton must first be imported after TRITON_INTERPRET is set (the
# interpreter tests set it when they are imported).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or importlib.util.find_spec("numpy") is None,
    reason="triton (and numpy, for its interpreter) not installed",
)

CHILD = textwrap.dedent("""
    import sys, torch
    import triton_kernels as foreign
    assert foreign.FOREIGN, "the foreign package is first on sys.path"
    import hardloss_cuda as hl
    from hardloss_cuda import _library
    z = torch.randn(6, 9, requires_grad=True)
    y = torch.randint(0, 9, (6,))
    loss = hl.cross_entropy(z, y, k=0.5, backend="triton")
    loss.backward()
    z2 = z.detach().clone().requires_grad_()
    hl.cross_entropy(z2, y, k=0.5, backend="reference").backward()
    torch.testing.assert_close(loss, hl.cross_entropy(z2, y, backend="reference"))
    torch.testing.assert_close(z.grad, z2.grad)
    launch = _library.triton_launch()
    assert launch.__name__ == "hardloss_cuda.triton_kernels.launch", launch.__name__
    assert sys.modules["triton_kernels"] is foreign
    print("ok")
""")


def test_foreign_triton_kernels_is_not_picked_up(tmp_path):
    pkg = tmp_path / "triton_kernels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("FOREIGN = True\n")
    (pkg / "launch.py").write_text("raise ImportError('the foreign triton_kernels.launch was imported')\n")
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
