"""The inference ops of a decode step: weight-only bf16 linear, RMSNorm and rotary embedding, against their
PyTorch references."""

import pytest
import torch
from isa_builds import run_in_builds

from chameleon_lite import ops
from chameleon_lite.ops.linear import MAX_ROWS

SHAPES = [(1, 512, 64), (2, 512, 17), (3, 1408, 5), (4, 8, 3), (5, 13, 7), (7, 1, 1), (16, 64, 33), (32, 96, 4)]


def _pair(m, k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g), torch.randn(n, k, generator=g).bfloat16()


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_linear_bf16w_matches_fp64(m, k, n):
    x, w = _pair(m, k, n)
    y = torch.ops.chameleon_lite.linear_bf16w(x, w)
    ref = x.double() @ w.double().t()
    assert y.dtype == torch.float32 and y.shape == (m, n)
    # fp32 accumulation of k products: the FlashAttention-style bound of a few ulps times sqrt(k) scale
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * k**0.5)


def test_linear_bf16w_layouts_and_empty():
    x, w = _pair(6, 40, 9)
    x3 = x.view(2, 3, 40)
    assert torch.ops.chameleon_lite.linear_bf16w(x3, w).shape == (2, 3, 9)
    xt = torch.randn(40, 6).t()  # non-contiguous rows
    torch.testing.assert_close(torch.ops.chameleon_lite.linear_bf16w(xt, w), ops.linear_bf16w_reference(xt, w))
    assert torch.ops.chameleon_lite.linear_bf16w(torch.empty(0, 40), w).shape == (0, 9)
    assert torch.ops.chameleon_lite.linear_bf16w(x, w[:0]).shape == (6, 0)


def test_linear_bf16w_dispatch():
    x, w = _pair(MAX_ROWS + 1, 16, 8)
    assert not ops.linear_fused_supported(x, w)  # a GEMM on fp32 weights is faster beyond MAX_ROWS rows
    torch.testing.assert_close(ops.linear_bf16w(x, w), ops.linear_bf16w_reference(x, w))
    xg = x[:2].clone().requires_grad_()
    assert not ops.linear_fused_supported(xg, w)  # no autograd: the reference takes it
    ops.linear_bf16w(xg, w).sum().backward()
    assert xg.grad is not None
    assert not ops.linear_fused_supported(x[:2].double(), w)
    with pytest.raises(ValueError, match="features"):
        ops.linear_bf16w(torch.randn(2, 15), w)


def test_linear_bf16w_rejects_bad_arguments():
    x, w = _pair(2, 16, 8)
    with pytest.raises(RuntimeError, match="bfloat16"):
        torch.ops.chameleon_lite.linear_bf16w(x, w.float())
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.chameleon_lite.linear_bf16w(x.double(), w)
    with pytest.raises(RuntimeError, match="last dimension"):
        torch.ops.chameleon_lite.linear_bf16w(torch.randn(2, 15), w)


