"""The build backend of pyproject.toml: setuptools' own, plus torch as a build requirement
when the user asks for one, so that an isolated build (a plain `pip install .` or
`pip install <git url>`) can work.

    HARDLOSS_BUILD_TORCH=2.13.0 pip install .      # torch==2.13.0 in the build environment
    HARDLOSS_BUILD_TORCH="torch>=2.13,<2.14" pip install .

Not by default: pip would put the newest torch of the index into the build environment (on
Linux a multi-GB CUDA build), and the library compiled against it refuses to load under any
other torch release. The usual way stays `pip install torch`, then
`pip install --no-build-isolation .`; pip does not ask this hook for requirements then.
"""

from __future__ import annotations

import os
import re

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook of PEP 517 and 660)


def torch_requirement(spec: str | None = None) -> list[str]:
    """The torch build requirement that HARDLOSS_BUILD_TORCH asks for: [] when unset, a bare
    version pinned with ==, anything else taken as a requirement (it must name torch)."""
    spec = (os.environ.get("HARDLOSS_BUILD_TORCH", "") if spec is None else spec).strip()
    if not spec:
        return []
    if re.fullmatch(r"\d+(\.\d+)*([a-z0-9.+]*)", spec):
        return [f"torch=={spec}"]
    if not re.match(r"torch\b(?![-_.\w])", spec):
        raise SystemExit(f"HARDLOSS_BUILD_TORCH must be a torch version (2.13.0) or a requirement on torch "
                         f"(\"torch>=2.13,<2.14\"), got {spec!r}")
    return [spec]


# setuptools' own hooks run setup.py to collect its setup_requires (it has none). Before pip has
# installed the build requirements torch is not there yet, and setup.py stops without it (with
# the message of what to run, which is what a plain `pip install .` should show): so with a
# torch requirement asked for, they are not run.
def get_requires_for_build_wheel(config_settings=None):
    torch = torch_requirement()
    return torch if torch else _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    torch = torch_requirement()
    return torch if torch else _setuptools.get_requires_for_build_editable(config_settings)
