"""The CUDA sampling kernel (csrc/cuda/sampling.cuh, with the op around it in sampling_op.h), run on CPU threads under
the emulator: for the same seed and step it draws exactly the ids of the CPU kernel, over plain sampling, greedy,
top-k / top-p / min-p and their combinations, CFG with allowed ranges, the repetition penalty, ties, bf16 / fp16
logits, strided rows and one-id vocabularies; the log-probabilities agree; bad rows give the CPU op's errors."""

import pytest
import torch

from chameleon_lite.ops.sampling import sample


def logits_for(B, V, seed, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, V, generator=g) * scale).to(dtype)


def both(
    emu,
    logits,
    seed=7,
    step=3,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    ranges=None,
    uncond=None,
    cfg=None,
    penalty_ids=None,
    penalty=1.0,
):
    cpu_ids, cpu_lp = sample(
        logits,
        seed=seed,
        step=step,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        allowed_ranges=ranges,
        uncond_logits=uncond,
        cfg_scale=cfg,
        penalty_ids=penalty_ids,
        repetition_penalty=penalty,
        return_logprobs=True,
    )
    B = logits.shape[0]

    def t(v, dtype):
        return v if isinstance(v, torch.Tensor) else torch.full((B,), v, dtype=dtype)

    emu_ids, emu_lp = emu.sample(
        logits,
        uncond,
        t(temperature, torch.float32),
        t(top_k, torch.int64),
        t(top_p, torch.float32),
        t(min_p, torch.float32),
        t(1.0 if cfg is None else cfg, torch.float32),
        t(penalty, torch.float32),
        ranges,
        penalty_ids,
        seed,
        step,
    )
    return cpu_ids, cpu_lp, emu_ids, emu_lp


SETTINGS = [
    dict(),
    dict(temperature=0.0),
    dict(temperature=0.7, top_k=1),
    dict(top_k=5),
    dict(top_k=50, temperature=1.3),
    dict(top_p=0.5),
    dict(top_p=0.9, temperature=0.8),
    dict(min_p=0.05),
    dict(top_k=40, top_p=0.8, min_p=0.02),
    dict(top_k=3, min_p=0.5),
]


@pytest.mark.parametrize("V", [1, 7, 1000, 5003])
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_same_ids_as_the_cpu_kernel(emu, V, setting):
    kw = SETTINGS[setting]
    logits = logits_for(4, V, seed=V + setting)
    for step in (0, 11):
        cpu_ids, cpu_lp, emu_ids, emu_lp = both(emu, logits, seed=123, step=step, **kw)
        assert torch.equal(emu_ids, cpu_ids), (kw, step)
        torch.testing.assert_close(emu_lp, cpu_lp, atol=1e-5, rtol=1e-5)


def test_cfg_ranges_penalty_and_per_row_settings(emu):
    B, V = 5, 3000
    cond, unc = logits_for(B, V, 1), logits_for(B, V, 2)
    ranges = torch.tensor(
        [[[0, 0], [100, 1124]], [[5, 6], [0, 0]], [[0, 3000], [0, 0]], [[2000, 2100], [10, 20]], [[0, 50], [60, 70]]]
    )
    pen = torch.tensor([[100, 101, 101, -1], [5, -1, -1, -1], [0, 1, 2, 3], [2050, 15, -1, 2050], [-1, -1, -1, -1]])
    cfg = torch.tensor([1.0, 3.0, 0.5, 2.0, 5.0])
    temperature = torch.tensor([1.0, 0.0, 0.9, 1.2, 0.6])
    top_k = torch.tensor([0, 0, 20, 7, 0])
    top_p = torch.tensor([0.95, 1.0, 0.7, 1.0, 0.5])
    for step in range(3):
        cpu_ids, cpu_lp, emu_ids, emu_lp = both(
            emu,
            cond,
            step=step,
            uncond=unc,
            cfg=cfg,
            ranges=ranges,
            penalty_ids=pen,
            penalty=1.3,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        assert torch.equal(emu_ids, cpu_ids)
        torch.testing.assert_close(emu_lp, cpu_lp, atol=1e-5, rtol=1e-5)
        for b in range(B):  # every id lies in an allowed range
            lo_hi = ranges[b]
            assert any(lo <= int(emu_ids[b]) < hi for lo, hi in lo_hi.tolist())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_and_strided_rows(emu, dtype):
    full = logits_for(3, 2 * 777, 5, dtype=dtype).view(3, 2, 777)
    rows = full[:, 1]  # a strided view: rows 2 * 777 apart
    cpu_ids, cpu_lp, emu_ids, emu_lp = both(emu, rows, top_k=30, top_p=0.9)
    assert torch.equal(emu_ids, cpu_ids)
    torch.testing.assert_close(emu_lp, cpu_lp, atol=1e-5, rtol=1e-5)


def test_ties_and_masked_logits(emu):
    V = 600
    logits = torch.zeros(4, V)
    logits[1, ::3] = float("-inf")
    logits[2, :] = float("-inf")
    logits[2, 17] = 1.0
    logits[3, 100:200] = 2.0  # a block of tied maxima
    for kw in (dict(), dict(temperature=0.0), dict(top_k=10), dict(top_p=0.3), dict(min_p=0.9)):
        cpu_ids, cpu_lp, emu_ids, emu_lp = both(emu, logits, **kw)
        assert torch.equal(emu_ids, cpu_ids), kw
        torch.testing.assert_close(emu_lp, cpu_lp, atol=1e-5, rtol=1e-5)
    assert int(both(emu, logits)[2][2]) == 17


def test_many_draws_follow_the_distribution(emu):
    # The same ids as the CPU kernel over many (seed, step) draws of one small distribution.
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5, 3.0, -2.0, 1.5]])
    emu_draws, cpu_draws = [], []
    for step in range(40):
        cpu_ids, _, emu_ids, _ = both(emu, logits, seed=99, step=step, top_p=0.95)
        cpu_draws.append(int(cpu_ids))
        emu_draws.append(int(emu_ids))
    assert emu_draws == cpu_draws
    assert len(set(emu_draws)) > 2


def test_bad_rows_give_the_cpu_errors(emu):
    good = torch.zeros(2, 10)
    for bad, message in (
        (float("nan"), "row 1 has a NaN logit"),
        (float("inf"), r"row 1 has a \+inf logit"),
        (float("-inf"), "row 1 has no allowed id with a finite logit"),
    ):
        x = good.clone()
        x[1] = float("-inf")
        x[1, 3] = bad
        with pytest.raises(ValueError, match=message):
            emu.sample(
                x,
                None,
                torch.ones(2),
                torch.zeros(2, dtype=torch.int64),
                torch.ones(2),
                torch.zeros(2),
                torch.ones(2),
                torch.ones(2),
                None,
                None,
                0,
                0,
            )
    with pytest.raises(ValueError, match="top_p"):
        emu.sample(
            good,
            None,
            torch.ones(2),
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(2),
            torch.zeros(2),
            torch.ones(2),
            torch.ones(2),
            None,
            None,
            0,
            0,
        )
    with pytest.raises(ValueError, match="allowed_ranges"):
        emu.sample(
            good,
            None,
            torch.ones(2),
            torch.zeros(2, dtype=torch.int64),
            torch.ones(2),
            torch.zeros(2),
            torch.ones(2),
            torch.ones(2),
            torch.tensor([[[0, 11]], [[0, 1]]]),
            None,
            0,
            0,
        )
