"""The import-time check that refuses a compiled library built for another torch / CUDA."""

from hardloss_cuda._version_check import mismatch

CUDA_BUILD = {"version": "0.1.0+cu130torch2.14", "torch": "2.14.1+cu130", "with_cuda": True, "torch_cuda": "13.0"}
CPU_BUILD = {"version": "0.1.0+cputorch2.13", "torch": "2.13.0+cpu", "with_cuda": False, "torch_cuda": None}


def test_matching_builds_load():
    assert mismatch(CUDA_BUILD, "2.14.0+cu130", "13.0") is None  # patch releases share the ABI
    assert mismatch(CUDA_BUILD, "2.14.1", "13.2") is None  # same CUDA major
    assert mismatch(CPU_BUILD, "2.13.0+cpu", None) is None
    assert mismatch(CPU_BUILD, "2.13.1+cu130", "13.0") is None  # a CPU build runs under a CUDA torch
    assert mismatch({}, "2.13.0", None) is None  # no record: nothing to compare


def test_other_torch_release_is_refused():
    why = mismatch(CPU_BUILD, "2.14.1+cu130", "13.0")
    assert "built for torch 2.13.0+cpu" in why and "torch 2.14.1+cu130 is installed" in why
    assert "HARDLOSS_IGNORE_BUILD_MISMATCH" in why


def test_cuda_major_or_cpu_torch_is_refused():
    assert "torch uses CUDA 12.8" in mismatch(CUDA_BUILD, "2.14.1+cu128", "12.8")
    assert "installed torch has no CUDA" in mismatch(CUDA_BUILD, "2.14.1+cpu", None)
