"""The checks :mod:`chameleon_lite.ops.verify` runs the first time each custom op is used on a device.

Each check calls the op itself (``torch.ops.chameleon_lite.*``, never the Python wrappers, which would ask for the
check again) on small shapes that cover its paths and compares it with the pure-PyTorch reference computed in fp64 on
the CPU from the same (dtype-rounded) inputs. Inputs come from a private generator: a check never moves the
process's random state, so a resumed run draws what it would have drawn.

Errors are relative to the reference's largest magnitude (at least 1): fp32 within 2e-4, bf16 / fp16 within 5e-2
(forward and gradients of attention, whose bf16 kernels accumulate in fp32). Sampling must draw the very same ids as
the reference chain for the same seed and step (counter-based draws: Philox4x32-10, itself checked against the
published Random123 vectors).
"""

from __future__ import annotations

import math

import torch

from chameleon_lite.ops.attention import modality_attention_decode_reference, modality_attention_reference
from chameleon_lite.ops.norm import rms_norm_reference, rope_reference
from chameleon_lite.ops.sampling import op_inputs, sample_reference
from chameleon_lite.ops.snake import snake_reference
from chameleon_lite.ops.verify import Mismatch

OPS = torch.ops.chameleon_lite


def variant(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The build that runs ``op`` on ``device`` for ``dtype``: the CPU loop's ISA, or the GPU's architecture."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda sm_{major}{minor}"
    try:
        return str(OPS.kernel_variant(op, dtype))
    except (RuntimeError, AttributeError):  # an extension built before the query existed
        return "unknown"


def _tol(dtype: torch.dtype) -> float:
    return 2e-4 if dtype in (torch.float32, torch.float64) else 5e-2


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, tol: float, fake: str) -> None:
    got = got.detach().to("cpu", torch.float64)
    want = want.detach().to("cpu", torch.float64)
    if fake == "mismatch":
        got = got + 1.0
    if got.shape != want.shape:
        raise Mismatch(f"{what}: shape {tuple(got.shape)}, the reference's {tuple(want.shape)}")
    both = torch.isfinite(want)
    if not torch.equal(torch.isfinite(got), both):
        raise Mismatch(f"{what}: non-finite values where the reference has finite ones (or the reverse)")
    err = float((got[both] - want[both]).abs().max()) if bool(both.any()) else 0.0
    scale = max(1.0, float(want[both].abs().max())) if bool(both.any()) else 1.0
    if not err / scale <= tol:
        raise Mismatch(f"{what}: off by {err / scale:.3g} of the reference's scale (tolerance {tol:g})")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(g: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """(kernel input on device in dtype, fp64 CPU copy of the same rounded values)."""
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x.to(device), x.to(torch.float64)


def _ids(B: int, L: int, cuts: tuple[tuple[int, ...], ...], spans: tuple[tuple[tuple[int, int], ...], ...]):
    doc = torch.zeros(B, L, dtype=torch.int32)
    span = torch.zeros(B, L, dtype=torch.int32)
    for b in range(B):
        for c in cuts[b]:
            doc[b, c:] += 1
        for sid, (lo, hi) in enumerate(spans[b], start=1):
            span[b, lo:hi] = sid
    return doc, span


# (B, L, Hq, Hkv, D, document cuts per row, bidirectional spans per row): packed documents of ragged lengths with a
# span in one row only, a batch of one with one token, one document across a 64-key tile edge with GQA 2:1
ATTENTION_CASES = [
    (2, 67, 4, 2, 32, ((20,), (20, 50)), (((25, 40),), ((52, 60),))),
    (1, 1, 2, 2, 16, ((),), ((),)),
    (1, 130, 2, 1, 64, ((),), (((64, 100),),)),
]
CUDA_ATTENTION_CASES = [(1, 80, 4, 2, 128, ((30,),), (((40, 70),),))]  # the CUDA kernels' widest head


def check_attention(device: torch.device, dtype: torch.dtype, fake: str) -> None:
    cases = ATTENTION_CASES + (CUDA_ATTENTION_CASES if device.type == "cuda" else [])
    for n, (B, L, Hq, Hkv, D, cuts, spans) in enumerate(cases):
        g = _gen(100 + n)
        (q, qr), (k, kr), (v, vr), (dout, doutr) = (_inputs(g, (B, L, h, D), dtype, device) for h in (Hq, Hkv, Hkv, Hq))
        doc, span = _ids(B, L, cuts, spans)
        scale = 1.0 / math.sqrt(D)
        out, lse = OPS.attention_fwd(q, k, v, doc.to(device), span.to(device), scale)
        dq, dk, dv = OPS.attention_bwd(dout, q, k, v, out, lse, doc.to(device), span.to(device), scale)
        qr, kr, vr = (t.requires_grad_() for t in (qr, kr, vr))
        ref, ref_lse = modality_attention_reference(qr, kr, vr, doc, span, scale=scale, return_lse=True)
        grads = torch.autograd.grad(ref, (qr, kr, vr), doutr)
        where = f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}"
        tol = _tol(dtype)
        _compare(f"forward output ({where})", out, ref, tol, fake)
        _compare(f"log-sum-exp ({where})", lse, ref_lse, tol, "")
        for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), grads):
            _compare(f"{name} ({where})", got, want, tol, "")


