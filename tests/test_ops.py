"""The registered ops: opcheck, torch.compile, the shared schema, double backward."""

import pathlib

import pytest
import torch

import hardloss_cuda as H
from hardloss_cuda import _library, _ops, _schema, backends, reference


def _args(device, kind):
    C = 7
    x = torch.randn(5, C, device=device, requires_grad=True)
    y = torch.randint(0, C, (5,), device=device)
    w = torch.rand(C, device=device) + 0.5
    if kind == "onehot":
        return (x, y, w, None, -100, 0.0, 0.5, True)
    if kind == "mixture":
        W = torch.softmax(torch.randn(C, C, device=device), 1).requires_grad_(True)
        return (x, y, None, W, -100, 0.0, 2.0, True)
    return (x, torch.softmax(torch.randn(5, C, device=device), 1), w, None, -100, 0.1, 1.0, True)


@pytest.mark.parametrize("kind", ["onehot", "mixture", "probs"])
def test_bwd_op_against_reference(backend, device, kind):
    """The backward op: grad_loss times the pseudo-gradient of the float64 oracle, in place or
    not; a row with zero incoming gradient gets exactly 0."""
    x, target, w, W, ignore_index, s, k, _ = _args(device, kind)
    x, target, W = x.detach(), target.detach(), None if W is None else W.detach()
    with torch.no_grad():
        _loss, stats = _ops.fwd_op(backend)(x, target, w, W, ignore_index, s, k, True)
    gl = torch.randn(x.shape[0], device=device)
    gl[1] = 0
    _l, g64, _lse = reference.rows(x.double(), target.double() if target.is_floating_point() else target,
                                   None if w is None else w.double(), None if W is None else W.double(),
                                   ignore_index, s, k)
    out = _ops.bwd_op(backend)(gl, x, target, w, W, stats, ignore_index, s, k)
    torch.testing.assert_close(out.double(), gl.double()[:, None] * g64, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    xi = x.clone()
    _ops.bwd_inplace_op(backend)(gl, xi, target, w, W, stats, ignore_index, s, k)
    torch.testing.assert_close(xi, out, rtol=0, atol=0)


def test_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    x = torch.randn(6, 9, device=device)
    y = torch.randint(0, 9, (6,), device=device)
    W = H.mcel.simple_mixture(torch.full((9, 9), 1 / 8, device=device).fill_diagonal_(0), 0.2)

    def step(x):
        return H.cross_entropy(x, y, k=0.5, trim=0.5, backend=backend) + H.cross_entropy(x, y, mixture=W, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    step(xe).backward()
    compiled(xc).backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_double_backward_raises(backend, device):
    x = torch.randn(4, 6, device=device, requires_grad=True)
    y = torch.randint(0, 6, (4,), device=device)
    loss = H.cross_entropy(x, y, k=0.5, backend=backend)
    (g,) = torch.autograd.grad(loss, x, create_graph=False)
    assert torch.isfinite(g).all()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(H.cross_entropy(x, y, k=0.5, backend=backend), x, create_graph=True)


_HEADER = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "op_schema.h"


@pytest.mark.skipif(not _HEADER.exists(), reason="no csrc/ here (an installed package)")
def test_op_schema_header_is_generated_from_schema_py():
    """csrc/op_schema.h is _schema.py's, written by scripts/gen_op_schema.py: a hand edit on
    either side without rerunning it fails here."""
    assert _HEADER.read_text() == _schema.c_header(), "csrc/op_schema.h is stale: run python scripts/gen_op_schema.py"


@pytest.mark.skipif(_library.C_IMPORT_ERROR is not None, reason="the C++ extension is not built")
def test_compiled_schema_matches_python_schema():
    """The ops the loaded library defines (csrc/ops.cpp, and the emulated backend's ops when
    built) and _schema.py agree: one schema for every backend (a stale build fails here)."""
    def args(schema):
        return [(a.name, str(a.type), a.alias_info is not None and a.alias_info.is_write) for a in schema.arguments]

    emu = ("cuda_emu",) if _library.CUDA_EMU is not None else ()
    for compiled in backends.OP_KINDS:
        for python in [f"{b}_{compiled}" for b in ("reference", "triton") + emu]:
            c = getattr(torch.ops.hardloss_cuda, compiled).default._schema
            p = getattr(torch.ops.hardloss_cuda, python).default._schema
            assert args(c) == args(p)
            assert [str(r.type) for r in c.returns] == [str(r.type) for r in p.returns]
    assert str(torch.ops.hardloss_cuda.fwd.default._schema).endswith(_schema.FWD_ARGS)
    assert str(torch.ops.hardloss_cuda.bwd.default._schema).endswith(_schema.BWD_ARGS)
    assert str(torch.ops.hardloss_cuda.bwd_inplace.default._schema).endswith(_schema.BWD_INPLACE_ARGS)
    assert str(torch.ops.hardloss_cuda.shard_stats.default._schema).endswith(_schema.SHARD_STATS_ARGS)
    assert str(torch.ops.hardloss_cuda.soft_shard_stats.default._schema).endswith(_schema.SOFT_SHARD_STATS_ARGS)
    assert str(torch.ops.hardloss_cuda.soft_shard_grad.default._schema).endswith(_schema.SOFT_SHARD_GRAD_ARGS)


def test_available_backends_and_build_info():
    avail = H.available_backends()
    assert "reference" in avail
    assert set(avail) | set(H.unavailable_reasons()) == {"cuda", "triton", "cpu", "cuda_emu", "reference"}
    info = H.build_info()
    assert info["extension_loaded"] == (_library.C_IMPORT_ERROR is None)
    if info["extension_loaded"]:
        assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
        # the emulated CUDA backend: listed exactly when this build has it, never chosen by "auto"
        assert ("cuda_emu" in avail) == bool(info.get("cuda_emu"))
    from hardloss_cuda import backends
    assert backends.resolve("auto", torch.device("cpu")) != "cuda_emu"
    if "cuda_emu" in avail:
        assert backends.resolve("cuda_emu", torch.device("cpu")) == "cuda_emu"
        with pytest.raises(RuntimeError, match="runs on CPU tensors"):
            backends.resolve("cuda_emu", torch.device("cuda"))
