"""The fused attention kernels (csrc/cpu/attention.cpp) against the fp64 pure-PyTorch reference.

Tolerances (ARCHITECTURE §10): fp32 by FlashAttention's rule, max|out - ref| <= 2 * max|out_sdpa32 - ref| + 1e-5,
with the materialised-mask SDPA in fp32 as the same-dtype PyTorch result; bf16 atol = rtol = 5e-2.
"""

import itertools
import math

import pytest
import torch
from isa_builds import run_in_builds

import chameleon_lite.ops  # noqa: F401  (registers the ops)
from chameleon_lite import hardware
from chameleon_lite.ops.attention import (
    modality_attention,
    modality_attention_decode,
    modality_attention_decode_reference,
    modality_attention_reference,
    modality_attention_sdpa,
)

PATTERNS = ("none", "one", "several", "tile_edge")


def make_ids(B: int, L: int, n_docs: int, pattern: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    doc = torch.zeros(B, L, dtype=torch.int32)
    span = torch.zeros(B, L, dtype=torch.int32)
    for b in range(B):
        cuts = sorted(torch.randperm(max(L - 1, 1), generator=g)[: n_docs - 1].add(1).tolist()) if L > 1 else []
        for d, c in enumerate(cuts):
            doc[b, c:] = d + 1
        if pattern == "one" and L >= 4:
            s = int(torch.randint(0, L - 3, (1,), generator=g))
            span[b, s : s + min(L - s, 3 + int(torch.randint(0, 40, (1,), generator=g)))] = 1
        elif pattern == "several" and L >= 8:
            for sid in range(1, 4):
                s = int(torch.randint(0, L - 3, (1,), generator=g))
                span[b, s : s + 2 + int(torch.randint(0, 20, (1,), generator=g))] = sid
        elif pattern == "tile_edge" and L >= 8:
            lo = min(50, L // 2)
            span[b, lo : min(L, 80)] = 7  # crosses the 64-row tile boundary when L > 64
    return doc, span


def qkv(B, L, Hq, Hkv, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, h, D, generator=g, dtype=torch.float64).to(dtype) for h in (Hq, Hkv, Hkv)]


def assert_close_fa(out: torch.Tensor, ref: torch.Tensor, same_dtype: torch.Tensor, what: str = "out"):
    err = (out.double() - ref).abs().max().item()
    base = (same_dtype.double() - ref).abs().max().item()
    assert err <= 2 * base + 1e-5, f"{what}: max error {err:.3g} > 2 x {base:.3g} + 1e-5"


def assert_close_bf16(out: torch.Tensor, ref: torch.Tensor, what: str = "out"):
    torch.testing.assert_close(out.double(), ref, atol=5e-2, rtol=5e-2, msg=lambda m: f"{what}: {m}")


CASES = []
for i, (L, pattern, dtype) in enumerate(itertools.product((1, 7, 64, 129), PATTERNS, (torch.float32, torch.bfloat16))):
    G, D = ((1, 32), (2, 64), (4, 128))[i % 3]
    CASES.append((L, pattern, dtype, G, D, 1 + i % 5))
CASES += [
    (1000, "one", torch.float32, 2, 64, 3),
    (1000, "several", torch.bfloat16, 4, 32, 5),
    (1000, "tile_edge", torch.float32, 1, 128, 1),
]


@pytest.mark.parametrize("L,pattern,dtype,G,D,n_docs", CASES)
def test_forward_and_gradients_match_reference(L, pattern, dtype, G, D, n_docs):
    B, Hkv = (1, 1) if L == 1000 else (2, 2)
    Hq = G * Hkv
    doc, span = make_ids(B, L, min(n_docs, L), pattern, seed=L + D)
    q64, k64, v64 = (t.requires_grad_() for t in qkv(B, L, Hq, Hkv, D, torch.float64, seed=L))
    ref = modality_attention_reference(q64, k64, v64, doc, span)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g)
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q64, k64, v64))
    out = modality_attention(q, k, v, doc, span)
    assert out.dtype == dtype and out.shape == ref.shape
    grads = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    if dtype == torch.float32:
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
        sdpa = modality_attention_sdpa(q32, k32, v32, doc, span)
        sdpa_grads = torch.autograd.grad(sdpa, (q32, k32, v32), g.float())
        assert_close_fa(out, ref.detach(), sdpa)
        for name, a, r, s in zip("qkv", grads, ref_grads, sdpa_grads):
            assert_close_fa(a, r, s, f"d{name}")
    else:
        assert_close_bf16(out, ref.detach())
        for name, a, r in zip("qkv", grads, ref_grads):
            assert_close_bf16(a, r, f"d{name}")


