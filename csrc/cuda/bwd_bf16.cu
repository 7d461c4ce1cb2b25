// The backward kernel for __nv_bfloat16 logits (bwd_kernels.cuh); one file per dtype so they compile in
// parallel.
#include "cuda/bwd_kernels.cuh"

namespace hl {
namespace cuda {
template cudaError_t launch_bwd_typed<__nv_bfloat16>(const BwdParams&, cudaStream_t);
}  // namespace cuda
}  // namespace hl
