// The forward and backward kernels for bf16 logits, compiled for the host (HL_CUDA_EMU): the
// very source the device build compiles, csrc/cuda/fwd_bf16.cu and bwd_bf16.cu.
#include "cuda/fwd_bf16.cu"
#include "cuda/bwd_bf16.cu"
