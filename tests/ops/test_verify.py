"""Kernels that check themselves on first use (ops/verify.py, ops/selfcheck.py), the fallback they take when a
check fails (forced here with CHAMELEON_LITE_KERNELS_FAKE_MISMATCH), the policy variable, and `chameleon-lite doctor`."""

import importlib
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from chameleon_lite import ops
from chameleon_lite.ops import doctor, selfcheck, verify

# the modules (the package's names snake, ... are the functions)
attention, linear, norm, sampling, snake = (
    importlib.import_module(f"chameleon_lite.ops.{m}") for m in ("attention", "linear", "norm", "sampling", "snake")
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """Every test starts with no check run and the default policy, and leaves the same for the next."""
    monkeypatch.delenv(verify.ENV_MODE, raising=False)
    monkeypatch.delenv(verify.ENV_FAKE, raising=False)
    verify.clear()
    yield
    verify.clear()


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*a, **k):
        calls.append(name)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _packed(B=2, L=70, Hq=4, Hkv=2, D=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, L, h, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv))
    doc = torch.zeros(B, L, dtype=torch.int32)
    span = torch.zeros(B, L, dtype=torch.int32)
    if L >= 70:
        doc[:, 25:] = 1
        doc[B - 1, 60:] = 2  # ragged: the last row has three documents
        span[0, 30:45] = 1
    return q, k, v, doc, span


# every wrapper, called the way the model calls it, with the reference it falls back to
def _call_attention():
    q, k, v, doc, span = _packed()
    return ops.modality_attention(q, k, v, doc, span)


def _call_decode():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 1, 4, 32, generator=g)
    kc, vc = torch.randn(2, 50, 2, 32, generator=g), torch.randn(2, 50, 2, 32, generator=g)
    return ops.modality_attention_decode(q, kc, vc, torch.tensor([7, 50], dtype=torch.int32))


def _call_sample():
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    return ops.sample(logits, seed=5, step=0, temperature=0.9, top_k=20)


def _call_snake():
    x = torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(3))
    return ops.snake(x, torch.zeros(1, 3, 1))


def _call_linear():
    g = torch.Generator().manual_seed(4)
    return ops.linear_bf16w(torch.randn(2, 16, generator=g), torch.randn(8, 16, generator=g).to(torch.bfloat16))


def _call_rms_norm():
    return ops.rms_norm(torch.randn(3, 16, generator=torch.Generator().manual_seed(5)), torch.ones(16), 1e-5)


def _call_rope():
    g = torch.Generator().manual_seed(6)
    a = torch.rand(1, 4, 4, generator=g)
    return ops.rope(torch.randn(1, 4, 2, 8, generator=g), a.cos(), a.sin())


WRAPPERS = {
    "attention": (_call_attention, attention, "modality_attention_sdpa"),
    "attention_decode": (_call_decode, attention, "modality_attention_decode_reference"),
    "sample": (_call_sample, sampling, "sample_reference"),
    "snake": (_call_snake, snake, "snake_reference"),
    "linear_bf16w": (_call_linear, linear, "linear_bf16w_reference"),
    "rms_norm": (_call_rms_norm, norm, "rms_norm_reference"),
    "rope": (_call_rope, norm, "rope_reference"),
}


def test_every_op_passes_its_check_on_this_cpu():
    checks = doctor.run_checks([CPU])
    assert {c.op for c in checks} == set(verify.CPU_OPS) == set(WRAPPERS)
    for c in checks:
        assert c.ok, c.line()
        assert c.variant in ("portable", "avx2", "avx512", "avx512+avx512bf16"), c
        assert "+avx512bf16" not in c.variant or (c.op, c.dtype) == ("attention", "bfloat16"), c
        assert c.seconds > 0


@pytest.mark.parametrize("op", sorted(WRAPPERS))
def test_a_passing_kernel_is_used_and_checked_once(op, monkeypatch):
    call, module, reference = WRAPPERS[op]
    calls = _spy(monkeypatch, module, reference)
    call()
    call()
    assert not calls, f"{op} took its reference path although its kernel passed"
    ran = [r for r in verify.results() if r.op == op]
    assert len(ran) == 1 and ran[0].ok


