"""The fused forward kernels alone (loss + pseudo-gradient written, no autograd, no backward
scaling), as a fraction of a device-to-device copy measured in the same run: how close each
kernel is to the 2 N C s floor, apart from what the autograd path adds around it.

    python benchmarks/kernel_bandwidth.py     (CUDA only)
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Case  # noqa: E402

import hardloss_cuda as H  # noqa: E402

CASES = [Case(16384, 131072, "bf16", 1.0), Case(16384, 131072, "bf16", 0.5), Case(8192, 32000, "fp16", 0.5),
         Case(16384, 32000, "bf16", 0.5), Case(65536, 4096, "bf16", 0.5), Case(65536, 1000, "fp32", 0.5),
         Case(65536, 1000, "fp32", 0.5, mixture=True), Case(262144, 128, "bf16", 0.5)]


def main() -> None:
    copy = common.copy_gbps("cuda")
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy:.0f} GB/s")
    print(f"{'case':32s} {'kernel':14s} {'ms':>8s} {'GB/s':>7s} {'%copy':>6s}")
    ops = {"cuda fwd": torch.ops.hardloss_cuda.fwd, "triton fwd": torch.ops.hardloss_cuda.triton_fwd}
    for case in CASES:
        xs, y, W = common.make_inputs(case, "cuda", copies=2)
        for name, op in ops.items():
            if name.startswith("cuda") and "cuda" not in H.available_backends():
                continue
            ms = common.time_ms(lambda x: op(x, y, None, W, -100, 0.0, case.k, True), xs, "cuda", 3, 30)
            gbps = case.floor_bytes(True) / (ms * 1e-3) / 1e9
            print(f"{case.label():32s} {name:14s} {ms:8.3f} {gbps:7.0f} {100 * gbps / copy:6.1f}")
        del xs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
