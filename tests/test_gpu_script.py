"""bench/gpu/run.sh, the GPU owner's one command, runs to the end here in its dry-run form (each step's CPU
stand-in) and writes its report; a failed step makes it exit non-zero without stopping the others."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu", "run.sh")


def _run(tmp_path, *extra, env_extra=None):
    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run(
        ["bash", SCRIPT, "--dry-run", "--out", str(tmp_path / "out"), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def test_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["dry_run"] is True
    assert [s["step"] for s in report["steps"]] == ["doctor", "cuda-tests", "attention", "sampling"]
    assert all(s["exit"] == 0 for s in report["steps"])
    assert report["kernels"] and all(k["verified"] for k in report["kernels"])
    for name in ("attention_cuda.json", "attention_cuda.png", "sampling_cuda.json", "sampling_cuda.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert "dry run" in (out / "report.md").read_text()


def test_a_failing_step_is_reported_and_the_rest_still_run(tmp_path):
    proc = _run(tmp_path, env_extra={"CHAMELEON_LITE_KERNELS_FAKE_MISMATCH": "rope"})
    assert proc.returncode == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    exits = {s["step"]: s["exit"] for s in report["steps"]}
    assert exits["doctor"] == 1 and exits["attention"] == 0 and exits["sampling"] == 0
    assert {k["op"] for k in report["kernels"] if not k["verified"]} == {"rope"}  # its fp32 and bf16 checks


def test_unknown_arguments_and_no_gpu_are_one_line(tmp_path):
    bad = subprocess.run(["bash", SCRIPT, "--bogus"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown argument" in bad.stderr
    import torch

    if not torch.cuda.is_available():
        real = subprocess.run(
            ["bash", SCRIPT, "--out", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHON": sys.executable},
            timeout=120,
        )
        assert real.returncode == 2 and "no CUDA GPU is visible" in real.stderr
        assert real.stderr.strip().count("\n") == 0
