#!/usr/bin/env bash
# Build a hardloss_cuda wheel against the torch installed for PYTHON, into OUT_DIR.
#   scripts/build_wheel.sh PYTHON OUT_DIR
# The environment switches of setup.py apply (HARDLOSS_FORCE_CUDA, HARDLOSS_SKIP_CUDA,
# TORCH_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME); README "Wheels" has the build matrix.
# It builds from a copy of the work tree (tracked and new files, not ignored ones): an
# in-tree build would overwrite the editable install's _C*.so and _build_info.json.
set -euo pipefail
# The emulated CUDA backend is a test build (docs/CUDA_EMU.md): never in a wheel.
unset HARDLOSS_CUDA_EMU
PYTHON=${1:?usage: build_wheel.sh PYTHON OUT_DIR}
# absolute, but not through the venv's symlink (that would leave the venv)
[[ $PYTHON == */* ]] && PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
OUT=$(mkdir -p "${2:?usage: build_wheel.sh PYTHON OUT_DIR}" && cd "$2" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT

cd "$ROOT"
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$SRC"
rm -f "$OUT"/hardloss_cuda-*.whl
(cd "$SRC" && "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$OUT" .)
ls -l "$OUT"/hardloss_cuda-*.whl
