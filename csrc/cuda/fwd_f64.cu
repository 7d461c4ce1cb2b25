// The forward kernels for double logits (fwd_kernels.cuh); one file per dtype so they compile in
// parallel.
#include "cuda/fwd_launch.cuh"

namespace hl {
namespace cuda {
template cudaError_t launch_fwd_typed<double>(const FwdParams&, cudaStream_t);
}  // namespace cuda
}  // namespace hl
