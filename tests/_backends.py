"""The backends the tests run on, and the tolerances they judge them by: one list, one table.

``backend_devices`` gives the (backend, device) pairs that can run in this process, in one
order; each test file takes the pairs it is about with ``leave_out``. It is a function, not a
constant: Triton runs on CPU tensors only when TRITON_INTERPRET=1 was set before triton was
imported, which the interpreter's test modules do when they are imported, after conftest.
"""

import importlib.util
import os

import pytest
import torch

import hardloss_cuda

# Every (backend, device) pair a test may take, in the order the tests run them.
ORDER = (("reference", "cpu"), ("cpu", "cpu"), ("triton", "cpu"), ("cuda_emu", "cpu"),
         ("cuda", "cuda"), ("triton", "cuda"), ("reference", "cuda"))


def triton_interpreted() -> bool:
    """Whether Triton runs here on CPU tensors (the interpreter, which needs numpy)."""
    return os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("numpy") is not None


def backend_devices(leave_out=()) -> list[tuple[str, str]]:
    """The pairs of ORDER that can run here now, but those in ``leave_out``."""
    avail = hardloss_cuda.available_backends()

    def runs(backend, device):
        if backend not in avail:
            return False
        if device == "cuda":
            return torch.cuda.is_available()
        return backend != "triton" or triton_interpreted()

    return [bd for bd in ORDER if runs(*bd) and bd not in leave_out]


def cpu_backends(leave_out=()) -> list[str]:
    """The backends that run here on CPU tensors, but those in ``leave_out``."""
    return [b for b, d in backend_devices() if d == "cpu" and b not in leave_out]


def backend_names(leave_out=()) -> list[str]:
    """The backends that run here on some device, each once, but those in ``leave_out``."""
    return list(dict.fromkeys(b for b, _d in backend_devices() if b not in leave_out))


def parametrize(pairs):
    """``backend, device`` parametrized over ``pairs``."""
    return pytest.mark.parametrize("backend,device", pairs, ids=[f"{b}-{d}" for b, d in pairs])


# Tolerances by the logits' dtype.
# SAME_INPUT: two backends on the same (rounded) inputs: one rounding of the output in the dtype
# on top of fp32 accumulation; a gradient's absolute tolerance is taken relative to its largest
# entry (tests/test_api.py, tests/test_cuda.py).
SAME_INPUT = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-10}
# RTOL and FLOOR: against a float64 truth, |got - truth| <= RTOL |truth| + max(FLOOR, ...), the
# rest of the bound being the file's own (tests/test_contract.py, tests/test_triton_interpreter.py).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
FLOOR = {torch.float64: 1e-14, torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
