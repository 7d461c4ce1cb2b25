// The forward and backward kernels for f64 logits, compiled for the host (HL_CUDA_EMU): the
// very source the device build compiles, csrc/cuda/fwd_f64.cu and bwd_f64.cu.
#include "cuda/fwd_f64.cu"
#include "cuda/bwd_f64.cu"
