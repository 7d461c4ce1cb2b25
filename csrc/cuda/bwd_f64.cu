// The backward kernels for double logits: bwd (bwd_kernels.cuh) and soft_shard_grad
// (kept_grad.cuh); one file per dtype so they compile in parallel.
#include "cuda/bwd_kernels.cuh"
#include "cuda/kept_grad.cuh"

namespace hl {
namespace cuda {
template cudaError_t launch_bwd_typed<double>(const BwdParams&, cudaStream_t);
template cudaError_t launch_kept_grad_typed<double>(const KeptGradParams&, cudaStream_t);
}  // namespace cuda
}  // namespace hl
