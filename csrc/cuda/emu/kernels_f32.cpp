// The forward and backward kernels for f32 logits, compiled for the host (HL_CUDA_EMU): the
// very source the device build compiles, csrc/cuda/fwd_f32.cu and bwd_f32.cu.
#include "cuda/fwd_f32.cu"
#include "cuda/bwd_f32.cu"
