// The dtype dispatch and device queries of the launchers (csrc/cuda/dispatch.cu), compiled for
// the host (HL_CUDA_EMU).
#include "cuda/dispatch.cu"