# (B, cache slots, Hq, Hkv, D, new positions, valid lengths per row): one new token at lengths 1 to full, and a
# block of three new positions (causal among themselves)
DECODE_CASES = [(3, 80, 4, 2, 32, 1, (1, 17, 80)), (3, 80, 4, 2, 32, 3, (3, 41, 80))]
CUDA_DECODE_CASES = [(2, 70, 8, 2, 128, 1, (5, 70))]


def check_attention_decode(device: torch.device, dtype: torch.dtype, fake: str) -> None:
    cases = DECODE_CASES + (CUDA_DECODE_CASES if device.type == "cuda" else [])
    for n, (B, S, Hq, Hkv, D, Lq, lens) in enumerate(cases):
        g = _gen(200 + n)
        (q, qr), (kc, kcr), (vc, vcr) = (
            _inputs(g, shape, dtype, device) for shape in ((B, Lq, Hq, D), (B, S, Hkv, D), (B, S, Hkv, D))
        )
        cache_lens = torch.tensor(lens, dtype=torch.int32)
        scale = 1.0 / math.sqrt(D)
        out = OPS.attention_decode(q, kc, vc, cache_lens.to(device), scale)
        ref = modality_attention_decode_reference(qr, kcr, vcr, cache_lens, scale)
        _compare(f"decode output (B={B} Lq={Lq} lengths {list(lens)} D={D})", out, ref, _tol(dtype), fake)


