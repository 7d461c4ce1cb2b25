// The op library hardloss_cuda::{fwd, bwd, bwd_inplace, shard_stats, soft_shard_stats,
// soft_shard_grad}: the schema alone, one for every
// compiled backend (op_schema.h; the strings are hardloss_cuda/_schema.py's, tests/test_ops.py
// checks they agree). The CPU kernels register in csrc/cpu/ops_cpu.cpp, the CUDA kernels in
// csrc/cuda/ops_cuda.cpp.
//
// The Python module hardloss_cuda._C exists only so that `import hardloss_cuda._C` loads
// this library and runs the registrations below. It is built against the limited Python API
// (abi3 wheels), hence a plain PyModuleDef and no pybind11.
#include <Python.h>
#include <torch/library.h>

#include "op_schema.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(hardloss_cuda, m) {
  m.def("fwd" HL_FWD_ARGS);
  m.def("bwd" HL_BWD_ARGS);
  m.def("bwd_inplace" HL_BWD_INPLACE_ARGS);
  m.def("shard_stats" HL_SHARD_STATS_ARGS);
  m.def("soft_shard_stats" HL_SOFT_SHARD_STATS_ARGS);
  m.def("soft_shard_grad" HL_SOFT_SHARD_GRAD_ARGS);
}