BF16_CASES = [  # (B, L, Hq, Hkv, D, n_docs, pattern): ragged lengths, GQA, batch of one, an odd head dim
    (2, 129, 4, 2, 64, 3, "several"),
    (1, 1000, 4, 1, 128, 4, "one"),
    (1, 77, 2, 2, 33, 2, "tile_edge"),
    (1, 300, 8, 2, 64, 1, "none"),
    (1, 1, 1, 1, 64, 1, "none"),
]


def bf16_errors(B, L, Hq, Hkv, D, n_docs, pattern) -> dict:
    """Max errors of the kernel and of PyTorch's bf16 SDPA (materialised mask) against the fp64 reference run on the
    same bf16-rounded inputs, for the output and each gradient: {name: (kernel, sdpa)}."""
    doc, span = make_ids(B, L, n_docs, pattern, seed=L)
    q, k, v = (t.bfloat16() for t in qkv(B, L, Hq, Hkv, D, torch.float64, seed=L))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = modality_attention_reference(q64, k64, v64, doc, span)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g)
    errs = {}
    for fn in (modality_attention, modality_attention_sdpa):  # kernel first, then SDPA
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qq, kk, vv, doc, span)
        assert out.dtype == torch.bfloat16
        grads = torch.autograd.grad(out, (qq, kk, vv), g.bfloat16())
        for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref.detach(), *ref_grads)):
            errs.setdefault(name, []).append((a.double() - r).abs().max().item())
    return {name: tuple(e) for name, e in errs.items()}


@pytest.mark.parametrize("case", BF16_CASES)
def test_bf16_matches_reference_like_pytorch_bf16(case):
    """bf16 by FlashAttention's rule against PyTorch's own bf16 result: on CPUs with AVX-512-BF16 the products run in
    bf16 (P and dS rounded to bf16, fp32 accumulation), elsewhere widened to fp32; either way within 2x of SDPA's
    error, plus one bf16 rounding of the largest value for the tiny cases where SDPA happens to be exact."""
    for name, (err, base) in bf16_errors(*case).items():
        assert err <= 2 * base + 2e-3, f"{name}: max error {err:.3g} > 2 x {base:.3g} + 2e-3"


def test_native_bf16_products_and_widened_products_agree(tmp_path):
    """The build whose bf16 products use AVX-512-BF16 and the one that widens bf16 to fp32 (forced with
    CHAMELEON_LITE_ATTENTION_ISA=avx2) give the same attention and gradients to bf16 accuracy, and each reports
    which it is (on a CPU without AVX-512-BF16 both are the widened build)."""
    code = (
        "import sys, torch, chameleon_lite.ops\n"
        "from chameleon_lite.ops.attention import modality_attention\n"
        "g = torch.Generator().manual_seed(0)\n"
        "q, k, v = (torch.randn(1, 203, h, 64, generator=g).bfloat16().requires_grad_() for h in (4, 2, 2))\n"
        "doc = torch.zeros(1, 203, dtype=torch.int32); doc[:, 90:] = 1\n"
        "span = torch.zeros(1, 203, dtype=torch.int32); span[:, 100:140] = 1\n"
        "out = modality_attention(q, k, v, doc, span)\n"
        "grads = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=g).bfloat16())\n"
        "variant = torch.ops.chameleon_lite.kernel_variant('attention', torch.bfloat16)\n"
        "torch.save({'t': [out.float(), *(x.float() for x in grads)], 'variant': variant}, sys.argv[2])\n"
    )
    runs = run_in_builds(code, "CHAMELEON_LITE_ATTENTION_ISA", tmp_path, builds=("auto", "avx2"), threads=(2,))
    auto, widened = runs["auto", 2], runs["avx2", 2]
    assert widened["variant"] in ("avx2", "portable")
    native = "avx512_bf16" in hardware.cpu_flags()
    assert auto["variant"].endswith("+avx512bf16") == native, (auto["variant"], native)
    for name, a, b in zip(("out", "dq", "dk", "dv"), auto["t"], widened["t"]):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 2e-2 * scale, name


def test_log_sum_exp_and_scale():
    B, L, H, D = 2, 70, 2, 32
    doc, span = make_ids(B, L, 3, "one", seed=3)
    q, k, v = qkv(B, L, H, H, D, torch.float64)
    for scale in (0.05, 1.0 / math.sqrt(D), 0.5):
        ref, lse_ref = modality_attention_reference(q, k, v, doc, span, scale=scale, return_lse=True)
        out, lse = torch.ops.chameleon_lite.attention_fwd(q.float(), k.float(), v.float(), doc, span, scale)
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), lse_ref.double(), atol=2e-5, rtol=1e-5)


