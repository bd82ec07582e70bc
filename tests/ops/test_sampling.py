"""Fused constrained sampling: the C++ op against the sort-based reference, the target distribution, the
support of every filter, determinism across threads, and every bad-input path."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chameleon_lite.errors import UserError
from chameleon_lite.ops import sample
from chameleon_lite.ops.sampling import SamplingError, sample_reference, sampling_uniforms

KAT = [  # Random123 tests/kat_vectors, "philox4x32 10": counter, key -> output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _philox_py(ctr, key):
    """Independent Philox4x32-10 from the published round function."""
    m = 0xFFFFFFFF
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & m, p1 & m, ((p0 >> 32) ^ c3 ^ k1) & m, p0 & m
    return c0, c1, c2, c3


def _uniform_py(seed, step, row):
    m = 0xFFFFFFFF
    x = _philox_py((step & m, step >> 32, row & m, row >> 32), (seed & m, seed >> 32))
    return (((x[0] >> 5) << 26) | (x[1] >> 6)) / 2.0**53


def _chi2_pvalue(observed: torch.Tensor, probs: torch.Tensor) -> float:
    n = observed.sum().double()
    support = probs > 0
    assert observed[~support].sum() == 0, "drew an id of probability 0"
    exp = probs[support].double() * n
    stat = ((observed[support].double() - exp) ** 2 / exp).sum()
    df = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def _draw_counts(logits_row: torch.Tensor, rows: int, steps: int, **kw) -> torch.Tensor:
    """Histogram of ids over rows x steps independent draws of one distribution."""
    v = logits_row.shape[-1]
    batch = logits_row.expand(rows, v).contiguous()
    extra = {}
    for name in ("uncond_logits", "allowed_ranges", "penalty_ids"):
        if name in kw:
            t = kw.pop(name)
            extra[name] = t.expand(rows, *t.shape[1:]).contiguous()
    counts = torch.zeros(v, dtype=torch.int64)
    for step in range(steps):
        ids = sample(batch, seed=11, step=step, **kw, **extra)
        counts += torch.bincount(ids, minlength=v)
    return counts


def _target(z: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """The renormalised target distribution in fp64, written from the definitions with an explicit sort."""
    p = torch.softmax(z.double() / temperature, -1)
    order = torch.argsort(p, descending=True)
    keep = torch.ones_like(p, dtype=torch.bool)
    if 0 < top_k < int((p > 0).sum()):
        keep &= p >= p[order[top_k - 1]]
    if top_p < 1.0:
        q = torch.where(keep, p, 0.0)
        q = q / q.sum()
        cum = torch.cumsum(q[order], 0)
        last = int((cum < top_p - 1e-12).sum())
        keep &= p >= p[order[last]]
    keep &= p >= min_p * p.max()
    out = torch.where(keep, p, 0.0)
    return out / out.sum()


# ---------------------------------------------------------------- RNG


def test_philox_known_answers():
    ctr = torch.tensor([c for c, _, _ in KAT])
    key = torch.tensor([k for _, k, _ in KAT])
    out = torch.ops.chameleon_lite.philox4x32(ctr, key)
    assert out.tolist() == [list(e) for _, _, e in KAT]
    assert [_philox_py(c, k) for c, k, _ in KAT] == [e for _, _, e in KAT]


@pytest.mark.parametrize("seed,step", [(0, 0), (7, 3), (2**40 + 5, 2**33 + 1), (2**63 - 1, 2**63 - 1)])
def test_uniforms_match_python_philox_and_depend_only_on_row(seed, step):
    u = sampling_uniforms(seed, step, 6)
    assert u.dtype == torch.float64 and bool(((u >= 0) & (u < 1)).all())
    assert u.tolist() == [_uniform_py(seed, step, r) for r in range(6)]
    assert torch.equal(sampling_uniforms(seed, step, 3), u[:3])


def test_draws_vary_with_step_and_seed():
    x = torch.zeros(1, 64)
    by_step = {int(sample(x, seed=1, step=s)) for s in range(40)}
    by_seed = {int(sample(x, seed=s, step=0)) for s in range(40)}
    assert len(by_step) > 20 and len(by_seed) > 20


# ---------------------------------------------------------------- kernel == reference

SETTINGS = [
    {},
    {"temperature": 0.7},
    {"top_k": 1},
    {"top_k": 40},
    {"top_p": 0.9},
    {"top_p": 0.3, "temperature": 1.3},
    {"min_p": 0.05},
    {"top_k": 50, "top_p": 0.8, "min_p": 0.02},
    {"top_k": 3000, "top_p": 0.999},
    {"temperature": 0.0},
]


@pytest.mark.parametrize("vocab", [17, 1000, 4099, 65536])
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_matches_reference(vocab, kw):
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(6 if vocab < 10_000 else 3, vocab, generator=g) * 2.5
    for step in range(3 if vocab < 10_000 else 2):
        ids, lp = sample(x, seed=5, step=step, return_logprobs=True, **kw)
        rids, rlp = sample_reference(x, seed=5, step=step, return_logprobs=True, **kw)
        assert torch.equal(ids, rids)
        torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=5e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_logits_match_reference(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(5, 3001, generator=g) * 3).to(dtype)
    u = (torch.randn(5, 3001, generator=g) * 3).to(dtype)
    for kw in ({"top_k": 30, "top_p": 0.9}, {"temperature": 0.0}, {"uncond_logits": u, "cfg_scale": 2.0}):
        for step in range(3):
            ids, lp = sample(x, seed=2, step=step, return_logprobs=True, **kw)
            rids, rlp = sample_reference(x, seed=2, step=step, return_logprobs=True, **kw)
            assert torch.equal(ids, rids)
            torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=5e-6)


def test_per_row_settings_match_reference():
    g = torch.Generator().manual_seed(2)
    b, v = 5, 777
    x = torch.randn(b, v, generator=g) * 2
    kw = dict(
        temperature=torch.tensor([0.0, 0.5, 1.0, 1.5, 1.0]),
        top_k=torch.tensor([0, 10, 0, 200, 1]),
        top_p=torch.tensor([1.0, 0.9, 0.5, 1.0, 1.0]),
        min_p=torch.tensor([0.0, 0.0, 0.1, 0.01, 0.0]),
        repetition_penalty=torch.tensor([1.0, 1.3, 0.8, 1.0, 2.0]),
        penalty_ids=torch.randint(-1, v, (b, 9), generator=g),
    )
    for step in range(4):
        assert torch.equal(sample(x, seed=9, step=step, **kw), sample_reference(x, seed=9, step=step, **kw))


def test_large_flat_vocab_exercises_multi_pass_search():
    # Nearly flat logits over 152064 ids put tens of thousands of ids inside every early bracket, so the
    # search needs several passes before it can gather; top_k above the gather capacity does the same.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 152064, generator=g) * 0.3
    for kw in ({"top_p": 0.5}, {"top_k": 5000}, {"top_k": 60000, "top_p": 0.95}):
        ids, lp = sample(x, seed=1, step=0, return_logprobs=True, **kw)
        rids, rlp = sample_reference(x, seed=1, step=0, return_logprobs=True, **kw)
        assert torch.equal(ids, rids)
        torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=5e-6)


@pytest.mark.parametrize("scale", [0.3, 3.0, 12.0])
def test_candidate_and_search_paths_match_reference(scale):
    # The scale moves the cuts relative to the candidate set the exp pass collects: flat rows overflow it
    # (search passes), peaked rows leave a handful of candidates, and in between top-p 0.99 cuts below it.
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 65536, generator=g) * scale
    for kw in (
        {"top_k": 50},
        {"top_k": 2000},
        {"top_p": 0.9},
        {"top_p": 0.99},
        {"min_p": 0.01},
        {"top_k": 200, "top_p": 0.95, "min_p": 0.001},
    ):
        ids, lp = sample(x, seed=8, step=3, return_logprobs=True, **kw)
        rids, rlp = sample_reference(x, seed=8, step=3, return_logprobs=True, **kw)
        assert torch.equal(ids, rids), kw
        torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=5e-6)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 4),
    vocab=st.integers(1, 300),
    kind=st.sampled_from(["normal", "ties", "masked"]),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    top_k=st.integers(0, 40),
    top_p=st.sampled_from([0.2, 0.75, 0.9, 1.0]),
    min_p=st.sampled_from([0.0, 0.05, 0.5]),
    seed=st.integers(0, 2**63 - 1),
    step=st.integers(0, 2**40),
)
def test_property_matches_reference(batch, vocab, kind, temperature, top_k, top_p, min_p, seed, step):
    g = torch.Generator().manual_seed(vocab * 7 + batch)
    if kind == "ties":
        x = torch.randint(-2, 3, (batch, vocab), generator=g).float()
    else:
        x = torch.randn(batch, vocab, generator=g) * 3
    if kind == "masked":
        x[torch.rand(batch, vocab, generator=g) < 0.7] = float("-inf")
        x[:, 0] = 0.0  # every row keeps one finite logit
    kw = dict(
        seed=seed, step=step, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, return_logprobs=True
    )
    ids, lp = sample(x, **kw)
    rids, rlp = sample_reference(x, **kw)
    assert torch.equal(ids, rids)
    torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=5e-6)
    assert bool(torch.isfinite(x.gather(1, ids[:, None])).all())


@pytest.mark.parametrize("isa", ["portable", "avx2"])
@pytest.mark.parametrize(
    "kw",
    [dict(top_k=64, top_p=0.9, min_p=0.01), dict(top_p=0.9), dict(top_k=2000)],
    ids=["top-k fast path", "top-p search", "top-k search"],
)
def test_narrower_builds_match_the_widest(monkeypatch, isa, kw):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 5003, generator=g) * 3
    widest = [sample(x, seed=3, step=s, **kw) for s in range(5)]
    monkeypatch.setenv("CHAMELEON_LITE_SAMPLING_ISA", isa)
    narrower = [sample(x, seed=3, step=s, **kw) for s in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(widest, narrower))


def _logits_for_top_k_path(case: str, g: torch.Generator) -> torch.Tensor:
    v = 65536
    if case == "ascending":  # every logit raises the running threshold: the buffer is cut back again and again
        return torch.linspace(-4, 4, v).expand(2, v).contiguous()
    if case == "descending":  # the k largest come first, nothing after them is kept
        return torch.linspace(4, -4, v).expand(2, v).contiguous()
    if case == "tied":  # thousands of ids tie the k-th: more candidates than the scratch holds, general path
        return torch.randint(-2, 3, (2, v), generator=g).float()
    if case == "few finite":  # fewer finite logits than k: no top-k cut, general path
        x = torch.full((2, v), float("-inf"))
        x[:, torch.randperm(v, generator=g)[:30]] = torch.randn(2, 30, generator=g)
        return x
    if case == "underflow":  # e of the k-th rounds to 0: the cut falls to the support, general path
        x = torch.full((2, v), -300.0)
        x[:, :5] = torch.randn(2, 5, generator=g)
        return x
    return torch.randn(2, v, generator=g) * 4


@pytest.mark.parametrize("case", ["ascending", "descending", "tied", "few finite", "underflow", "normal"])
@pytest.mark.parametrize("top_k", [1, 50, 512])
def test_top_k_path_edge_rows_match_reference(case, top_k):
    g = torch.Generator().manual_seed(top_k)
    x = _logits_for_top_k_path(case, g)
    for kw in ({"top_k": top_k}, {"top_k": top_k, "top_p": 0.7, "temperature": 0.8}, {"top_k": top_k, "min_p": 0.2}):
        for step in range(3):
            ids, lp = sample(x, seed=6, step=step, return_logprobs=True, **kw)
            rids, rlp = sample_reference(x, seed=6, step=step, return_logprobs=True, **kw)
            assert torch.equal(ids, rids), (case, kw)
            torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=5e-6)


# ---------------------------------------------------------------- distribution (chi-square)

CHI2_CASES = [
    ({}, {}),
    ({"temperature": 0.6}, {"temperature": 0.6}),
    ({"top_k": 4}, {"top_k": 4}),
    ({"top_p": 0.7}, {"top_p": 0.7}),
    ({"min_p": 0.15, "temperature": 1.4}, {"min_p": 0.15, "temperature": 1.4}),
    ({"top_k": 6, "top_p": 0.85, "temperature": 0.9}, {"top_k": 6, "top_p": 0.85, "temperature": 0.9}),
]


@pytest.mark.parametrize("kw,target_kw", CHI2_CASES, ids=[str(c[0]) or "plain" for c in CHI2_CASES])
def test_chi_square_against_target(kw, target_kw):
    z = torch.tensor([1.2, -0.3, 0.8, 2.0, 0.0, -1.5, 1.9, 0.4, -0.7, 1.0])
    probs = _target(z, **target_kw)
    counts = _draw_counts(z[None], rows=2000, steps=10, **kw)
    assert _chi2_pvalue(counts, probs) > 1e-4


def test_chi_square_with_cfg_ranges_and_penalty():
    cond = torch.tensor([[1.0, 0.5, -0.2, 1.5, 0.3, 2.2, -1.0, 0.9]])
    uncond = torch.tensor([[0.2, 0.9, 0.1, 1.0, -0.5, 1.0, 0.0, 0.3]])
    ranges = torch.tensor([[[1, 4], [5, 8], [0, 0]]])
    pen = torch.tensor([[3, 6, 3, -1]])
    z = uncond + 3.0 * (cond - uncond)
    allowed = torch.tensor([False, True, True, True, False, True, True, True])
    z = torch.where(allowed, z, float("-inf"))
    for i in (3, 6):
        z[0, i] = z[0, i] / 1.5 if z[0, i] > 0 else z[0, i] * 1.5
    counts = _draw_counts(
        cond,
        rows=2000,
        steps=10,
        uncond_logits=uncond,
        cfg_scale=3.0,
        allowed_ranges=ranges,
        penalty_ids=pen,
        repetition_penalty=1.5,
    )
    assert _chi2_pvalue(counts, _target(z[0])) > 1e-4


def test_chi_square_bf16():
    z = torch.tensor([0.5, 1.5, -0.25, 1.0, 0.75, 2.0, 0.0]).to(torch.bfloat16)
    counts = _draw_counts(z[None], rows=2000, steps=10, top_p=0.9)
    assert _chi2_pvalue(counts, _target(z.float(), top_p=0.9)) > 1e-4


# ---------------------------------------------------------------- support


def _draws(x, steps=30, **kw):
    return torch.stack([sample(x, seed=4, step=s, **kw) for s in range(steps)])


def test_never_outside_top_k_top_p_min_p():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 2048, generator=g) * 2
    p = torch.softmax(x, -1)
    srt = p.sort(-1, descending=True).values
    ids = _draws(x, top_k=20)
    assert bool((p.gather(1, ids.T) >= srt[:, 19:20]).all())
    ids = _draws(x, top_p=0.6)
    cum = srt.cumsum(-1)
    last = (cum < 0.6).sum(-1, keepdim=True)
    assert bool((p.gather(1, ids.T) >= srt.gather(1, last) * (1 - 1e-5)).all())
    ids = _draws(x, min_p=0.3)
    assert bool((p.gather(1, ids.T) >= 0.3 * p.max(-1, keepdim=True).values * (1 - 1e-5)).all())


def test_never_outside_allowed_ranges():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(32, 500, generator=g) * 4
    x[:, 0] = 50.0  # the most likely id is not allowed
    ranges = torch.zeros(32, 3, 2, dtype=torch.int64)
    ranges[:, 0] = torch.tensor([100, 110])
    ranges[:, 1] = torch.tensor([490, 500])
    ranges[::2, 2] = torch.tensor([105, 130])  # overlapping slot on even rows
    ids = _draws(x, allowed_ranges=ranges, top_k=5)
    even = ((ids >= 100) & (ids < 130)) | (ids >= 490)
    odd = ((ids >= 100) & (ids < 110)) | (ids >= 490)
    assert bool(even[:, ::2].all()) and bool(odd[:, 1::2].all())


def test_ties_at_the_top_k_boundary_are_kept():
    x = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.0, -1.0, 2.0]])
    ids = _draws(x.expand(200, 8).contiguous(), steps=10, top_k=2)
    assert set(ids.unique().tolist()) == {0, 2, 3, 4, 7}


def test_k_equal_v_and_p_one_are_no_cut():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 300, generator=g)
    for step in range(3):
        base = sample(x, seed=1, step=step)
        assert torch.equal(sample(x, seed=1, step=step, top_k=300), base)
        assert torch.equal(sample(x, seed=1, step=step, top_k=10_000), base)
        assert torch.equal(sample(x, seed=1, step=step, top_p=1.0), base)


def test_all_but_one_minus_inf():
    x = torch.full((4, 1000), float("-inf"))
    x[torch.arange(4), torch.tensor([0, 999, 500, 17])] = torch.tensor([-5.0, 3.0, 0.0, 80.0])
    for kw in ({}, {"top_k": 10, "top_p": 0.5}, {"min_p": 0.9}, {"temperature": 0.0}):
        ids, lp = sample(x, seed=0, step=1, return_logprobs=True, **kw)
        assert ids.tolist() == [0, 999, 500, 17]
        assert lp.abs().max() == 0


def test_flat_row_with_top_p_keeps_all_tied_ids():
    x = torch.zeros(400, 5)
    ids = _draws(x, steps=5, top_p=0.3)
    assert set(ids.unique().tolist()) == {0, 1, 2, 3, 4}


def test_empty_allowed_row_raises():
    x = torch.randn(2, 10)
    ranges = torch.tensor([[[0, 3], [0, 0]], [[0, 0], [4, 4]]])
    with pytest.raises(SamplingError, match="row 1 has no allowed id"):
        sample(x, seed=0, step=0, allowed_ranges=ranges)


def test_allowed_ids_all_minus_inf_raises():
    x = torch.randn(2, 10)
    x[1, 2:5] = float("-inf")
    ranges = torch.tensor([[[0, 10]], [[2, 5]]])
    with pytest.raises(SamplingError, match="row 1 has no allowed id with a finite logit"):
        sample(x, seed=0, step=0, allowed_ranges=ranges)


@pytest.mark.parametrize("bad,what", [(float("nan"), "NaN"), (float("inf"), r"\+inf")])
def test_non_finite_logits_raise(bad, what):
    x = torch.randn(3, 50)
    x[2, 7] = bad
    with pytest.raises(SamplingError, match=f"row 2 has a {what} logit"):
        sample(x, seed=0, step=0)
    # Outside the allowed ranges it does not matter.
    ranges = torch.tensor([[[0, 50]], [[0, 50]], [[8, 50]]])
    assert sample(x, seed=0, step=0, allowed_ranges=ranges)[2] >= 8


# ---------------------------------------------------------------- determinism, CFG, greedy, penalty


def test_same_ids_at_one_and_two_threads():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(48, 20000, generator=g) * 2
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [sample(x, seed=42, step=s, top_k=100, top_p=0.95) for s in range(3)]
        torch.set_num_threads(2)
        two = [sample(x, seed=42, step=s, top_k=100, top_p=0.95) for s in range(3)]
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_row_draw_independent_of_batch():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(7, 3000, generator=g)
    full = sample(x, seed=3, step=2, top_p=0.9)
    assert torch.equal(sample(x[:3], seed=3, step=2, top_p=0.9), full[:3])


def test_strided_rows_are_read_in_place():
    g = torch.Generator().manual_seed(13)
    full = torch.randn(4, 3, 999, generator=g) * 2
    un = torch.randn(4, 3, 999, generator=g) * 2
    view, uview = full[:, -1, :], un[:, 1, :]
    assert not view.is_contiguous()
    kw = dict(top_k=20, uncond_logits=uview, cfg_scale=1.5)
    ids = sample(view, seed=1, step=0, **kw)
    kw_c = dict(top_k=20, uncond_logits=uview.contiguous(), cfg_scale=1.5)
    assert torch.equal(ids, sample(view.contiguous(), seed=1, step=0, **kw_c))
    assert torch.equal(
        sample(full.transpose(1, 2)[:, :, 0], seed=1, step=0), sample(full[:, 0].contiguous(), seed=1, step=0)
    )


def test_batch_of_one():
    x = torch.randn(1, 4097)
    ids, lp = sample(x, seed=1, step=1, top_k=7, return_logprobs=True)
    rids, rlp = sample_reference(x, seed=1, step=1, top_k=7, return_logprobs=True)
    assert ids.shape == (1,) and torch.equal(ids, rids)
    torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=5e-6)


def test_cfg_equals_reference_combine():
    g = torch.Generator().manual_seed(10)
    cond = torch.randn(6, 1234, generator=g) * 2
    uncond = torch.randn(6, 1234, generator=g) * 2
    scale = torch.tensor([0.0, 1.0, 1.5, 3.0, 7.5, -0.5])
    combined = uncond + scale[:, None] * (cond - uncond)
    for kw in ({"temperature": 0.0}, {"top_k": 50, "top_p": 0.9}, {"min_p": 0.1}):
        for step in range(3):
            ids, lp = sample(cond, seed=2, step=step, uncond_logits=uncond, cfg_scale=scale, return_logprobs=True, **kw)
            cids, clp = sample(combined, seed=2, step=step, return_logprobs=True, **kw)
            assert torch.equal(ids, cids)
            torch.testing.assert_close(lp, clp, atol=1e-5, rtol=5e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_equals_argmax_with_ties_to_lowest_id(dtype):
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-3, 4, (64, 1003), generator=g).to(dtype)  # many ties
    ids = sample(x, seed=0, step=0, temperature=0.0, top_k=5, top_p=0.5)
    assert torch.equal(ids, torch.argmax(x.float(), -1))
    max_mask = x.float() == x.float().max(-1, keepdim=True).values
    assert torch.equal(ids, max_mask.int().argmax(-1))


def test_repetition_penalty():
    x = torch.tensor([[2.0, -1.0, 0.5, 3.0, -4.0]])
    pen = torch.tensor([[3, 1, 3, -1]])  # duplicates count once
    ids = sample(x, seed=0, step=0, temperature=0.0, penalty_ids=pen, repetition_penalty=2.0)
    assert ids.tolist() == [0]  # 3.0 / 2 = 1.5 < 2.0
    z = torch.tensor([2.0, -2.0, 0.5, 1.5, -4.0])
    counts = _draw_counts(x, rows=2000, steps=5, penalty_ids=pen, repetition_penalty=2.0)
    assert _chi2_pvalue(counts, _target(z)) > 1e-4
    # A penalty below 1 rewards repetition.
    assert sample(
        torch.tensor([[2.0, 1.5]]),
        seed=0,
        step=0,
        temperature=0.0,
        penalty_ids=torch.tensor([[1]]),
        repetition_penalty=0.5,
    ).tolist() == [1]


def test_logprobs_are_log_of_renormalised_target():
    z = torch.tensor([[1.2, -0.3, 0.8, 2.0, 0.0, -1.5, 1.9, 0.4]])
    target = _target(z[0], temperature=0.8, top_k=5, top_p=0.9)
    for step in range(10):
        ids, lp = sample(z, seed=6, step=step, temperature=0.8, top_k=5, top_p=0.9, return_logprobs=True)
        assert target[ids[0]] > 0
        assert math.isclose(float(lp[0]), math.log(float(target[ids[0]])), abs_tol=1e-5)


# ---------------------------------------------------------------- torch.library


def test_opcheck():
    x = torch.randn(4, 300)
    u = torch.randn(4, 300)
    args = (
        x,
        u,
        torch.tensor([0.0, 0.5, 1.0, 1.0]),
        torch.tensor(10),
        torch.tensor(0.9),
        torch.tensor(0.0),
        torch.tensor(2.0),
        torch.tensor(1.2),
        torch.tensor([[[0, 300]]] * 4),
        torch.tensor([[1, 2, -1]] * 4),
        3,
        4,
    )
    torch.library.opcheck(torch.ops.chameleon_lite.sample.default, args)
    torch.library.opcheck(torch.ops.chameleon_lite.sampling_uniforms.default, (torch.arange(5), 1, 2))


def test_outputs_carry_no_gradient():
    x = torch.randn(2, 50, requires_grad=True)
    ids, lp = sample(x, seed=0, step=0, return_logprobs=True)
    assert not ids.requires_grad and not lp.requires_grad


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 100)
        ids, lp = sample(x, seed=0, step=0, top_k=5, return_logprobs=True)
    assert ids.shape == (3,) and ids.dtype == torch.int64 and lp.dtype == torch.float32


@pytest.mark.slow
def test_torch_compile():
    def decode_step(x, s):
        return sample(x * 1.0, seed=3, step=s, top_k=10, top_p=0.9)

    compiled = torch.compile(decode_step)
    x = torch.randn(4, 500)
    for s in (1, 2):
        assert torch.equal(compiled(x, s), decode_step(x, s))


_CSRC = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")
_HEADER_USE = """
#include "common/sampling.h"
using namespace chameleon_lite::sampling;
struct NoPasses {
  DEVICE void stats(const uint32_t*, int, Point*) {}
  DEVICE int gather(uint32_t, uint32_t, float*) { return 0; }
};
DEVICE double use(float* buf) {
  PointTable t; t.reset();
  GatheredSets sets; sets.candidates.valid = false; sets.fresh.valid = false; sets.fresh_buf = buf;
  NoPasses passes;
  RowSettings s{1.0f, 0.9f, 0.0f, 1.0f, 1.0f, 3};
  t.insert(Point{kKeyPositive, 4, 2.0}); t.insert(Point{kKeyEnd, 0, 0.0});
  const Point tau = find_threshold(t, sets, passes, s);
  return tau.mass + chameleon_lite::philox::sampling_uniform(1, 2, 3) + cfg_combine(1.f, 2.f, 3.f);
}
"""


def _compile_headers(compiler: list[str], suffix: str, device: str, tmp_path) -> subprocess.CompletedProcess:
    src = tmp_path / f"use{suffix}"
    src.write_text(f"#define DEVICE {device}\n" + _HEADER_USE)
    return subprocess.run(
        compiler + ["-I", _CSRC, "-c", str(src), "-o", str(tmp_path / "use.o")], capture_output=True, text=True
    )


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_common_headers_are_standalone_host_code(tmp_path):
    # The shared sampling headers must build without torch or the C++ standard library containers, so the
    # CUDA kernel can include them unchanged.
    r = _compile_headers(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-nostdinc++"], ".cpp", "", tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_common_headers_compile_as_cuda_device_code(tmp_path):
    r = _compile_headers(["nvcc", "-std=c++17"], ".cu", "__device__", tmp_path)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- bad input

X = torch.randn(2, 10)


@pytest.mark.parametrize(
    "logits,kw,match",
    [
        (torch.randn(10), {}, r"logits must be \[B, V\]"),
        (torch.randn(2, 0), {}, r"logits must be \[B, V\]"),
        (torch.randint(0, 5, (2, 10)), {}, "float32, bfloat16 or float16"),
        ([[1.0]], {}, "must be a tensor"),
        (X, {"seed": -1}, "seed must be an int"),
        (X, {"step": 1.5}, "step must be an int"),
        (X, {"seed": True}, "seed must be an int"),
        (X, {"temperature": -0.1}, "temperature = -0.1 must be finite"),
        (X, {"temperature": float("nan")}, "temperature"),
        (X, {"top_k": -1}, "top_k = -1"),
        (X, {"top_k": 2.5}, "top_k must be an int"),
        (X, {"top_p": 0.0}, r"top_p = 0.0 must be in \(0, 1\]"),
        (X, {"top_p": 1.5}, r"top_p = 1.5 must be in \(0, 1\]"),
        (X, {"min_p": 2.0}, r"min_p = 2.0 must be in \[0, 1\]"),
        (X, {"repetition_penalty": 0.0}, "repetition_penalty = 0.0"),
        (X, {"cfg_scale": 2.0}, "uncond_logits and cfg_scale go together"),
        (X, {"uncond_logits": torch.randn(2, 10)}, "uncond_logits and cfg_scale go together"),
        (X, {"uncond_logits": torch.randn(2, 11), "cfg_scale": 1.0}, "uncond_logits must match logits"),
        (X, {"uncond_logits": torch.randn(2, 10), "cfg_scale": float("inf")}, "cfg_scale = inf must be finite"),
        (X, {"temperature": torch.ones(3)}, r"temperature must be a scalar or a \[B\] tensor"),
        (X, {"top_k": torch.ones(2)}, "top_k must be an integer tensor"),
        (X, {"top_p": torch.ones(2, dtype=torch.int64)}, "top_p must be a floating-point tensor"),
        (X, {"temperature": torch.tensor([1.0, -1.0])}, r"temperature\[1\] = -1 must be finite"),
        (X, {"top_p": torch.tensor([0.5, 0.0])}, r"top_p\[1\] = 0 must be in"),
        (X, {"top_k": torch.tensor([3, -2])}, r"top_k\[1\] = -2"),
        (X, {"min_p": torch.tensor([1.5, 0.0])}, r"min_p\[0\] = 1.5"),
        (X, {"repetition_penalty": torch.tensor([1.0, -1.0])}, r"repetition_penalty\[1\]"),
        (X, {"allowed_ranges": torch.tensor([[0, 5], [0, 5]])}, r"allowed_ranges must be \[B, R, 2\]"),
        (X, {"allowed_ranges": torch.tensor([[[0, 5]], [[0, 5]]], dtype=torch.int32)}, "must be an int64 tensor"),
        (X, {"allowed_ranges": torch.zeros(2, 0, 2, dtype=torch.int64)}, "at least one"),
        (X, {"allowed_ranges": torch.tensor([[[0, 5]], [[3, 11]]])}, r"allowed_ranges\[1, 0\] = \[3, 11\)"),
        (X, {"allowed_ranges": torch.tensor([[[5, 2]], [[0, 1]]])}, r"allowed_ranges\[0, 0\] = \[5, 2\)"),
        (X, {"allowed_ranges": torch.tensor([[[-1, 2]], [[0, 1]]])}, r"allowed_ranges\[0, 0\] = \[-1, 2\)"),
        (X, {"penalty_ids": torch.tensor([1, 2])}, r"penalty_ids must be \[B, P\]"),
        (X, {"penalty_ids": torch.tensor([[1, 10], [0, -1]])}, r"penalty_ids\[0, 1\] = 10"),
        (X, {"penalty_ids": torch.tensor([[1, 2], [0, -3]])}, r"penalty_ids\[1, 1\] = -3"),
    ],
)
def test_bad_input_raises_clear_error(logits, kw, match):
    kw = {"seed": 0, "step": 0, **kw}
    with pytest.raises(SamplingError, match=match) as info:
        sample(logits, **kw)
    assert isinstance(info.value, UserError)
    assert "Exception raised from" not in str(info.value)
