"""The CUDA attention kernels (csrc/cuda/attention/*.cuh), run on CPU threads under the emulator, against the fp64
reference: ragged lengths, several documents, bidirectional spans (one crossing a tile edge), GQA, bf16, decode
with split-KV and rows with nothing visible. Tolerances as ARCHITECTURE §10."""

import math

import pytest
import torch

from chameleon_lite.ops.attention import modality_attention_decode_reference, modality_attention_reference


def ids(B, L, cuts, spans):
    doc = torch.zeros(B, L, dtype=torch.int32)
    span = torch.zeros(B, L, dtype=torch.int32)
    for c in cuts:
        doc[:, c:] += 1
    for sid, (lo, hi) in enumerate(spans, start=1):
        span[:, lo:hi] = sid
    return doc, span


def test_emulator_warp_primitives(emu):
    r = emu.warp_primitives()
    lane = torch.arange(64) % 32
    assert torch.equal(r[:, 0], lane ^ 1)
    down = lane + 4
    assert torch.equal(r[:, 1], torch.where(down // 8 == lane // 8, down, lane))
    assert torch.equal(r[:, 2], torch.full((64,), 30))
    assert bool((r[:, 3] == 1).all()) and bool((r[:, 4] == 3).all())
    assert bool((r[:, 5] == 64).all())


CASES = [  # B, L, Hq, Hkv, D, cuts, spans
    (1, 1, 2, 2, 32, [], []),
    (2, 7, 2, 1, 32, [3], []),
    (1, 40, 4, 2, 64, [9, 30], [(12, 20)]),
    (2, 37, 4, 1, 128, [], [(10, 21), (25, 30)]),  # span across the 16-row tile edge
    (1, 50, 2, 2, 64, [5, 17, 33, 41], [(34, 40)]),
]


@pytest.mark.parametrize("B,L,Hq,Hkv,D,cuts,spans", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_matches_reference(emu, B, L, Hq, Hkv, D, cuts, spans, dtype):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(B, L, h, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    doc, span = ids(B, L, cuts, spans)
    scale = 1 / math.sqrt(D)
    ref, lse_ref = modality_attention_reference(q, k, v, doc, span, scale=scale, return_lse=True)
    out, lse = emu.attention_fwd(q.to(dtype), k.to(dtype), v.to(dtype), doc, span, scale)
    tol = dict(atol=2e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.double(), ref, **tol)
    torch.testing.assert_close(lse.double(), lse_ref.double(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_decode_split_kv_matches_reference(emu, dtype):
    B, S, Hq, Hkv, D = 3, 600, 4, 2, 64
    g = torch.Generator().manual_seed(0)
    kc, vc = (torch.randn(B + 1, S, Hkv, D, generator=g, dtype=torch.float64)[:B] for _ in range(2))  # strided views
    q = torch.randn(B, 2, Hq, D, generator=g, dtype=torch.float64)
    lens = torch.tensor(
        [600, 300, 1], dtype=torch.int32
    )  # 3 chunks, 2 chunks, and a row whose first query sees nothing
    ref = modality_attention_decode_reference(q, kc, vc, lens, scale=0.125)
    out = emu.attention_decode(q.to(dtype), kc.to(dtype), vc.to(dtype), lens, 0.125)
    tol = dict(atol=2e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.double(), ref, **tol)
    assert out[2, 0].abs().max() == 0 and torch.isfinite(out).all()


def test_decode_kernels_clamp_a_length_past_the_cache(emu):
    """The launcher's caller asserts every length in [Lq, S] (a device-side assertion on a GPU); the kernels clamp
    besides: a length past the cache reads the whole cache and nothing beyond it (workspace included)."""
    B, S, Hq, Hkv, D = 2, 300, 4, 2, 32
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, 1, Hq, D, generator=g)
    kc, vc = torch.randn(B, S, Hkv, D, generator=g), torch.randn(B, S, Hkv, D, generator=g)
    out = emu.attention_decode(q, kc, vc, torch.tensor([S + 500, 7], dtype=torch.int32), 0.125)
    ref = modality_attention_decode_reference(q, kc, vc, torch.tensor([S, 7], dtype=torch.int32), scale=0.125)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_emulated_kernel_matches_the_cpu_kernel(emu):
    import chameleon_lite.ops  # noqa: F401

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 45, h, 32, generator=g) for h in (4, 2, 2))
    doc, span = ids(1, 45, [20], [(22, 35)])
    a, la = emu.attention_fwd(q, k, v, doc, span, 0.2)
    b, lb = torch.ops.chameleon_lite.attention_fwd(q, k, v, doc, span, 0.2)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(la, lb, atol=2e-5, rtol=1e-5)


BWD_CASES = [  # B, L, Hq, Hkv, D, cuts, spans
    (1, 1, 2, 1, 32, [], []),
    (2, 23, 2, 2, 32, [9], [(10, 20)]),
    (1, 40, 4, 2, 64, [9, 30], [(12, 20)]),
    (1, 37, 4, 1, 128, [], [(10, 21), (25, 30)]),  # GQA 4, a span across the tile edge
    (1, 50, 2, 2, 64, [5, 17, 33, 41], [(34, 40)]),
]


def gradient_case(B, L, Hq, Hkv, D, cuts, spans, seed):
    """fp64 q, k, v, dout and ids of one case, and the reference gradients (dq, dk, dv) of the fp64 oracle."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, L, h, D, generator=g, dtype=torch.float64).requires_grad_() for h in (Hq, Hkv, Hkv))
    dout = torch.randn(B, L, Hq, D, generator=g, dtype=torch.float64)
    doc, span = ids(B, L, cuts, spans)
    scale = 1 / math.sqrt(D)
    ref = modality_attention_reference(q, k, v, doc, span, scale=scale)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    return (q.detach(), k.detach(), v.detach()), dout, doc, span, scale, want


@pytest.mark.parametrize("B,L,Hq,Hkv,D,cuts,spans", BWD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_reference_gradients(emu, B, L, Hq, Hkv, D, cuts, spans, dtype):
    qkv, dout, doc, span, scale, (dq_ref, dk_ref, dv_ref) = gradient_case(B, L, Hq, Hkv, D, cuts, spans, 100 + L)
    qc, kc, vc = (t.to(dtype) for t in qkv)
    out, lse = emu.attention_fwd(qc, kc, vc, doc, span, scale)
    dq, dk, dv = emu.attention_bwd(dout.to(dtype), qc, kc, vc, out, lse, doc, span, scale)
    tol = dict(atol=5e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-1, rtol=5e-2)
    for got, want in ((dq, dq_ref), (dk, dk_ref), (dv, dv_ref)):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, **tol)


def test_emulated_backward_matches_the_cpu_kernel(emu):
    import chameleon_lite.ops  # noqa: F401

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 33, h, 64, generator=g) for h in (4, 2, 2))
    dout = torch.randn(2, 33, 4, 64, generator=g)
    doc, span = ids(2, 33, [12], [(14, 30)])
    out, lse = torch.ops.chameleon_lite.attention_fwd(q, k, v, doc, span, 0.125)
    want = torch.ops.chameleon_lite.attention_bwd(dout, q, k, v, out, lse, doc, span, 0.125)
    got = emu.attention_bwd(dout, q, k, v, out, lse, doc, span, 0.125)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


MMA_CASES = [  # B, L, Hq, Hkv, D, cuts, spans — lengths around the 64-row / 32-key tiles
    (1, 1, 2, 2, 32, [], []),
    (2, 37, 4, 2, 64, [9, 30], [(12, 20)]),
    (1, 70, 2, 1, 128, [], [(10, 40)]),  # a span across the 32-key and 64-row tile edges
    (1, 100, 4, 4, 48, [5, 17, 33, 66, 90], [(34, 40), (70, 80)]),
    (1, 129, 2, 2, 16, [64], []),
]


@pytest.mark.parametrize("B,L,Hq,Hkv,D,cuts,spans", MMA_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_core_forward_matches_reference(emu, B, L, Hq, Hkv, D, cuts, spans, dtype):
    g = torch.Generator().manual_seed(200 + L)
    q, k, v = (torch.randn(B, L, h, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    doc, span = ids(B, L, cuts, spans)
    scale = 1 / math.sqrt(D)
    ref, lse_ref = modality_attention_reference(q, k, v, doc, span, scale=scale, return_lse=True)
    qb, kb, vb = (t.to(dtype) for t in (q, k, v))
    out, lse = emu.attention_fwd(qb, kb, vb, doc, span, scale, tensor_cores=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(lse.double(), lse_ref.double(), atol=5e-2, rtol=5e-2)
    # and against the scalar kernel on the same bf16 inputs
    out_s, lse_s = emu.attention_fwd(qb, kb, vb, doc, span, scale)
    torch.testing.assert_close(out.double(), out_s.double(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(lse, lse_s, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("B,L,Hq,Hkv,D,cuts,spans", MMA_CASES[1:])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_core_backward_matches_reference_gradients(emu, B, L, Hq, Hkv, D, cuts, spans, dtype):
    qkv, dout, doc, span, scale, want = gradient_case(B, L, Hq, Hkv, D, cuts, spans, 300 + L)
    qb, kb, vb = (t.to(dtype) for t in qkv)
    out, lse = emu.attention_fwd(qb, kb, vb, doc, span, scale, tensor_cores=True)
    got = emu.attention_bwd(dout.to(dtype), qb, kb, vb, out, lse, doc, span, scale, tensor_cores=True)
    scalar = emu.attention_bwd(dout.to(dtype), qb, kb, vb, out, lse, doc, span, scale)
    for a, s_, w in zip(got, scalar, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), w, atol=1e-1, rtol=5e-2)
        torch.testing.assert_close(a.double(), s_.double(), atol=6e-2, rtol=5e-2)