def test_every_row_sees_itself_so_no_forward_row_is_empty():
    # The predicate always allows (i, i): the forward never has a fully masked row. Separate documents of length 1
    # are the extreme case: each row attends only to itself, so out = v (per GQA group) and lse = q.k * scale.
    L, D = 9, 32
    doc = torch.arange(L, dtype=torch.int32)[None]
    span = torch.zeros(1, L, dtype=torch.int32)
    q, k, v = qkv(1, L, 2, 1, D, torch.float32)
    out, lse = torch.ops.chameleon_lite.attention_fwd(q, k, v, doc, span, 0.3)
    torch.testing.assert_close(out, v.expand(1, L, 2, D), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse[0], (q[0] * k[0]).sum(-1).t() * 0.3, atol=1e-5, rtol=1e-5)


def test_decode_matches_the_last_rows_of_a_full_forward_and_reads_strided_caches():
    B, S, Hq, Hkv, D = 3, 600, 4, 2, 64
    lens = torch.tensor([600, 257, 2], dtype=torch.int32)
    q, k, v = qkv(B, S, Hq, Hkv, D, torch.float32, seed=5)
    doc = torch.zeros(B, S, dtype=torch.int32)
    span = torch.zeros(B, S, dtype=torch.int32)
    full = modality_attention(q, k, v, doc, span)
    for Lq in (1, 2):
        qd = torch.stack([q[b, int(lens[b]) - Lq : int(lens[b])] for b in range(B)])
        want = torch.stack([full[b, int(lens[b]) - Lq : int(lens[b])] for b in range(B)])
        got = modality_attention_decode(qd, k, v, lens)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(got, modality_attention_decode_reference(qd, k, v, lens), atol=2e-5, rtol=1e-5)
    # the cache may be a strided view (e.g. the first rows of a preallocated cache); the shortest lengths allowed
    big_k, big_v = torch.randn(5, 700, Hkv, D), torch.randn(5, 700, Hkv, D)
    lens2 = torch.tensor([2, 3, 700], dtype=torch.int32)
    qd = torch.randn(3, 2, Hq, D)
    got = modality_attention_decode(qd, big_k[:3], big_v[:3], lens2)
    torch.testing.assert_close(
        got, modality_attention_decode_reference(qd, big_k[:3], big_v[:3], lens2), atol=2e-5, rtol=1e-5
    )
    assert torch.isfinite(got).all()
    gb = modality_attention_decode(qd.bfloat16(), big_k[:3].bfloat16(), big_v[:3].bfloat16(), lens2)
    assert_close_bf16(
        gb, modality_attention_decode_reference(qd.double(), big_k[:3].double(), big_v[:3].double(), lens2)
    )


