"""Kernels that check themselves on first use, and the fallback that keeps a run alive when one is wrong.

The first time a custom op is asked to run on a device in a process, for a dtype, it is checked against its
pure-PyTorch reference on small shapes that cover its paths (:mod:`chameleon_lite.ops.selfcheck`: packed documents,
bidirectional spans, GQA, ragged lengths and tile edges, decode at several cache lengths, sampling against the
reference chain with the same counter-based draws). The result is kept per (op, device, dtype) for the rest of the
process (a process loads one build of each extension, so the key names the build too). On a mismatch or an error (a failed launch, an illegal address) one line names the op and the
error on stderr, and the op's callers take PyTorch's own path from then on: flex_attention with a block mask built
from the document and span ids on CUDA (SDPA with the mask on CPU, where flex_attention has no backward) for
attention, SDPA / the reference for decode attention, the sort-based reference chain for sampling, the references
for Snake, the bf16-weight linear, RMSNorm and RoPE.

``CHAMELEON_LITE_KERNELS`` sets the policy: ``on`` (the default: check, fall back on failure), ``off`` (never run
the custom kernels: every op takes its PyTorch path) or ``strict`` (a failed check raises
:class:`KernelVerificationError`). ``CHAMELEON_LITE_KERNELS_FAKE_MISMATCH=op[,op...]`` perturbs the named ops'
outputs during their check (``op:error`` raises inside it instead), so that the fallback can be exercised on a
machine whose kernels are right; ``all`` names every op.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import torch

from chameleon_lite.errors import UserError

ENV_MODE = "CHAMELEON_LITE_KERNELS"
ENV_FAKE = "CHAMELEON_LITE_KERNELS_FAKE_MISMATCH"
MODES = ("on", "off", "strict")

# The checked units. Attention's forward and backward are one unit (the fused forward's autograd runs the fused
# backward, so they fall back together).
CPU_OPS = ("attention", "attention_decode", "sample", "snake", "linear_bf16w", "rms_norm", "rope")
CUDA_OPS = ("attention", "attention_decode", "sample")

log = logging.getLogger("chameleon_lite.kernels")


class Mismatch(Exception):
    """A kernel ran and disagreed with its reference."""


class KernelVerificationError(UserError, RuntimeError):
    """A custom kernel disagreed with its reference (or failed to run) while CHAMELEON_LITE_KERNELS=strict."""


@dataclasses.dataclass(frozen=True)
class Verification:
    op: str
    device: str
    dtype: str
    variant: str
    ok: bool
    error: str  # "" when ok
    seconds: float

    def line(self, fallback: bool = True) -> str:
        return (
            f"chameleon-lite: kernel {self.op} ({self.variant}) on {self.device} {self.dtype} failed its "
            f"self-check: {self.error}" + ("; using PyTorch's path for it from now on" if fallback else "")
        )


_results: dict[tuple, Verification] = {}
# the checks (chameleon_lite.ops.selfcheck, which imports every op module and is installed by the package's
# __init__): an object with run(op, device, dtype, fake) and variant(op, device, dtype)
_suite = None


def install(suite) -> None:
    global _suite
    _suite = suite


_lock = threading.RLock()


def mode() -> str:
    value = os.environ.get(ENV_MODE, "on").strip().lower() or "on"
    if value not in MODES:
        raise KernelVerificationError(f"{ENV_MODE}={value!r}: expected one of {', '.join(MODES)}")
    return value


def fake_mismatch(op: str) -> str:
    """ "" (none), "mismatch" or "error": what CHAMELEON_LITE_KERNELS_FAKE_MISMATCH asks of ``op``'s check."""
    for item in os.environ.get(ENV_FAKE, "").split(","):
        name, _, kind = item.strip().partition(":")
        if name in (op, "all"):
            return "error" if kind == "error" else "mismatch"
    return ""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device() if device.index is None else device.index}"
    return device.type


def results() -> list[Verification]:
    """Every check run in this process so far, in the order they ran."""
    return list(_results.values())


def clear() -> None:
    """Forget every check (tests; a process whose kernels were rebuilt)."""
    with _lock:
        _results.clear()


def kernel_ok(op: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``op``'s custom kernel may run on ``device`` for ``dtype``: checked once per process (per device and
    dtype), False when its check failed or CHAMELEON_LITE_KERNELS=off."""
    policy = mode()
    if policy == "off":
        return False
    found = _results.get((op, device_name(device), dtype))
    if found is None:
        found = check(op, device, dtype)
    if not found.ok and policy == "strict":
        raise KernelVerificationError(found.line(fallback=False))
    return found.ok


def prepare(device: torch.device, dtypes: tuple[torch.dtype, ...], ops: tuple[str, ...] = ("attention",)) -> None:
    """Run the checks a model about to be compiled will ask for, eagerly, so that tracing finds them done."""
    if mode() == "off":
        return
    for op in ops:
        for dtype in dtypes:
            kernel_ok(op, device, dtype)


@torch.compiler.disable  # a check runs eagerly, on real tensors, even when first reached from a compiled region
def check(op: str, device: torch.device, dtype: torch.dtype) -> Verification:
    """``op``'s self-check on ``device`` for ``dtype``, run once per process whatever the policy (``doctor`` runs
    it with the kernels off too); logs one line when it fails, unless CHAMELEON_LITE_KERNELS=strict."""
    key = (op, device_name(device), dtype)
    with _lock:
        if key in _results:
            return _results[key]
        t0 = time.perf_counter()
        error = ""
        try:
            if _suite is None:
                raise RuntimeError("no self-checks installed (import chameleon_lite.ops)")
            _suite.run(op, device, dtype, fake_mismatch(op))
        except Mismatch as e:
            error = str(e)
        except Exception as e:  # a failed launch, an illegal address, a missing kernel: the op is not usable
            error = _one_line(e)
        if device.type == "cuda":
            try:
                torch.cuda.synchronize(device)
            except Exception as e:  # a sticky CUDA error: the device itself is gone for this process
                error = error or _one_line(e)
        result = Verification(
            op=op,
            device=key[1],
            dtype=str(dtype).removeprefix("torch."),
            variant=_suite.variant(op, device, dtype) if _suite is not None else "unknown",
            ok=not error,
            error=error,
            seconds=time.perf_counter() - t0,
        )
        _results[key] = result
    if not result.ok and os.environ.get(ENV_MODE, "").strip().lower() != "strict":  # strict: kernel_ok raises it
        log.warning(result.line())
    return result


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
