"""Refuse a compiled library built for another torch / CUDA, with a message instead of an
obscure loader error (undefined symbol, libc10_cuda.so not found), as torchvision does.

torch has no stable C++ ABI across releases, so the binary is tied to the torch
major.minor it was built with; a CUDA build also needs a CUDA torch of the same CUDA major.
"""

from __future__ import annotations

import json
from pathlib import Path

BUILD_INFO = Path(__file__).with_name("_build_info.json")


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def read_build_info() -> dict:
    return json.loads(BUILD_INFO.read_text()) if BUILD_INFO.exists() else {}


def mismatch(info: dict, torch_version: str, torch_cuda: str | None) -> str | None:
    """Why a library described by ``info`` cannot load under this torch, or None."""
    if not info:
        return None  # no record (a hand-made build): let the loader decide
    built = info.get("torch", "")
    problems = []
    if _major_minor(built) != _major_minor(torch_version):
        problems.append(f"it was built for torch {built}, but torch {torch_version} is installed")
    if info.get("with_cuda"):
        want = (info.get("torch_cuda") or "").split(".")[0]
        if torch_cuda is None:
            problems.append(f"it was built with CUDA {info.get('torch_cuda')}, but the installed torch has no CUDA")
        elif torch_cuda.split(".")[0] != want:
            problems.append(f"it was built with CUDA {info.get('torch_cuda')}, but torch uses CUDA {torch_cuda}")
    if not problems:
        return None
    return (
        f"hardloss_cuda {info.get('version', '?')}: the compiled library does not match this "
        f"PyTorch: {'; '.join(problems)}. Install the hardloss_cuda wheel built for your torch "
        "and CUDA (README, 'Wheels'), or rebuild from source with `pip install "
        "--no-build-isolation .`. Set HARDLOSS_IGNORE_BUILD_MISMATCH=1 to skip the compiled "
        "library and use the pure-PyTorch backends instead."
    )
