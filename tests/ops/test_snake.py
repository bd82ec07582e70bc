"""The fused Snake op against its fp64 PyTorch reference: values, gradients, edge shapes, both instruction-set
builds, thread-count independence, and the wrapper's fallback for what the op does not take."""

import pytest
import torch
from isa_builds import run_in_builds

from chameleon_lite.ops.snake import fused_supported, snake, snake_reference

SHAPES = [(1, 1, 1), (2, 3, 17), (1, 5, 8), (3, 4, 1031), (2, 16, 4096), (1, 2, 0), (0, 3, 5)]


def _ref64(x, la, g):
    x64 = x.detach().double().requires_grad_()
    la64 = la.detach().double().requires_grad_()
    y = snake_reference(x64, la64)
    y.backward(g.double())
    return y.detach(), x64.grad, la64.grad


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_values_and_gradients(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=gen) * 3).requires_grad_()
    la = (torch.randn(1, shape[1], 1, generator=gen) * 0.7).requires_grad_()
    g = torch.randn(shape, generator=gen)
    y = snake(x, la)
    assert y.shape == x.shape and y.dtype == torch.float32
    y.backward(g)
    ry, rgx, rla = _ref64(x, la, g)
    torch.testing.assert_close(y.double(), ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), rgx, rtol=1e-5, atol=1e-5)
    # the log-alpha gradient sums B*T terms: tolerance relative to the sum of their magnitudes
    scale = max(1.0, float(rla.abs().max())) * max(1, shape[0] * shape[2]) ** 0.5
    torch.testing.assert_close(la.grad.double(), rla, rtol=1e-5, atol=1e-5 * scale)
    assert la.grad.shape == la.shape


def test_extreme_values_and_layouts():
    x = torch.tensor([[[0.0, 1e-8, -1e-8, 50.0, -50.0, 1e4, -1e4, 3.14159]]]).repeat(2, 3, 3)
    la = torch.tensor([-4.0, 0.0, 4.0])  # a from 0.018 to 55, given as [C]
    torch.testing.assert_close(snake(x, la).double(), snake_reference(x.double(), la.double()), rtol=1e-5, atol=1e-4)
    base = torch.randn(2, 40, 3)  # non-contiguous [B, C, T] view
    xt = base.transpose(1, 2)
    la3 = torch.randn(3)
    torch.testing.assert_close(snake(xt, la3), snake_reference(xt, la3), rtol=1e-5, atol=1e-5)


def test_opcheck():
    x = torch.randn(2, 3, 40, requires_grad=True)
    la = torch.randn(1, 3, 1, requires_grad=True)
    torch.library.opcheck(torch.ops.chameleon_lite.snake.default, (x, la))
    torch.library.opcheck(torch.ops.chameleon_lite.snake_bwd.default, (torch.randn(2, 3, 40), x.detach(), la.detach()))


def test_fallback_for_other_dtypes_and_gradcheck():
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    la = torch.randn(1, 3, 1, dtype=torch.float64, requires_grad=True)
    assert not fused_supported(x, la)
    assert torch.autograd.gradcheck(snake, (x, la))
    xb = torch.randn(2, 3, 9).bfloat16()
    assert snake(xb, torch.zeros(1, 3, 1, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_op_rejects_bad_arguments():
    with pytest.raises(RuntimeError, match="one value per channel"):
        torch.ops.chameleon_lite.snake(torch.randn(2, 3, 4), torch.zeros(4))
    with pytest.raises(RuntimeError, match=r"\[B, C, T\]"):
        torch.ops.chameleon_lite.snake(torch.randn(3, 4), torch.zeros(3))
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.chameleon_lite.snake(torch.randn(2, 3, 4).double(), torch.zeros(3).double())
    with pytest.raises(RuntimeError, match="shaped like x"):
        torch.ops.chameleon_lite.snake_bwd(torch.randn(2, 3, 5), torch.randn(2, 3, 4), torch.zeros(3))


def test_same_gradients_at_one_and_two_threads_and_in_both_builds(tmp_path):
    code = (
        "import os, sys, torch\n"
        "from chameleon_lite.ops.snake import snake\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = (torch.randn(4, 8, 3001, generator=g) * 2).requires_grad_()\n"
        "la = torch.randn(1, 8, 1, generator=g).requires_grad_()\n"
        "y = snake(x, la)\n"
        "y.backward(torch.randn(4, 8, 3001, generator=g))\n"
        "torch.save((y.detach(), x.grad, la.grad), sys.argv[2])\n"
    )
    out = run_in_builds(code, "CHAMELEON_LITE_SNAKE_ISA", tmp_path)
    for isa in ("auto", "portable"):
        for a, b in zip(out[isa, 1], out[isa, 2]):
            assert torch.equal(a, b)  # thread count never changes a result
    for a, b in zip(out["auto", 1], out["portable", 1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
