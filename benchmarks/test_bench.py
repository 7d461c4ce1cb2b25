"""pytest-benchmark microbenchmarks: every candidate of common.py (the library's backends,
F.cross_entropy, peers on a GPU) over dtype, shape, k, mixture, trimming and an LM head, forward and
forward+backward, with fresh inputs rotated between rounds and warm-up rounds excluded.

    pytest benchmarks/test_bench.py --benchmark-only [--benchmark-group-by=param:case]
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Case  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = (
    [Case(1024, 1000, "fp32", k) for k in (0.5, 1.0)]
    + [Case(1024, 1000, "bf16", 0.5), Case(256, 8192, "fp32", 0.5), Case(4096, 10, "fp32", 0.5),
       Case(1024, 1000, "fp32", 0.5, mixture=True), Case(1024, 1000, "fp32", 0.5, trim=0.5),
       Case(512, 4096, "fp32", 1.0, hidden=128)]
    if DEVICE == "cpu" else
    [Case(16384, 32000, "bf16", k) for k in (0.5, 1.0)]
    + [Case(65536, 1000, "fp32", 0.5, mixture=True), Case(16384, 32000, "bf16", 0.5, trim=0.5),
       Case(4096, 128256, "bf16", 1.0, hidden=4096)]
)
PARAMS = [(case, name) for case in CASES for name in common.candidates(case, DEVICE)]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize(("case", "backend"), PARAMS, ids=[f"{c.label()}-{b}" for c, b in PARAMS])
def test_bench(benchmark, case, backend, mode):
    if backend == "reference" and case.N * case.C > 4e6 and DEVICE == "cpu":
        pytest.skip("the reference takes seconds per call at this size on a CPU")
    xs, y, W = common.make_inputs(case, DEVICE, copies=3)
    backward = mode == "fwd+bwd"
    for x in xs:
        x.requires_grad_(backward)
    step = common.make_step(common.candidates(case, DEVICE)[backend], y, W, backward)
    turn = iter(range(10**9))

    def rotate():  # a different input set every round, so caches do not flatter
        return (xs[next(turn) % len(xs)],), {}

    def timed(x):
        step(x)
        common.sync(DEVICE)

    benchmark.group = f"{case.label()} {mode}"
    benchmark.extra_info.update(floor_bytes=case.floor_bytes(backward), device=DEVICE)
    benchmark.pedantic(timed, setup=rotate, rounds=10, warmup_rounds=2)
