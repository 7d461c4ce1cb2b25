"""Where should the CPU kernel produce the gradient? (issue 3; the answer is in csrc/cpu/fwd.cpp)

- produce: forward writes the pseudo-gradient, backward scales it (what the library does):
  fwd(compute_grad=True) + bwd;
- recompute: forward only computes the row statistics, backward recomputes the gradient from
  the logits. Timed as fwd(compute_grad=False) + fwd(compute_grad=True): a real recompute
  kernel would skip the second statistics pass and fuse the scaling, so this is an upper
  bound, and fwd(compute_grad=True) alone is its lower bound.

Also prints the speed targets of issue 3 (forward+backward through the public API, fp32):
cpu >= 3x reference at k = 0.5, cpu >= 1.2x F.cross_entropy at k = 1.

    python benchmarks/cpu_kernel_variants.py [--repeat 7]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import hardloss_cuda as H

fwd, bwd = torch.ops.hardloss_cuda.fwd, torch.ops.hardloss_cuda.bwd


def median_ms(fn, inputs, repeat):
    """Median wall time of fn(x) in ms, cycling through distinct inputs, warm-up excluded."""
    fn(inputs[0])
    times = []
    for r in range(repeat):
        x = inputs[r % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(repeat: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    for N, C in ((8192, 1000), (4096, 32000)):
        xs = [torch.randn(N, C) * 3 for _ in range(3)]
        y = torch.randint(0, C, (N,))
        gl = torch.full((N,), 1.0 / N)
        k = 0.5

        def produce(x):
            loss, g, lse = fwd(x, y, None, None, -100, 0.0, k, True)
            bwd(gl, g)

        def recompute_upper(x):
            fwd(x, y, None, None, -100, 0.0, k, False)
            fwd(x, y, None, None, -100, 0.0, k, True)

        def stats_only(x):
            fwd(x, y, None, None, -100, 0.0, k, False)

        def grad_pass(x):
            fwd(x, y, None, None, -100, 0.0, k, True)

        def api(backend, k):
            def run(x):
                x = x.detach().requires_grad_()
                H.cross_entropy(x, y, k=k, backend=backend).backward()
            return run

        def torch_ce(x):
            x = x.detach().requires_grad_()
            F.cross_entropy(x, y).backward()

        t = {name: median_ms(fn, xs, repeat) for name, fn in (
            ("produce", produce), ("recompute (upper)", recompute_upper),
            ("recompute (lower) = fwd with grad", grad_pass), ("fwd stats only", stats_only),
            ("cpu k=0.5", api("cpu", 0.5)), ("cpu k=1", api("cpu", 1.0)), ("F.cross_entropy", torch_ce))}
        t["reference k=0.5"] = median_ms(api("reference", 0.5), xs, max(3, repeat // 2))
        print(f"\n{N} x {C}")
        for name, ms in t.items():
            print(f"  {name:36s} {ms:9.2f} ms")
        print(f"  cpu vs reference, k=0.5, fwd+bwd:    {t['reference k=0.5'] / t['cpu k=0.5']:.2f}x (target >= 3)")
        print(f"  cpu vs F.cross_entropy, k=1, fwd+bwd: {t['F.cross_entropy'] / t['cpu k=1']:.2f}x (target >= 1.2)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    main(ap.parse_args().repeat)
