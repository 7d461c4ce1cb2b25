// ops_emu.cpp: the cuda_emu backend. The ops hardloss_cuda::cuda_emu_{fwd, bwd, bwd_inplace,
// shard_stats, soft_shard_stats, soft_shard_grad} (the schemas of csrc/op_schema.h) on CPU tensors, through the same glue as the
// device build (csrc/cuda/glue.h) and the same launchers and kernels (csrc/cuda/*.cuh, compiled
// for the host by emu/kernels_*.cpp), run by the emulator (docs/CUDA_EMU.md).
//
// The Python module hardloss_cuda._cuda_emu loads this library and carries the emulator's
// controls (limited API, as hardloss_cuda._C): profiles(), profile(), set_profile(name),
// seed(), set_seed(n), log_launches(on), launches(). Built by `make test` (setup.py with
// HARDLOSS_CUDA_EMU=1), never into a release wheel.
#include <Python.h>
#include <torch/library.h>

#include <ATen/ops/fill.h>

#include <limits>

#include "cuda/emu/runtime.h"
#include "cuda/glue.h"
#include "op_schema.h"

namespace hl {
namespace cuda {
namespace {

struct OnEmu {
  static void check_device(const at::Tensor& logits) {
    TORCH_CHECK(logits.device().is_cpu(), "hardloss_cuda: the cuda_emu backend runs on CPU tensors; logits are on ",
                logits.device());
  }
  struct Guard {
    explicit Guard(at::Device) {}
  };
  static cudaStream_t stream() { return nullptr; }
  static void check(cudaError_t err) {
    TORCH_CHECK(err == cudaSuccess, "hardloss_cuda cuda_emu: the launch failed: ", cudaGetErrorString(err));
  }
  // What the kernel does not write stays NaN.
  static void fresh(at::Tensor& t) { t.fill_(std::numeric_limits<double>::quiet_NaN()); }
};

using EmuOps = Ops<OnEmu>;

}  // namespace
}  // namespace cuda
}  // namespace hl

TORCH_LIBRARY_FRAGMENT(hardloss_cuda, m) {
  m.def("cuda_emu_fwd" HL_FWD_ARGS);
  m.def("cuda_emu_bwd" HL_BWD_ARGS);
  m.def("cuda_emu_bwd_inplace" HL_BWD_INPLACE_ARGS);
  m.def("cuda_emu_shard_stats" HL_SHARD_STATS_ARGS);
  m.def("cuda_emu_soft_shard_stats" HL_SOFT_SHARD_STATS_ARGS);
  m.def("cuda_emu_soft_shard_grad" HL_SOFT_SHARD_GRAD_ARGS);
}

TORCH_LIBRARY_IMPL(hardloss_cuda, CPU, m) {
  m.impl("cuda_emu_fwd", &hl::cuda::EmuOps::fwd);
  m.impl("cuda_emu_bwd", &hl::cuda::EmuOps::bwd);
  m.impl("cuda_emu_bwd_inplace", &hl::cuda::EmuOps::bwd_inplace);
  m.impl("cuda_emu_shard_stats", &hl::cuda::EmuOps::shard_stats);
  m.impl("cuda_emu_soft_shard_stats", &hl::cuda::EmuOps::soft_shard_stats);
  m.impl("cuda_emu_soft_shard_grad", &hl::cuda::EmuOps::soft_shard_grad);
}

// ---------------------------------------------------------------------------------------
// The Python controls
// ---------------------------------------------------------------------------------------
namespace {

namespace emu = hl::emu;

PyObject* profiles(PyObject*, PyObject*) {
  PyObject* out = PyList_New(emu::profile_count());
  for (int i = 0; i < emu::profile_count(); ++i) PyList_SetItem(out, i, PyUnicode_FromString(emu::profile(i).name));
  return out;
}

PyObject* profile(PyObject*, PyObject*) { return PyUnicode_FromString(emu::profile(emu::current_device()).name); }

PyObject* set_profile(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  const int dev = emu::find_profile(name);
  if (dev < 0) {
    PyErr_Format(PyExc_ValueError, "cuda_emu: no device profile %s", name);
    return nullptr;
  }
  PyObject* previous = PyUnicode_FromString(emu::profile(emu::current_device()).name);
  emu::set_device(dev);
  return previous;
}

PyObject* seed(PyObject*, PyObject*) { return PyLong_FromUnsignedLongLong(emu::seed()); }

PyObject* set_seed(PyObject*, PyObject* args) {
  unsigned long long s = 0;
  if (!PyArg_ParseTuple(args, "K", &s)) return nullptr;
  emu::set_seed(s);
  Py_RETURN_NONE;
}

PyObject* log_launches(PyObject*, PyObject* args) {
  int on = 0;
  if (!PyArg_ParseTuple(args, "p", &on)) return nullptr;
  emu::log_launches(on != 0);
  Py_RETURN_NONE;
}

// [(kernel, (grid x, y, z), (block x, y, z), dynamic shared bytes, profile)], and clears them.
PyObject* launches(PyObject*, PyObject*) {
  const std::vector<emu::LaunchRecord> log = emu::take_launches();
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(log.size()));
  for (size_t i = 0; i < log.size(); ++i) {
    const emu::LaunchRecord& r = log[i];
    PyList_SetItem(out, static_cast<Py_ssize_t>(i),
                   Py_BuildValue("(s(III)(III)ns)", r.kernel.c_str(), r.grid.x, r.grid.y, r.grid.z, r.block.x,
                                 r.block.y, r.block.z, static_cast<Py_ssize_t>(r.smem), emu::profile(r.device).name));
  }
  return out;
}

PyMethodDef kMethods[] = {
    {"profiles", profiles, METH_NOARGS, "The emulated device profiles."},
    {"profile", profile, METH_NOARGS, "The profile launches use now."},
    {"set_profile", set_profile, METH_VARARGS, "Use a profile from now on; returns the previous one."},
    {"seed", seed, METH_NOARGS, "The seed of the block and thread orders."},
    {"set_seed", set_seed, METH_VARARGS, "Set the seed (and restart the launch numbers)."},
    {"log_launches", log_launches, METH_VARARGS, "Start (True) or stop logging launches; clears the log."},
    {"launches", launches, METH_NOARGS, "The logged launches since the last call, and clear them."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cuda_emu", "The emulated CUDA backend's controls.", -1, kMethods,
                       nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__cuda_emu(void) { return PyModule_Create(&kModule); }
