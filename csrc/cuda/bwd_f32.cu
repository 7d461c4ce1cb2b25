// The backward kernel for float logits (bwd_kernels.cuh); one file per dtype so they compile in
// parallel.
#include "cuda/bwd_kernels.cuh"

namespace hl {
namespace cuda {
template cudaError_t launch_bwd_typed<float>(const BwdParams&, cudaStream_t);
}  // namespace cuda
}  // namespace hl
