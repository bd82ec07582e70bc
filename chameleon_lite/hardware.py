"""What this machine's CPU can do, detected at run time (never assumed)."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16), where bf16 beats fp32
    (on a 2-core AVX512-BF16 machine a bf16 GEMM of training shapes ran 2.4x faster than fp32)."""
    try:
        if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
            return True
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        pass
    return False


def fast_cpu_dtype() -> torch.dtype | None:
    """bf16 when this CPU has native bf16 arithmetic, else None (run fp32)."""
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def describe_machine() -> str:
    """One line for records: CPU model, core count, the widest vector ISA torch uses here, and the GPUs."""

    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        isa = "unknown ISA"
    gpus = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    bf16 = "native bf16" if cpu_has_fast_bf16() else "no native bf16"
    return f"{name or 'CPU'}, {os.cpu_count()} cores, {isa}, {bf16}, {gpus}"