def test_opcheck_decode_ops():
    x, w = _pair(3, 24, 10)
    torch.library.opcheck(torch.ops.chameleon_lite.linear_bf16w, (x, w), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(
        torch.ops.chameleon_lite.rms_norm,
        (torch.randn(2, 3, 24), torch.randn(24), 1e-5),
        test_utils=("test_schema", "test_faketensor"),
    )
    cos, sin = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.library.opcheck(
        torch.ops.chameleon_lite.rope,
        (torch.randn(2, 3, 5, 8), cos, sin),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("shape", [(1, 1, 512), (2, 7, 64), (3, 1, 8, 32), (0, 16), (4, 1)])
def test_rms_norm_matches_reference(shape):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(*shape, generator=g) * 3, torch.randn(shape[-1], generator=g)
    y = torch.ops.chameleon_lite.rms_norm(x, w, 1e-5)
    torch.testing.assert_close(y, ops.rms_norm_reference(x, w, 1e-5), rtol=1e-5, atol=1e-6)
    zero = torch.ops.chameleon_lite.rms_norm(torch.zeros(2, 8), torch.ones(8), 1e-5)
    assert torch.equal(zero, torch.zeros(2, 8))  # an all-zero row stays finite (eps)


@pytest.mark.parametrize("shape", [(1, 1, 8, 64), (2, 5, 3, 32), (1, 3, 1, 2), (0, 4, 2, 8)])
def test_rope_matches_reference(shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g)
    cos, sin = torch.randn(*shape[:2], shape[3] // 2, generator=g), torch.randn(*shape[:2], shape[3] // 2, generator=g)
    torch.testing.assert_close(
        torch.ops.chameleon_lite.rope(x, cos, sin), ops.rope_reference(x, cos, sin), rtol=1e-6, atol=1e-6
    )
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous heads
    torch.testing.assert_close(torch.ops.chameleon_lite.rope(xt, cos, sin), ops.rope_reference(x, cos, sin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_trains_through_the_kernel_with_the_reference_gradient(dtype):
    """CPU float32/bfloat16 rotary embedding under autograd runs the C++ op forward and backward (the rotation by
    -sin); values and gradients match autograd of the reference in fp64 on the same rounded inputs."""
    g = torch.Generator().manual_seed(3)
    x0 = (torch.randn(2, 7, 3, 16, generator=g) * 2).to(dtype)
    angles = torch.rand(2, 7, 8, generator=g) * 6.3
    cos, sin = angles.cos(), angles.sin()
    w = torch.randn(2, 7, 3, 16, generator=g, dtype=torch.float64)
    x = x0.clone().requires_grad_()
    y = ops.rope(x, cos, sin)
    assert type(y.grad_fn).__name__ == "_RopeFnBackward" and y.dtype == dtype
    (y.double() * w).sum().backward()
    xr = x0.double().requires_grad_()
    yr = ops.rope_reference(xr, cos.double(), sin.double())
    (yr * w).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.double(), yr.detach(), atol=tol, rtol=tol)
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 48), (3, 1, 4, 64), (1, 5), (130, 8)])
def test_rms_norm_trains_through_the_kernels_with_the_reference_gradient(dtype, shape):
    """CPU float32/bfloat16 RMSNorm under autograd runs rms_norm_fwd/rms_norm_bwd; output, input gradient and the
    fp32 weight gradient (summed over more rows than one block of 64) match autograd of the reference in fp64."""
    g = torch.Generator().manual_seed(4)
    x0 = (torch.randn(*shape, generator=g) * 3).to(dtype)
    w0 = torch.randn(shape[-1], generator=g)
    gy = torch.randn(*shape, generator=g, dtype=torch.float64)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    y = ops.rms_norm(x, w, 1e-5)
    assert type(y.grad_fn).__name__ == "_RmsNormFnBackward" and y.dtype == dtype
    (y.double() * gy).sum().backward()
    xr, wr = x0.double().requires_grad_(), w0.double().requires_grad_()
    (ops.rms_norm_reference(xr, wr, 1e-5) * gy).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.double(), ops.rms_norm_reference(xr, wr, 1e-5).detach(), atol=tol, rtol=tol)
    assert x.grad.dtype == dtype and w.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(w.grad.double(), wr.grad, atol=tol * 10, rtol=tol)


def test_rms_norm_training_ops_reject_bad_arguments_and_pass_opcheck():
    x, w = torch.randn(2, 3, 8), torch.randn(8)
    y, rstd = torch.ops.chameleon_lite.rms_norm_fwd(x, w, 1e-5)
    assert rstd.shape == (6,)
    with pytest.raises(RuntimeError, match="last dimension"):
        torch.ops.chameleon_lite.rms_norm_fwd(x, torch.ones(7), 1e-5)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.chameleon_lite.rms_norm_fwd(x.double(), w, 1e-5)
    with pytest.raises(RuntimeError, match="rstd"):
        torch.ops.chameleon_lite.rms_norm_bwd(x, x, w, rstd[:5])
    with pytest.raises(RuntimeError, match="shaped like x"):
        torch.ops.chameleon_lite.rms_norm_bwd(x[:1], x, w, rstd)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.chameleon_lite.rms_norm_fwd, (x, w, 1e-5), test_utils=utils)
    torch.library.opcheck(torch.ops.chameleon_lite.rms_norm_bwd, (torch.randn(2, 3, 8), x, w, rstd), test_utils=utils)
    torch.library.opcheck(
        torch.ops.chameleon_lite.rope,
        (torch.randn(2, 3, 5, 8).bfloat16(), torch.randn(2, 3, 4), torch.randn(2, 3, 4)),
        test_utils=utils,
    )


