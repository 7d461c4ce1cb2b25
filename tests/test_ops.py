"""The registered ops: opcheck, torch.compile, the shared schema, double backward."""

import pytest
import torch

import hardloss_cuda as H
from hardloss_cuda import _ops, _schema


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
def test_opcheck(backend, device, kind):
    op = getattr(torch.ops.hardloss_cuda, _ops.FWD_OPS[backend]).default
    torch.library.opcheck(op, _args(device, kind))


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


@pytest.mark.skipif(_ops.C_IMPORT_ERROR is not None, reason="the C++ extension is not built")
def test_compiled_schema_matches_python_schema():
    """csrc/ops.cpp and _schema.py must agree: one schema for every backend."""
    def args(schema):
        return [(a.name, str(a.type)) for a in schema.arguments]

    ref = torch.ops.hardloss_cuda.reference_fwd.default._schema
    fwd = torch.ops.hardloss_cuda.fwd.default._schema
    assert args(fwd) == args(ref)
    assert [str(r.type) for r in fwd.returns] == [str(r.type) for r in ref.returns]
    assert "Tensor(a!) logits" in str(torch.ops.hardloss_cuda.fwd_inplace.default._schema)
    assert str(torch.ops.hardloss_cuda.bwd.default._schema).endswith(_schema.BWD_ARGS)


def test_available_backends_and_build_info():
    avail = H.available_backends()
    assert "reference" in avail
    assert set(avail) | set(H.unavailable_reasons()) == {"cuda", "triton", "cpu", "reference"}
    info = H.build_info()
    assert info["extension_loaded"] == (_ops.C_IMPORT_ERROR is None)
    if info["extension_loaded"]:
        assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
