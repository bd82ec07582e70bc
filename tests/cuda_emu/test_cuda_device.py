"""The real CUDA extension on a GPU (marked `cuda`): the same checks as the emulated runs, against the fp64 reference and
the CPU sampling kernel. Skipped, with the reason, on machines without a GPU or without chameleon_lite._C_cuda."""

import math

import pytest
import torch

from chameleon_lite.ops import _loader
from chameleon_lite.ops.attention import modality_attention_decode_reference, modality_attention_reference
from chameleon_lite.ops.sampling import sample


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    _loader.load_extensions()
    if not _loader.HAS_CUDA_EXT:
        return "chameleon_lite._C_cuda is not built (install with CHAMELEON_LITE_BUILD_CUDA=1)"
    return None


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


def test_kernels_are_registered_for_cuda():
    for op in ("attention_fwd", "attention_bwd", "attention_decode", "sample"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"chameleon_lite::{op}", "CUDA"), op


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "L,Hq,Hkv,D,cuts,spans",
    [
        (1, 2, 2, 32, [], []),
        (129, 4, 2, 64, [30, 70], [(40, 60)]),
        (1000, 8, 2, 128, [100, 400, 650], [(10, 90), (700, 760)]),
    ],
)
def test_attention_forward(dtype, L, Hq, Hkv, D, cuts, spans):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, L, h, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    doc = torch.zeros(2, L, dtype=torch.int32)
    span = torch.zeros(2, L, dtype=torch.int32)
    for c in cuts:
        doc[:, c:] += 1
    for sid, (lo, hi) in enumerate(spans, start=1):
        span[:, lo:hi] = sid
    scale = 1 / math.sqrt(D)
    ref, lse_ref = modality_attention_reference(q, k, v, doc, span, scale=scale, return_lse=True)
    out, lse = torch.ops.chameleon_lite.attention_fwd(
        *(t.to("cuda", dtype) for t in (q, k, v)), doc.cuda(), span.cuda(), scale
    )
    tol = dict(atol=2e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    torch.testing.assert_close(lse.cpu().double(), lse_ref.double(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_backward_through_modality_attention(dtype):
    from chameleon_lite.ops.attention import modality_attention

    B, L, Hq, Hkv, D = 2, 300, 8, 2, 64
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, L, h, D, generator=g, dtype=torch.float64).requires_grad_() for h in (Hq, Hkv, Hkv))
    dout = torch.randn(B, L, Hq, D, generator=g, dtype=torch.float64)
    doc = torch.zeros(B, L, dtype=torch.int32)
    doc[:, 120:] = 1
    span = torch.zeros(B, L, dtype=torch.int32)
    span[:, 130:200] = 1
    ref = modality_attention_reference(q, k, v, doc, span, scale=0.125)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    qc, kc, vc = (t.detach().to("cuda", dtype).requires_grad_() for t in (q, k, v))
    out = modality_attention(qc, kc, vc, doc.cuda(), span.cuda(), scale=0.125)
    got = torch.autograd.grad(out, (qc, kc, vc), dout.to("cuda", dtype))
    tol = dict(atol=5e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-1, rtol=5e-2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu().double(), b, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_decode(dtype):
    B, S, Hq, Hkv, D = 3, 2000, 8, 2, 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, 1, Hq, D, generator=g, dtype=torch.float64)
    kc, vc = (torch.randn(B, S, Hkv, D, generator=g, dtype=torch.float64) for _ in range(2))
    lens = torch.tensor([2000, 1, 777], dtype=torch.int32)
    ref = modality_attention_decode_reference(q, kc, vc, lens, scale=0.125)
    out = torch.ops.chameleon_lite.attention_decode(
        q.to("cuda", dtype), kc.to("cuda", dtype), vc.to("cuda", dtype), lens.cuda(), 0.125
    )
    tol = dict(atol=2e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.cpu().double(), ref, **tol)


def test_a_bad_cache_length_is_a_device_side_assertion():
    """On a GPU the wrapper asserts the lengths without a host sync; a bad one fails at the next sync (in a child
    process: a device-side assertion leaves the CUDA context unusable)."""
    import subprocess
    import sys

    code = (
        "import torch\nfrom chameleon_lite.ops import modality_attention_decode\n"
        "q = torch.randn(1, 2, 4, 64, device='cuda'); kc = torch.randn(1, 50, 4, 64, device='cuda')\n"
        "modality_attention_decode(q, kc, kc, torch.tensor([1], dtype=torch.int32, device='cuda'))\n"
        "torch.cuda.synchronize()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and ("assert" in r.stderr.lower()), r.stderr[-2000:]


@pytest.mark.parametrize(
    "kw", [dict(), dict(temperature=0.0), dict(top_k=50, top_p=0.9, temperature=0.8), dict(min_p=0.05), dict(top_p=0.5)]
)
def test_sampling_same_ids_as_cpu(kw):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 32768, generator=g) * 3
    for step in range(3):
        cpu_ids, cpu_lp = sample(logits, seed=5, step=step, return_logprobs=True, **kw)
        gpu_ids, gpu_lp = sample(logits.cuda(), seed=5, step=step, return_logprobs=True, **kw)
        assert gpu_ids.is_cuda
        assert torch.equal(gpu_ids.cpu(), cpu_ids)
        torch.testing.assert_close(gpu_lp.cpu(), cpu_lp, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- self-checks on the GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["attention", "attention_decode", "sample"])
def test_every_cuda_kernel_passes_its_self_check(op, dtype):
    from chameleon_lite.ops import verify

    if op == "sample" and dtype == torch.float16:
        pytest.skip("the model's logits are fp32 or bf16")
    verify.clear()
    result = verify.check(op, torch.device("cuda"), dtype)
    assert result.ok, result.line()
    assert result.variant.startswith("cuda sm_")


def test_a_failed_cuda_attention_check_falls_back_to_flex_attention(monkeypatch):
    """With the fused kernel failing its check, attention on the GPU runs compiled flex_attention with the block
    mask of the document and span ids: same output and gradients as the reference."""
    from chameleon_lite import ops
    from chameleon_lite.ops import verify

    monkeypatch.setenv(verify.ENV_FAKE, "attention")
    verify.clear()
    try:
        g = torch.Generator().manual_seed(3)
        B, L, Hq, Hkv, D = 2, 300, 8, 2, 64
        q, k, v = (torch.randn(B, L, h, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
        doc = torch.zeros(B, L, dtype=torch.int32)
        doc[:, 100:] = 1
        doc[1, 250:] = 2
        span = torch.zeros(B, L, dtype=torch.int32)
        span[0, 120:200] = 1
        dev = [t.to("cuda", torch.bfloat16).requires_grad_() for t in (q, k, v)]
        out = ops.modality_attention(*dev, doc.cuda(), span.cuda())
        assert [r.ok for r in verify.results() if r.op == "attention"] == [False]
        ref_in = [t.to(torch.bfloat16).double().requires_grad_() for t in (q, k, v)]
        ref = modality_attention_reference(*ref_in, doc, span)
        torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), atol=5e-2, rtol=5e-2)
        dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(out, dev, dout.to("cuda", torch.bfloat16))
        ref_grads = torch.autograd.grad(ref, ref_in, dout)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a.cpu().double(), b, atol=8e-2, rtol=8e-2)
    finally:
        verify.clear()


def test_a_failed_cuda_sampling_check_falls_back_to_the_reference_on_the_gpu(monkeypatch):
    from chameleon_lite.ops import verify

    monkeypatch.setenv(verify.ENV_FAKE, "sample")
    verify.clear()
    try:
        logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(4)) * 3
        ids = sample(logits.cuda(), seed=9, step=2, temperature=0.8, top_k=40)
        assert ids.is_cuda and [r.ok for r in verify.results() if r.op == "sample"] == [False]
        assert torch.equal(ids.cpu(), sample(logits, seed=9, step=2, temperature=0.8, top_k=40))
    finally:
        verify.clear()