@pytest.mark.parametrize("kind", ["mismatch", "error"])
@pytest.mark.parametrize("op", sorted(WRAPPERS))
def test_a_failed_check_logs_one_line_and_falls_back(op, kind, monkeypatch, caplog):
    monkeypatch.setenv(verify.ENV_FAKE, op if kind == "mismatch" else f"{op}:error")
    call, module, reference = WRAPPERS[op]
    calls = _spy(monkeypatch, module, reference)
    with caplog.at_level(logging.WARNING, logger="chameleon_lite.kernels"):
        first = call()
        second = call()
    assert len(calls) >= 2, f"{op} did not take its reference path after failing its check"
    lines = [r.getMessage() for r in caplog.records if r.name == "chameleon_lite.kernels"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert f"kernel {op} " in lines[0] and "failed its self-check" in lines[0]
    assert ("injected failure" in lines[0]) == (kind == "error")
    (failed,) = [r for r in verify.results() if r.op == op]
    assert not failed.ok and failed.error
    # the fallback gives the reference's answer
    if isinstance(first, torch.Tensor) and first.is_floating_point():
        torch.testing.assert_close(first, second)


def test_fallback_attention_matches_the_kernel_and_trains(monkeypatch):
    """Forward and gradients through the fallback equal the kernel's (and the reference's)."""
    q, k, v, doc, span = _packed()
    outs = {}
    for name, fake in (("kernel", ""), ("fallback", "attention")):
        verify.clear()
        monkeypatch.setenv(verify.ENV_FAKE, fake)
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out = ops.modality_attention(qq, kk, vv, doc, span)
        out.square().sum().backward()
        outs[name] = (out.detach(), qq.grad, kk.grad, vv.grad)
        assert [r.ok for r in verify.results() if r.op == "attention"] == [not fake]
    for a, b in zip(outs["kernel"], outs["fallback"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_fallback_matches_the_reference():
    """The CUDA fallback's mask (flex_attention with a block mask from the ids), run eagerly on the CPU (forward:
    flex_attention has no CPU backward): packed documents, a bidirectional span, GQA, a batch of one."""
    for B, L, Hq, Hkv in ((2, 70, 4, 2), (1, 1, 2, 2), (1, 130, 2, 1)):
        q, k, v, doc, span = _packed(B, L, Hq, Hkv)
        if L == 130:
            span[0, 64:100] = 1
        ref = attention.modality_attention_reference(q, k, v, doc, span)
        out = attention.modality_attention_flex(q, k, v, doc, span, 1 / math.sqrt(q.shape[-1]), compiled=False)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_strict_policy_makes_a_mismatch_fatal(monkeypatch):
    monkeypatch.setenv(verify.ENV_MODE, "strict")
    monkeypatch.setenv(verify.ENV_FAKE, "attention")
    with pytest.raises(verify.KernelVerificationError, match="kernel attention .* failed its self-check"):
        _call_attention()


def test_off_policy_runs_no_kernel_and_no_check(monkeypatch):
    monkeypatch.setenv(verify.ENV_MODE, "off")
    for op, (call, module, reference) in WRAPPERS.items():
        calls = _spy(monkeypatch, module, reference)
        call()
        assert calls, f"{op} ran its kernel with CHAMELEON_LITE_KERNELS=off"
    assert verify.results() == []


def test_a_bad_policy_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(verify.ENV_MODE, "sometimes")
    with pytest.raises(verify.KernelVerificationError, match="expected one of on, off, strict"):
        _call_rms_norm()


def test_a_check_leaves_the_random_state_alone_and_runs_under_inference_mode_and_autocast():
    before = torch.get_rng_state()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for op in verify.CPU_OPS:
            assert verify.kernel_ok(op, CPU, torch.float32)
        assert verify.kernel_ok("attention", CPU, torch.bfloat16)
    assert torch.equal(before, torch.get_rng_state())


def test_the_check_sees_a_wrong_kernel(monkeypatch):
    """A kernel whose mask ignores the spans (a plausible bug) fails attention's check."""
    real = selfcheck.OPS

    class Wrong:
        def __getattr__(self, name):
            return getattr(real, name)

        def attention_fwd(self, q, k, v, doc, span, scale):
            return real.attention_fwd(q, k, v, doc, torch.zeros_like(span), scale)

    monkeypatch.setattr(selfcheck, "OPS", Wrong())
    result = verify.check("attention", CPU, torch.float32)
    assert not result.ok and "forward output (B=2 L=67" in result.error


def test_philox_known_answers_guard_sampling(monkeypatch):
    real = selfcheck.OPS

    class Wrong:
        def __getattr__(self, name):
            return getattr(real, name)

        def philox4x32(self, ctr, key):
            return real.philox4x32(ctr, key + 1)

    monkeypatch.setattr(selfcheck, "OPS", Wrong())
    result = verify.check("sample", CPU, torch.float32)
    assert not result.ok and "Random123" in result.error


def test_training_survives_a_failed_attention_kernel(tmp_path, monkeypatch):
    """A run whose fused attention fails its check trains on the fallback, to the same losses."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train"))
    from synthetic import SyntheticLoader, write_meta

    from chameleon_lite.train.config import load_config
    from chameleon_lite.train.metrics import read_metrics
    from chameleon_lite.train.trainer import train

    data = write_meta(str(tmp_path / "data"))
    losses = {}
    for name, fake in (("kernel", ""), ("fallback", "attention")):
        verify.clear()
        monkeypatch.setenv(verify.ENV_FAKE, fake)
        out = str(tmp_path / name)
        overrides = ["--seq_len=64", "--batch_size=4", "--dtype=fp32", "--warmup=2", "--steps=3", "--peak_tflops=1"]
        train(
            load_config("debug", configs_dir="", overrides=overrides, base={"data": data, "out": out}),
            make_loader=SyntheticLoader,
        )
        losses[name] = [r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "lr" in r]
        assert [r.ok for r in verify.results() if r.op == "attention"] == [not fake]
    assert len(losses["kernel"]) == 3
    assert losses["fallback"] == pytest.approx(losses["kernel"], rel=1e-4)


def _doctor(tmp_path, env_extra):
    env = {**os.environ, **env_extra}
    env.pop(verify.ENV_MODE, None) if verify.ENV_MODE not in env_extra else None
    out = tmp_path / "doctor.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chameleon_lite.cli", "doctor", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_doctor_reports_the_machine_and_every_check(tmp_path):
    proc, report = _doctor(tmp_path, {verify.ENV_FAKE: ""})
    assert proc.returncode == 0, proc.stderr
    assert "CPU ISA" in proc.stdout and "torch dispatch" in proc.stdout and "GPU" in proc.stdout
    assert f"{len(report['kernels'])} of {len(report['kernels'])} checks passed" in proc.stdout
    assert {k["op"] for k in report["kernels"]} == set(verify.CPU_OPS)
    assert report["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["extensions"]["_C"]["built"] and report["versions"]["torch"] == torch.__version__
    assert proc.stderr == ""


def test_doctor_exits_1_and_names_a_failed_kernel(tmp_path):
    proc, report = _doctor(tmp_path, {verify.ENV_FAKE: "sample,rope:error"})
    assert proc.returncode == 1
    failed = {(k["op"], k["dtype"]) for k in report["kernels"] if not k["verified"]}
    assert failed == {("sample", "float32"), ("sample", "bfloat16"), ("rope", "float32"), ("rope", "bfloat16")}
    assert "FAILED" in proc.stdout and "rope on cpu float32: RuntimeError: injected failure" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_doctor_json_refuses_a_file_it_did_not_write(tmp_path):
    mine = tmp_path / "doctor.json"
    mine.write_text('{"notes": "a user\'s file"}')
    proc = subprocess.run(
        [sys.executable, "-m", "chameleon_lite.cli", "doctor", "--json", str(mine)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "was not written by chameleon-lite" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and mine.read_text() == '{"notes": "a user\'s file"}'