def test_norm_and_rope_fall_back_for_training_and_other_dtypes():
    x = torch.randn(2, 3, 4, 8, requires_grad=True)
    w = torch.ones(8, requires_grad=True)
    cos, sin = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    # both train through their kernels (tests above); rope takes the reference when cos/sin need gradients
    (ops.rope(ops.rms_norm(x, w, 1e-5), cos, sin)).sum().backward()
    c2, s2 = cos.clone().requires_grad_(), sin.clone().requires_grad_()
    y = ops.rope(x, c2, s2)
    assert type(y.grad_fn).__name__ != "_RopeFnBackward"
    y.sum().backward()
    assert c2.grad is not None and s2.grad is not None
    assert x.grad is not None and w.grad is not None
    xb = torch.randn(2, 3, 4, 8).bfloat16()
    assert ops.rms_norm(xb, torch.ones(8), 1e-5).dtype == torch.bfloat16
    assert ops.rope(xb, cos, sin).dtype == torch.bfloat16


def test_norm_and_rope_reject_bad_arguments():
    with pytest.raises(RuntimeError, match="last dimension"):
        torch.ops.chameleon_lite.rms_norm(torch.randn(2, 8), torch.ones(7), 1e-5)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.chameleon_lite.rms_norm(torch.randn(2, 8).double(), torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="even D"):
        torch.ops.chameleon_lite.rope(torch.randn(1, 2, 3, 5), torch.randn(1, 2, 2), torch.randn(1, 2, 2))
    with pytest.raises(RuntimeError, match="cos and sin"):
        torch.ops.chameleon_lite.rope(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3), torch.randn(1, 2, 3))


def test_linear_same_result_at_one_and_two_threads_and_in_both_builds(tmp_path):
    code = (
        "import sys, torch\n"
        "import chameleon_lite.ops\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, w = torch.randn(11, 517, generator=g), torch.randn(1003, 517, generator=g).bfloat16()\n"
        "torch.save(torch.ops.chameleon_lite.linear_bf16w(x, w), sys.argv[2])\n"
    )
    out = run_in_builds(code, "CHAMELEON_LITE_LINEAR_ISA", tmp_path)
    for isa in ("auto", "portable"):
        assert torch.equal(out[isa, 1], out[isa, 2])  # the thread count never changes a result
    torch.testing.assert_close(out["auto", 1], out["portable", 1], rtol=1e-5, atol=1e-4)


def test_bf16_decode_rows_take_the_float32_kernels_and_match_the_reference(monkeypatch):
    """A decode step of a model run in bf16 (a few bf16 rows): norm, RoPE and the bf16-weight linear widen the rows to
    float32 for the one-pass kernels; the result is the reference's within one bf16 rounding. Longer inputs (a
    prompt) keep the reference."""
    from chameleon_lite.model.transformer import _bf16_rows, _bf16_step

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(1, 1, 256, generator=g) * 3).bfloat16()
    w = torch.randn(256, generator=g).bfloat16()
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), ops.rms_norm_reference(x, w, 1e-5), rtol=8e-3, atol=8e-3)
    q = torch.randn(1, 1, 8, 32, generator=g).bfloat16()
    cos, sin = torch.randn(1, 1, 16, generator=g), torch.randn(1, 1, 16, generator=g)
    torch.testing.assert_close(ops.rope(q, cos, sin), ops.rope_reference(q, cos, sin), rtol=8e-3, atol=8e-3)
    wt = torch.randn(300, 256, generator=g).bfloat16()
    assert _bf16_step(x, wt) and not _bf16_step(x.float(), wt) and not _bf16_step(x.expand(1, 64, 256), wt)
    torch.testing.assert_close(_bf16_rows(x, wt), torch.nn.functional.linear(x, wt), rtol=1.6e-2, atol=5e-2)
    calls = []
    monkeypatch.setattr(ops.norm, "rms_norm_reference", lambda *a: calls.append(1) or a[0])
    ops.rms_norm(x, w, 1e-5)
    assert not calls  # the kernel took the decode row
    ops.rms_norm(x.expand(1, 64, 256).contiguous(), w, 1e-5)
    assert calls  # a prompt keeps the reference
