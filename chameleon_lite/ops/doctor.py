"""`chameleon-lite doctor`: what this machine is, which kernel build each op runs, and whether each passed its
self-check (:mod:`chameleon_lite.ops.verify`) on every device here."""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import sys

import torch

from chameleon_lite import hardware
from chameleon_lite.files import write_json_result
from chameleon_lite.ops import _loader, verify

# the dtypes each op is used with: the model's compute dtypes for attention, the logits' for sampling, fp32 for
# the codec's Snake and the decode-step helpers
CPU_DTYPES = {
    "attention": (torch.float32, torch.bfloat16),
    "attention_decode": (torch.float32, torch.bfloat16),
    "sample": (torch.float32, torch.bfloat16),
    "snake": (torch.float32,),
    "linear_bf16w": (torch.float32,),
    "rms_norm": (torch.float32, torch.bfloat16),
    "rope": (torch.float32, torch.bfloat16),
}
CUDA_DTYPES = {
    "attention": (torch.float32, torch.bfloat16, torch.float16),
    "attention_decode": (torch.float32, torch.bfloat16, torch.float16),
    "sample": (torch.float32, torch.bfloat16),
}


def _extension(name: str) -> dict:
    spec = importlib.util.find_spec(f"chameleon_lite.{name}")
    origin = spec.origin if spec is not None else None
    return {"built": origin is not None, "path": origin}


def gpus() -> list[dict]:
    out = []
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {
                "device": f"cuda:{i}",
                "name": p.name,
                "capability": f"sm_{p.major}{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
                "multiprocessors": p.multi_processor_count,
            }
        )
    return out


def run_checks(devices: list[torch.device]) -> list[verify.Verification]:
    """Every op's self-check on every device, for the dtypes it is used with (cached: each runs once)."""
    out = []
    for device in devices:
        table = CUDA_DTYPES if device.type == "cuda" else CPU_DTYPES
        for op, dtypes in table.items():
            for dtype in dtypes:
                out.append(verify.check(op, device, dtype))
    return out


def _policy() -> str:
    try:
        return verify.mode()
    except verify.KernelVerificationError as e:
        return f"invalid ({e})"


def report() -> dict:
    """The whole report as a JSON-able dict (the checks run here, once per process)."""
    _loader.load_extensions()
    cuda_devices = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] if _loader.HAS_CUDA_EXT else []
    checks = run_checks([torch.device("cpu"), *cuda_devices])
    return {
        "cpu": {
            "name": hardware.cpu_name() or platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "isa": hardware.cpu_isa(),
            "native_bf16": hardware.cpu_has_fast_bf16(),
            "threads": torch.get_num_threads(),
        },
        "gpus": gpus(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "extensions": {"_C": _extension("_C"), "_C_cuda": {**_extension("_C_cuda"), "loaded": _loader.HAS_CUDA_EXT}},
        "policy": _policy(),
        "kernels": [
            {
                "op": c.op,
                "device": c.device,
                "dtype": c.dtype,
                "variant": c.variant,
                "verified": c.ok,
                "error": c.error,
                "check_ms": round(c.seconds * 1e3, 1),
            }
            for c in checks
        ],
    }


def format_report(r: dict) -> str:
    cpu = r["cpu"]
    have = [k for k, v in cpu["isa"].items() if v]
    lacks = [k for k in ("avx512f", "avx512_bf16", "amx_bf16") if not cpu["isa"][k]]
    lines = [
        f"CPU        {cpu['name']}, {cpu['cores']} cores, torch uses {cpu['threads']} threads",
        f"CPU ISA    torch dispatch: {cpu['torch_capability']}; flags: {' '.join(have) or 'none found'}"
        + (f" (no {', '.join(lacks)})" if lacks else ""),
        f"           native bf16 arithmetic: {'yes' if cpu['native_bf16'] else 'no'}",
    ]
    if r["gpus"]:
        for g in r["gpus"]:
            lines.append(
                f"GPU        {g['device']}: {g['name']}, {g['capability']}, {g['memory_gib']} GiB, "
                f"{g['multiprocessors']} SMs"
            )
    else:
        lines.append("GPU        none visible to torch")
    v = r["versions"]
    lines.append(
        f"versions   Python {v['python']}, torch {v['torch']}"
        + (f" (CUDA {v['torch_cuda']}" + (f", cuDNN {v['cudnn']})" if v["cudnn"] else ")") if v["torch_cuda"] else "")
    )
    ext = r["extensions"]
    cuda_ext = ext["_C_cuda"]
    lines.append(f"extension  chameleon_lite._C: {'built' if ext['_C']['built'] else 'missing'}")
    if cuda_ext["built"]:
        state = "built and loaded" if cuda_ext["loaded"] else "built but failed to load"
    else:
        state = "not built (CHAMELEON_LITE_BUILD_CUDA=1 pip install --no-build-isolation -e .)"
    lines.append(f"           chameleon_lite._C_cuda: {state}")
    lines.append(f"kernels    {verify.ENV_MODE}={r['policy']}; self-check of each op against its PyTorch reference:")
    lines.append(f"  {'op':<18}{'device':<8}{'dtype':<10}{'variant':<20}{'check':<8}{'ms':>7}")
    for k in r["kernels"]:
        state = "ok" if k["verified"] else "FAILED"
        lines.append(
            f"  {k['op']:<18}{k['device']:<8}{k['dtype']:<10}{k['variant']:<20}{state:<8}{k['check_ms']:>7.1f}"
        )
    failed = [k for k in r["kernels"] if not k["verified"]]
    for k in failed:
        lines.append(f"  {k['op']} on {k['device']} {k['dtype']}: {k['error']}")
    n = len(r["kernels"])
    lines.append(
        f"{n - len(failed)} of {n} checks passed"
        + (": those ops fall back to PyTorch's paths in every run until fixed" if failed else "")
    )
    return "\n".join(lines)


def main(json_path: str | None = None) -> int:
    verify.log.setLevel(logging.ERROR)  # a failed check is in the table below; not also a log line
    r = report()
    print(format_report(r))
    sys.stdout.flush()
    if json_path:
        write_json_result(json_path, r)
    return 0 if all(k["verified"] for k in r["kernels"]) else 1
