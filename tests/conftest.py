import os

import pytest
import torch

import hardloss_cuda
from hardloss_cuda import _library

from ._backends import backend_devices, parametrize

# Every test that takes `backend, device` runs once per backend that can run here; the
# reference stays the oracle. Triton is covered by test_triton_interpreter.py on the CPU.
_avail = hardloss_cuda.available_backends()
# `make test` builds the extension and sets this, so a broken build fails loudly instead of
# quietly narrowing the suite to the reference.
if os.environ.get("HARDLOSS_REQUIRE_EXTENSION") == "1" and "cpu" not in _avail:
    raise RuntimeError(f"HARDLOSS_REQUIRE_EXTENSION=1 but: {hardloss_cuda.unavailable_reasons()['cpu']}")
# ... and the emulated CUDA backend (docs/CUDA_EMU.md), unless built without it on purpose.
if os.environ.get("HARDLOSS_REQUIRE_CUDA_EMU") == "1" and "cuda_emu" not in _avail:
    raise RuntimeError(f"HARDLOSS_REQUIRE_CUDA_EMU=1 but: {hardloss_cuda.unavailable_reasons()['cuda_emu']}")
# `make wheels` runs this suite against the installed wheel, from outside the source tree.
if os.environ.get("HARDLOSS_EXPECT_INSTALLED") == "1" and "site-packages" not in hardloss_cuda.__file__:
    raise RuntimeError(f"HARDLOSS_EXPECT_INSTALLED=1 but hardloss_cuda comes from {hardloss_cuda.__file__}")
BACKEND_DEVICES = backend_devices(leave_out=[("triton", "cpu")])


def api_backends():
    """BACKEND_DEVICES plus Triton on CPU tensors when it runs interpreted here (the calling
    module sets TRITON_INTERPRET=1 before triton is imported) and the emulated CUDA kernels
    (cuda_emu): the backends of the API tests (test_linear, test_lm_options, test_func),
    parametrized as `backend, device`."""
    return parametrize(backend_devices(leave_out=[("reference", "cuda")]))


def pytest_generate_tests(metafunc):
    # A module with its own BACKENDS list (test_contract.py: Triton too) or an api_backends()
    # mark parametrizes itself.
    if getattr(metafunc.module, "BACKENDS", None) is not None:
        return
    if any("backend" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")):
        return
    if {"backend", "device"} <= set(metafunc.fixturenames):
        ids = [f"{b}-{d}" for b, d in BACKEND_DEVICES]
        metafunc.parametrize(("backend", "device"), BACKEND_DEVICES, ids=ids)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh inputs every run, reproducible from the printed seed when a test fails.
    seed = int(os.environ.get("HARDLOSS_TEST_SEED", torch.seed() % 2**31))
    torch.manual_seed(seed)
    if _library.CUDA_EMU is not None:  # the emulator's block and thread orders, and its device
        _library.CUDA_EMU.set_seed(seed)  # profile: over the runs, every test sees both
        _library.CUDA_EMU.set_profile("small" if seed % 2 else "h100")
    request.node.user_properties.append(("seed", seed))
    yield


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            item.add_report_section(call.when, "seed", f"HARDLOSS_TEST_SEED={seeds[0]}")
