// The forward and backward kernels for f16 logits, compiled for the host (HL_CUDA_EMU): the
// very source the device build compiles, csrc/cuda/fwd_f16.cu and bwd_f16.cu.
#include "cuda/fwd_f16.cu"
#include "cuda/bwd_f16.cu"