@pytest.mark.parametrize("D", [8, 36, 40, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_head_dims_off_the_vector_width(D, dtype):
    """The decode loops run 8-wide over the head dimension and 4 keys at a time: head dims that are not multiples
    of 32 (or 8) and cache lengths that are not multiples of 4 take the scalar tails."""
    B, S, Hq, Hkv = 3, 301, 4, 2
    lens = torch.tensor([301, 2, 257], dtype=torch.int32)
    q, k, v = qkv(B, S, Hq, Hkv, D, torch.float32, seed=11)
    qd = q[:, -2:].to(dtype)
    got = modality_attention_decode(qd, k.to(dtype), v.to(dtype), lens)
    want = modality_attention_decode_reference(qd.double(), k.to(dtype).double(), v.to(dtype).double(), lens)
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    else:
        assert_close_bf16(got, want)


def test_same_result_at_one_and_two_threads():
    B, L, Hq, Hkv, D = 2, 300, 4, 2, 64
    doc, span = make_ids(B, L, 3, "several", seed=9)
    q, k, v = (t.requires_grad_() for t in qkv(B, L, Hq, Hkv, D, torch.float32, seed=9))
    kc, vc = k.detach(), v.detach()
    lens = torch.tensor([300, 100], dtype=torch.int32)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = modality_attention(q, k, v, doc, span)
            grads = torch.autograd.grad(out.square().sum(), (q, k, v))
            dec = modality_attention_decode(q.detach()[:, -1:], kc, vc, lens)
            results.append((out.detach(), *grads, dec))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_bad_input_and_fallbacks():
    q, k, v = qkv(1, 8, 3, 2, 16, torch.float32)
    doc = torch.zeros(1, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple"):
        torch.ops.chameleon_lite.attention_fwd(q, k, v, doc, doc, 0.25)
    q, k, v = qkv(1, 8, 2, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="int32"):
        torch.ops.chameleon_lite.attention_fwd(q, k, v, doc.long(), doc.long(), 0.25)
    with pytest.raises(ValueError, match="doc_ids"):
        modality_attention(q, k, v, doc[:, :5], doc[:, :5])
    with pytest.raises(ValueError, match="cache_lens"):
        torch.ops.chameleon_lite.attention_decode(q[:, :1], k, v, torch.tensor([9], dtype=torch.int32), 0.25)
    # fp64 takes the reference path and still matches
    q64, k64, v64 = qkv(1, 8, 2, 2, 16, torch.float64)
    torch.testing.assert_close(
        modality_attention(q64, k64, v64, doc, doc), modality_attention_reference(q64, k64, v64, doc, doc)
    )


def test_opcheck():
    B, L, Hq, Hkv, D = 1, 70, 2, 1, 32
    doc, span = make_ids(B, L, 2, "one", seed=4)
    q, k, v = (t.requires_grad_() for t in qkv(B, L, Hq, Hkv, D, torch.float32))
    torch.library.opcheck(
        torch.ops.chameleon_lite.attention_fwd.default,
        (q, k, v, doc, span, 0.2),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    out, lse = torch.ops.chameleon_lite.attention_fwd(q.detach(), k.detach(), v.detach(), doc, span, 0.2)
    torch.library.opcheck(
        torch.ops.chameleon_lite.attention_bwd.default,
        (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, doc, span, 0.2),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.chameleon_lite.attention_decode.default,
        (q.detach()[:, :1], k.detach(), v.detach(), torch.tensor([40], dtype=torch.int32), 0.2),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_portable_and_vectorised_row_loops_agree(tmp_path):
    """The row loops are built portably and with AVX2 (chosen at run time); both must give the same attention."""
    import subprocess
    import sys

    code = (
        "import torch, chameleon_lite.ops\n"
        "from chameleon_lite.ops.attention import modality_attention, modality_attention_decode\n"
        "g = torch.Generator().manual_seed(0)\n"
        "q, k, v = (torch.randn(1, 200, 2, 64, generator=g) for _ in range(3))\n"
        "doc = torch.zeros(1, 200, dtype=torch.int32); doc[:, 90:] = 1\n"
        "span = torch.zeros(1, 200, dtype=torch.int32); span[:, 100:140] = 1\n"
        "lens = torch.tensor([199], dtype=torch.int32)\n"
        "out = (modality_attention(q, k, v, doc, span), modality_attention_decode(q[:, 197:199], k, v, lens),\n"
        "       modality_attention_decode(q[:, 197:199].bfloat16(), k.bfloat16(), v.bfloat16(), lens).float())\n"
        f"torch.save(out, {str(tmp_path / '{}.pt')!r}.format(__import__('os').environ.get('CHAMELEON_LITE_ATTENTION_ISA', 'auto')))\n"
    )
    import os

    for isa in ("portable", "auto"):
        env = {**os.environ, "CHAMELEON_LITE_ATTENTION_ISA": isa}
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
    a = torch.load(tmp_path / "portable.pt", weights_only=True)
    b = torch.load(tmp_path / "auto.pt", weights_only=True)
    torch.testing.assert_close(a[:2], b[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[2], b[2], atol=1e-2, rtol=1e-2)  # bf16 outputs: one rounding apart at most


def test_decode_refuses_every_cache_length_outside_new_queries_to_cache_size():
    """A length below the new queries' count leaves a query with no key (it used to give a silent zero row); one
    above the cache would read past it. The CPU kernel and the wrapper refuse both, naming the row."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, 4, 16, generator=g)
    kc, vc = torch.randn(2, 20, 2, 16, generator=g), torch.randn(2, 20, 2, 16, generator=g)
    for lens, row in (([20, 2], 1), ([21, 5], 0), ([-1, 5], 0)):
        t = torch.tensor(lens, dtype=torch.int32)
        with pytest.raises(ValueError, match=rf"cache_lens\[{row}\] = {lens[row]} "):
            modality_attention_decode(q, kc, vc, t)
        with pytest.raises(ValueError, match=rf"cache_lens\[{row}\] = {lens[row]} outside \[3, 20\]"):
            torch.ops.chameleon_lite.attention_decode(q, kc, vc, t, 0.25)
    ok = modality_attention_decode(q, kc, vc, torch.tensor([3, 20], dtype=torch.int32))
    assert torch.isfinite(ok).all() and ok[0].abs().sum() > 0
