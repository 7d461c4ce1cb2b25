#!/usr/bin/env bash
# A CUDA 12 toolkit (CUDA_HOME) for the +cu12 wheel, put together from two package archives:
#   scripts/cuda12_toolkit.sh DEB_VERSION DEST
# - Debian's nvidia-cuda-toolkit=DEB_VERSION (trixie non-free): nvcc, cicc, cudafe++, ptxas,
#   fatbinary, nvlink, libdevice. Fetched with a throwaway apt configuration (own sources,
#   lists and cache under DEST.work), so the system's apt sources are not touched, and
#   unpacked with dpkg -x: nothing is installed.
# - the headers and libcudart.so.12 from the nvidia-cuda-*-cu12 wheels pinned in
#   requirements/cuda12-toolkit.txt (pip download, not installed).
# DEST becomes a standard toolkit tree (bin/ with nvcc.profile, nvvm/, include/, lib64/). It
# is a cache: when DEST/.stamp names the same .deb and wheel pins, nothing is fetched.
# DEBIAN_MIRROR: the Debian archive to fetch from; default: the one this system's apt uses.
# CU12_DEBIAN_SUITES: where to look for the .deb (default "trixie sid"); the pinned version
#   is taken from whichever suite has it.
set -euo pipefail
DEB_VERSION=${1:?usage: cuda12_toolkit.sh DEB_VERSION DEST}
DEST=${2:?usage: cuda12_toolkit.sh DEB_VERSION DEST}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PINS=$ROOT/requirements/cuda12-toolkit.txt
SUITES=${CU12_DEBIAN_SUITES:-trixie sid}
PYTHON=${PYTHON:-python3}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$(dirname "$DEST")"
DEST=$(cd "$(dirname "$DEST")" && pwd)/$(basename "$DEST")

stamp="nvidia-cuda-toolkit=$DEB_VERSION $(grep -v '^#' "$PINS" | sort | tr '\n' ' ')"
if [[ -f $DEST/.stamp && $(cat "$DEST/.stamp") == "$stamp" ]]; then
  echo "cuda12_toolkit: cached $DEST"
  exit 0
fi
die() { echo "cuda12_toolkit: ERROR: $*" >&2; exit 1; }
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (a Debian or Debian-based system)"
[[ -f $KEYRING ]] || die "$KEYRING missing: install the debian-archive-keyring package"

# The Debian mirror: this system's, from its apt sources (the entry of a plain suite such as
# bookworm, not -updates or -security), unless DEBIAN_MIRROR says otherwise.
MIRROR=${DEBIAN_MIRROR:-$(apt-get indextargets --no-release-info --format '$(REPO_URI)|$(RELEASE)' 2>/dev/null \
  | awk -F'|' '$2 !~ /-/ {print $1; exit}')}
[[ -n $MIRROR ]] || die "no Debian mirror in this system's apt sources: set DEBIAN_MIRROR to the URL of a Debian archive mirror"

WORK=$DEST.work
rm -rf "$WORK" "$DEST"
A=$WORK/apt
mkdir -p "$A"/etc/apt.conf.d "$A"/etc/preferences.d "$A"/etc/sources.list.d "$A"/lists/partial "$A"/cache/archives/partial
: > "$A/status"  # an empty dpkg status: apt sees nothing installed (we only download)
for s in $SUITES; do
  echo "deb [signed-by=$KEYRING] $MIRROR $s non-free"
done > "$A/etc/sources.list"
cat > "$A/apt.conf" <<EOF
Dir::Etc::sourcelist "$A/etc/sources.list";
Dir::Etc::sourceparts "$A/etc/sources.list.d";
Dir::Etc::preferences "$A/etc/preferences";
Dir::Etc::preferencesparts "$A/etc/preferences.d";
Dir::State::lists "$A/lists";
Dir::State::status "$A/status";
Dir::Cache "$A/cache";
Dir::Cache::archives "$A/cache/archives";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
export APT_CONFIG=$A/apt.conf
echo "cuda12_toolkit: Debian $SUITES non-free from $MIRROR"
apt-get -q update >"$WORK/apt-update.log" 2>&1 || { cat "$WORK/apt-update.log" >&2; die "apt-get update failed (mirror $MIRROR; set DEBIAN_MIRROR to another Debian mirror)"; }
# apt-get update only warns about a suite it could not fetch; a missing index is an error here.
grep -E '^(W|E):' "$WORK/apt-update.log" >&2 || true

# The pinned version must still be in the archive: Debian keeps only the current version of
# each suite. If it is gone, say what there is and where to pin it.
available=$(apt-cache madison nvidia-cuda-toolkit | awk -F'|' '{gsub(/ /, "", $2); gsub(/^ +| +$/, "", $3); print $2 " (" $3 ")"}')
if ! apt-cache madison nvidia-cuda-toolkit | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$DEB_VERSION"; then
  die "nvidia-cuda-toolkit $DEB_VERSION is not (or no longer) in Debian ${SUITES// /, } non-free.
  The archive has now:
$(sed 's/^/    /' <<<"${available:-nothing}")
  Pin one of these as CU12_TOOLKIT_DEB in the Makefile (or: make wheel-cu12 CU12_TOOLKIT_DEB=<version>),
  and pin the nvidia-cuda-runtime-cu12, -cccl-cu12 and -nvcc-cu12 releases of the same CUDA
  version (the Debian version up to '~') in requirements/cuda12-toolkit.txt. A build from
  another suite must still run on this system (see its Depends on libc6)."