PHILOX_KAT = [  # Random123's published vectors for philox4x32-10: counter, key -> output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _sampling_cases(g: torch.Generator, dtype: torch.dtype) -> list[dict]:
    B, V = 5, 300

    def logits(b: int) -> torch.Tensor:
        return (3 * torch.randn(b, V, generator=g)).to(dtype)

    ranges = torch.zeros(B, 2, 2, dtype=torch.int64)
    ranges[:, 0] = torch.tensor([0, V])
    ranges[2] = torch.tensor([[0, 100], [200, V]])
    ranges[4] = torch.tensor([[10, 20], [0, 0]])
    penalty = torch.randint(0, V, (B, 6), generator=g)
    penalty[1, 3:] = -1
    return [
        dict(  # per-row settings: greedy, top-k, top-p, min-p, allowed ranges
            logits=logits(B),
            temperature=torch.tensor([0.0, 0.7, 1.0, 1.3, 0.9]),
            top_k=torch.tensor([0, 10, 0, 50, 3]),
            top_p=torch.tensor([1.0, 0.9, 0.8, 1.0, 1.0]),
            min_p=torch.tensor([0.0, 0.0, 0.05, 0.0, 0.0]),
            allowed_ranges=ranges,
        ),
        dict(  # classifier-free guidance with a repetition penalty
            logits=logits(B),
            uncond_logits=logits(B),
            cfg_scale=2.0,
            penalty_ids=penalty,
            repetition_penalty=1.3,
            temperature=0.8,
            top_k=40,
        ),
        dict(logits=logits(1), temperature=1.0, top_p=0.95),  # a batch of one
    ]


def check_sample(device: torch.device, dtype: torch.dtype, fake: str) -> None:
    ctr = torch.tensor([c for c, _, _ in PHILOX_KAT], dtype=torch.int64)
    key = torch.tensor([k for _, k, _ in PHILOX_KAT], dtype=torch.int64)
    if OPS.philox4x32(ctr, key).tolist() != [list(e) for _, _, e in PHILOX_KAT]:
        raise Mismatch("Philox4x32-10 disagrees with the published Random123 vectors")
    g = _gen(300)
    for n, case in enumerate(_sampling_cases(g, dtype)):
        for seed, step in ((1234, 0), (1234, 5), (2**40 + 7, 3)):
            kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
            args = op_inputs(seed=seed, step=step, **kwargs)
            ids, logprobs = OPS.sample(*args)
            want_ids, want_lp = sample_reference(seed=seed, step=step, return_logprobs=True, **case)
            if fake == "mismatch":
                ids = (ids + 1) % case["logits"].shape[1]
            ids = ids.cpu()
            if not torch.equal(ids, want_ids):
                rows = (ids != want_ids).nonzero().flatten().tolist()
                raise Mismatch(
                    f"sampling case {n}, seed {seed}, step {step}: other ids than the reference in rows {rows}"
                )
            _compare(f"sampling case {n} log-probabilities", logprobs, want_lp, 1e-4, "")


def check_snake(device: torch.device, dtype: torch.dtype, fake: str) -> None:
    g = _gen(400)
    for shape in ((2, 5, 37), (1, 3, 1)):
        (x, xr), (grad, gradr) = (_inputs(g, shape, torch.float32, device) for _ in range(2))
        la, lar = _inputs(g, (1, shape[1], 1), torch.float32, device)
        y = OPS.snake(x, la)
        gx, ga = OPS.snake_bwd(grad, x, la)
        xr, lar = xr.requires_grad_(), lar.requires_grad_()
        ref = snake_reference(xr, lar)
        rgx, rga = torch.autograd.grad(ref, (xr, lar), gradr)
        _compare(f"snake {list(shape)}", y, ref, 2e-4, fake)
        _compare(f"snake dx {list(shape)}", gx, rgx, 2e-4, "")
        _compare(f"snake dlog_alpha {list(shape)}", ga.reshape(rga.shape), rga, 2e-4, "")


def check_linear_bf16w(device: torch.device, dtype: torch.dtype, fake: str) -> None:
    g = _gen(500)
    w, wr = _inputs(g, (40, 72), torch.bfloat16, device)
    for rows in ((3, 72), (1, 1, 72), (32, 72)):
        x, xr = _inputs(g, rows, torch.float32, device)
        _compare(f"linear_bf16w {list(rows)}", OPS.linear_bf16w(x, w), xr @ wr.T, 2e-4, fake)


def check_rms_norm(device: torch.device, dtype: torch.dtype, fake: str) -> None:
    g = _gen(600)
    if dtype == torch.float32:  # the inference op takes float32 only
        for shape in ((3, 7, 48), (1, 5)):
            (x, xr), (w, wr) = _inputs(g, shape, torch.float32, device), _inputs(g, shape[-1:], torch.float32, device)
            _compare(f"rms_norm {list(shape)}", OPS.rms_norm(x, w, 1e-5), rms_norm_reference(xr, wr, 1e-5), 2e-4, fake)
    # the training ops against autograd of the reference in fp64
    (x, xr), (w, wr) = _inputs(g, (3, 7, 48), dtype, device), _inputs(g, (48,), torch.float32, device)
    (gy, gyr) = _inputs(g, (3, 7, 48), dtype, device)
    xr.requires_grad_(), wr.requires_grad_()
    yr = rms_norm_reference(xr, wr, 1e-5)
    dxr, dwr = torch.autograd.grad(yr, (xr, wr), gyr)
    y, rstd = OPS.rms_norm_fwd(x, w, 1e-5)
    dx, dw = OPS.rms_norm_bwd(gy, x, w, rstd)
    _compare("rms_norm_fwd [3, 7, 48]", y, yr, _tol(dtype), fake)
    _compare("rms_norm_bwd dx", dx, dxr, _tol(dtype), fake)
    _compare("rms_norm_bwd dweight", dw, dwr, _tol(dtype), fake)


def check_rope(device: torch.device, dtype: torch.dtype, fake: str) -> None:
    g = _gen(700)
    x, xr = _inputs(g, (2, 5, 3, 16), dtype, device)
    angles = torch.rand(2, 5, 8, generator=g, dtype=torch.float64) * 6.3
    cos, sin = angles.cos().float(), angles.sin().float()
    want = rope_reference(xr, cos.double(), sin.double())
    _compare("rope [2, 5, 3, 16]", OPS.rope(x, cos.to(device), sin.to(device)), want, _tol(dtype), fake)
    # the training path's backward: the transpose of the rotation is the rotation with -sin
    _compare(
        "rope, -sin",
        OPS.rope(x, cos.to(device), -sin.to(device)),
        rope_reference(xr, cos.double(), -sin.double()),
        _tol(dtype),
        fake,
    )


CHECKS = {
    "attention": check_attention,
    "attention_decode": check_attention_decode,
    "sample": check_sample,
    "snake": check_snake,
    "linear_bf16w": check_linear_bf16w,
    "rms_norm": check_rms_norm,
    "rope": check_rope,
}


def run(op: str, device: torch.device, dtype: torch.dtype, fake: str = "") -> None:
    """Check ``op`` on ``device`` for ``dtype``; raises :class:`Mismatch` (or the op's own error) when it fails."""
    if fake == "error":
        raise RuntimeError(f"injected failure ({op} named in CHAMELEON_LITE_KERNELS_FAKE_MISMATCH)")
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        CHECKS[op](device, dtype, fake)
