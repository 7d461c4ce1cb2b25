// The op library hardloss_cuda::{fwd, bwd, bwd_inplace, shard_stats}: the schema alone, one for every
// compiled backend (the strings are hardloss_cuda/_schema.py's; tests/test_ops.py checks they
// agree). The CPU kernels register in csrc/cpu/ops_cpu.cpp, the CUDA kernels in
// csrc/cuda/ops_cuda.cpp.
//
// The Python module hardloss_cuda._C exists only so that `import hardloss_cuda._C` loads
// this library and runs the registrations below. It is built against the limited Python API
// (abi3 wheels), hence a plain PyModuleDef and no pybind11.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(hardloss_cuda, m) {
  m.def(
      "fwd(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "
      "int ignore_index, float label_smoothing, float k, bool compute_grad, float softcap=0.) "
      "-> (Tensor, Tensor)");
  m.def(
      "bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "
      "Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., "
      "Tensor? grad_lse=None) -> Tensor");
  m.def(
      "bwd_inplace(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor? weight, Tensor? mixture, "
      "Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., "
      "Tensor? grad_lse=None) -> ()");
  m.def("shard_stats(Tensor logits, Tensor target, float k, float softcap=0.) -> Tensor");
}
