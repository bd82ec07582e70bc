"""What this machine's CPU can do, detected at run time (never assumed)."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# the vector and matrix extensions the kernels and torch's CPU paths care about, widest last
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_isa() -> dict[str, bool]:
    """Each of ISA_FLAGS: whether this CPU has it (detected now, never assumed)."""
    flags = cpu_flags()
    return {name: name in flags for name in ISA_FLAGS}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16), where bf16 beats fp32
    (on a 2-core AVX512-BF16 machine a bf16 GEMM of training shapes ran 2.4x faster than fp32)."""
    try:
        if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
            return True
    except AttributeError:
        pass
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fast_cpu_dtype() -> torch.dtype | None:
    """bf16 when this CPU has native bf16 arithmetic, else None (run fp32)."""
    return torch.bfloat16 if cpu_has_fast_bf16() else None


@functools.cache
def cpu_name() -> str:
    """The CPU's model name as Linux reports it ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def describe_machine() -> str:
    """One line for records: CPU model, core count, the widest vector ISA torch uses here, and the GPUs."""
    name = cpu_name()
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        isa = "unknown ISA"
    gpus = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    bf16 = "native bf16" if cpu_has_fast_bf16() else "no native bf16"
    return f"{name or 'CPU'}, {os.cpu_count()} cores, {isa}, {bf16}, {gpus}"
