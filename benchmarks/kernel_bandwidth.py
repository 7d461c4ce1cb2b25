"""The fused kernels alone (no autograd), as a fraction of a device-to-device copy measured in
the same run: how close each kernel is to what it must move, apart from what the autograd path
adds around it.

    fwd       loss + 4 stats per row: reads the logits once             N C s bytes
    bwd       gradient from logits + stats, scaled by grad_loss:
              reads the logits once, writes the gradient once           2 N C s bytes
    fwd+bwd   both, back to back                                        3 N C s bytes

GB/s counts those bytes (what the kernels move); "%floor" is the docs/CONTRACT.md section 4 floor of
loss plus gradient (2 N C s) over the fwd+bwd time, i.e. how far the two-pass design is from
a single fused pass, as a fraction of the copy bandwidth.

    python benchmarks/kernel_bandwidth.py     (CUDA only)
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Case  # noqa: E402

import hardloss_cuda as H  # noqa: E402
from hardloss_cuda import reference  # noqa: E402

CASES = [Case(16384, 131072, "bf16", 1.0), Case(16384, 131072, "bf16", 0.5), Case(8192, 32000, "fp16", 0.5),
         Case(16384, 32000, "bf16", 0.5), Case(65536, 4096, "bf16", 0.5), Case(65536, 1000, "fp32", 0.5),
         Case(65536, 1000, "fp32", 0.5, mixture=True), Case(262144, 128, "bf16", 0.5)]

# backend -> (forward op, backward op) under torch.ops.hardloss_cuda, same argument lists
KERNELS = {"cuda": ("fwd", "bwd"), "triton": ("triton_fwd", "triton_bwd")}


def main() -> None:
    copy = common.copy_gbps("cuda")
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy:.0f} GB/s")
    print(f"{'case':32s} {'kernel':16s} {'ms':>8s} {'GB/s':>7s} {'%copy':>6s} {'%floor':>7s}")
    backends = [b for b in KERNELS if b in H.available_backends()]
    for case in CASES:
        xs, y, W = common.make_inputs(case, "cuda", copies=2)
        nbytes = case.N * case.C * case.elem_size
        gl = torch.ones(case.N, device="cuda", dtype=reference.acc_dtype(xs[0].dtype))  # no row skipped
        for backend in backends:
            fwd_op = getattr(torch.ops.hardloss_cuda, KERNELS[backend][0])
            bwd_op = getattr(torch.ops.hardloss_cuda, KERNELS[backend][1])
            pairs = [(x, fwd_op(x, y, None, W, -100, 0.0, case.k, True)[1]) for x in xs]

            def f(p):
                fwd_op(p[0], y, None, W, -100, 0.0, case.k, True)

            def b(p):
                bwd_op(gl, p[0], y, None, W, p[1], -100, 0.0, case.k)

            def fb(p):
                _loss, stats = fwd_op(p[0], y, None, W, -100, 0.0, case.k, True)
                bwd_op(gl, p[0], y, None, W, stats, -100, 0.0, case.k)

            for name, step, moved in (("fwd", f, nbytes), ("bwd", b, 2 * nbytes), ("fwd+bwd", fb, 3 * nbytes)):
                ms = common.time_ms(step, pairs, "cuda", 3, 30)
                gbps = moved / (ms * 1e-3) / 1e9
                floor = f"{100 * case.floor_bytes(True) / (ms * 1e-3) / 1e9 / copy:7.1f}" if name == "fwd+bwd" else ""
                print(f"{case.label():32s} {backend + ' ' + name:16s} {ms:8.3f} {gbps:7.0f} {100 * gbps / copy:6.1f} {floor:>7s}")
            del pairs
        del xs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