fi
echo "cuda12_toolkit: apt-get download nvidia-cuda-toolkit=$DEB_VERSION"
(cd "$WORK" && apt-get -q download "nvidia-cuda-toolkit=$DEB_VERSION" >"$WORK/apt-download.log" 2>&1) \
  || { cat "$WORK/apt-download.log" >&2; die "apt-get download failed"; }
deb=$(ls "$WORK"/nvidia-cuda-toolkit_*.deb)
dpkg -x "$deb" "$WORK/deb"

echo "cuda12_toolkit: pip download $(grep -v '^#' "$PINS" | tr '\n' ' ')"
"$PYTHON" -m pip download -q --no-deps --no-cache-dir --only-binary=:all: -d "$WORK/wheels" -r "$PINS" 2>&1 \
  | grep -v 'is ignored: it is neither a file nor a directory' || true
ls "$WORK"/wheels/nvidia_cuda_runtime_cu12-*.whl "$WORK"/wheels/nvidia_cuda_cccl_cu12-*.whl \
  "$WORK"/wheels/nvidia_cuda_nvcc_cu12-*.whl >/dev/null || die "pip download of $PINS failed"
for w in "$WORK"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$w" "$WORK/pypi"; done
N=$WORK/pypi/nvidia

# The standard layout nvcc expects of a CUDA_HOME, which torch's cpp_extension assumes too.
T=$WORK/tree
mkdir -p "$T"/bin/crt "$T"/nvvm/bin "$T"/include "$T"/lib64
D=$WORK/deb/usr
for b in nvcc; do cp "$D/lib/nvidia-cuda-toolkit/bin/$b" "$T/bin/"; done  # /usr/bin/nvcc is a wrapper script
for b in cudafe++ ptxas fatbinary nvlink bin2c nvprune cuobjdump cu++filt; do cp "$D/bin/$b" "$T/bin/"; done
cp "$D"/lib/nvidia-cuda-toolkit/bin/crt/*.stub "$T/bin/crt/"
cp "$D/lib/nvidia-cuda-toolkit/bin/cicc" "$T/nvvm/bin/"
cp -r "$D/lib/nvidia-cuda-toolkit/libdevice" "$T/nvvm/"
# Headers: the runtime's, then CCCL (cub, thrust, libcu++), then nvcc's crt/ headers.
cp -r "$N"/cuda_runtime/include/. "$N"/cuda_cccl/include/. "$N"/cuda_nvcc/include/. "$T/include/"
find "$T/include" -name __init__.py -delete
cp "$N/cuda_runtime/lib/libcudart.so.12" "$T/lib64/"
ln -s libcudart.so.12 "$T/lib64/libcudart.so"  # the link name -lcudart looks for
ln -s lib64 "$T/lib"
# As in NVIDIA's own toolkit; Debian's points at /usr/lib/nvidia-cuda-toolkit instead.
cat > "$T/bin/nvcc.profile" <<'EOF'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
EOF
{
  echo "nvidia-cuda-toolkit $DEB_VERSION from Debian ($MIRROR, ${SUITES// /, } non-free), sha256 $(sha256sum "$deb" | cut -d' ' -f1)"
  for w in "$WORK"/wheels/*.whl; do echo "$(basename "$w") sha256 $(sha256sum "$w" | cut -d' ' -f1)"; done
} > "$T/SOURCES.txt"

# Smoke test: one kernel through the whole chain (cicc, ptxas, fatbinary, host compiler,
# link against libcudart) for an sm and a PTX target.
cat > "$WORK/smoke.cu" <<'EOF'
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cub/block/block_reduce.cuh>
__global__ void k(const __half* x, __nv_bfloat16* y, float* s) {
  using R = cub::BlockReduce<float, 128>;
  __shared__ typename R::TempStorage t;
  float v = __half2float(x[threadIdx.x]);
  y[threadIdx.x] = __float2bfloat16(expf(v));
  float r = R(t).Sum(v);
  if (threadIdx.x == 0) *s = r;
}
int main() { return cudaGetLastError() == cudaSuccess ? 0 : 1; }
EOF
# Linked by the host compiler, as torch's cpp_extension does: nvcc's own link step wants
# libcudadevrt.a and libcudart_static.a, which the wheels do not carry.
"$T/bin/nvcc" -O2 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=compute_90 \
  -c "$WORK/smoke.cu" -o "$WORK/smoke.o" || die "the assembled toolkit failed to compile a test kernel"
g++ "$WORK/smoke.o" -o "$WORK/smoke" -L"$T/lib64" -lcudart || die "linking a test kernel against $T/lib64/libcudart.so failed"
"$T/bin/cuobjdump" --list-elf --list-ptx "$WORK/smoke" | grep -q sm_80 || die "no sm_80 code in the test binary"
"$T/bin/nvcc" --version | tail -2

mv "$T" "$DEST"
rm -rf "$WORK"
echo "$stamp" > "$DEST/.stamp"
echo "cuda12_toolkit: CUDA_HOME=$DEST ($(du -sh "$DEST" | cut -f1))"
