"""Builds chameleon_lite._C (C++ CPU kernels, always) and chameleon_lite._C_cuda (CUDA kernels, when
CHAMELEON_LITE_BUILD_CUDA=1 or a GPU is visible).

The CUDA toolkit root is located here rather than left to torch: `nvcc` on PATH may be a wrapper script,
so torch's guess from the location of `nvcc` can point at a folder that holds no toolkit.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit_root(path: str) -> bool:
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))
        and any(os.path.exists(os.path.join(path, lib, "libcudart.so")) for lib in ("lib64", "lib"))
    )


def find_cuda_home() -> str | None:
    """Return the folder holding include/cuda_runtime.h and lib64/libcudart.so, or None."""
    candidates: list[str] = []
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if os.environ.get(var):
            candidates.append(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        # A wrapper script names the real compiler; read the path out of it.
        try:
            with open(real, "rb") as f:
                head = f.read(4096)
            if b"\0" not in head:
                for m in re.finditer(rb"(/[^\s'\"]+)/bin/nvcc", head):
                    candidates.append(m.group(1).decode())
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if _is_toolkit_root(c):
            return os.path.realpath(c)
    return None


def _want_cuda() -> bool:
    flag = os.environ.get("CHAMELEON_LITE_BUILD_CUDA")
    if flag is not None:
        return flag.strip() not in ("", "0", "false", "False")
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


BUILD_CUDA = _want_cuda()
CUDA_HOME = find_cuda_home() if BUILD_CUDA else None
if BUILD_CUDA:
    if CUDA_HOME is None:
        sys.exit(
            "CHAMELEON_LITE_BUILD_CUDA=1 but no CUDA toolkit (include/cuda_runtime.h + lib64/libcudart.so) was found; set CUDA_HOME"
        )
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = CUDA_HOME

# Two notes torch prints on import that say nothing about this build: numpy is not installed yet while pip reads
# the metadata, and no CUDA runtime is found on a machine without a GPU.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _nvidia_wheel_includes() -> list[str]:
    """Headers such as cusparse.h / cublas_v2.h that torch's CUDA headers include ship in nvidia/*/include."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(p for p in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(p))


def _sources(*patterns: str) -> list[str]:
    out: list[str] = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join("csrc", p)))
    return out


common_cxx = [
    "-O3",
    "-std=c++20",
    "-fopenmp",
    "-Wall",
    "-Wno-unused-function",
    "-Wno-sign-compare",
    "-Wno-unknown-pragmas",
    "-Wno-psabi",
]  # psabi: notes about AVX argument passing in the per-ISA files, not our ABI
if os.environ.get("CHAMELEON_LITE_WERROR") == "1":
    common_cxx.append("-Werror")
# Python's own CFLAGS carry -g, which makes every object several times larger and its build about a third slower;
# CHAMELEON_LITE_DEBUG=1 keeps the debug information for gdb.
common_cxx.append("-g" if os.environ.get("CHAMELEON_LITE_DEBUG") == "1" else "-g0")
include_dirs = [os.path.join(ROOT, "csrc")]

ext_modules = [
    CppExtension(
        "chameleon_lite._C",
        sources=_sources("ops.cpp", "cpu/*.cpp"),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": common_cxx},
        extra_link_args=["-fopenmp"],
    )
]

if BUILD_CUDA:
    archs = os.environ.get("CHAMELEON_LITE_CUDA_ARCHS", "80;90").split(";")
    gencode = []
    for a in archs:
        a = a.strip()
        if a:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"] + gencode
    if os.environ.get("CHAMELEON_LITE_WERROR") == "1":
        nvcc_flags += ["-Werror", "all-warnings"]
    cuda_sources = _sources("cuda/*.cpp", "cuda/*.cu")
    ext_modules.append(
        CUDAExtension(
            "chameleon_lite._C_cuda",
            sources=cuda_sources,
            include_dirs=include_dirs + _nvidia_wheel_includes(),
            extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": nvcc_flags},
        )
    )


def _jobs() -> int:
    """Parallel compile jobs: MAX_JOBS when set, else the cores this process may run on (ninja's own default,
    cores + 2, only makes two-core machines swap between jobs)."""
    env = os.environ.get("MAX_JOBS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def _say(msg: str) -> None:
    print(f"chameleon-lite build: {msg}", flush=True)


def _run_ninja(build_directory: str, verbose: bool, error_prefix: str) -> None:
    """Runs ninja and prints one short line per compiled file ("[3/12 8 s] csrc/cpu/attention.cpp") instead of
    torch's full command lines; on failure the compiler's whole output is printed."""
    t0 = time.time()
    proc = subprocess.Popen(
        ["ninja", "-v", "-j", str(_jobs())],
        cwd=build_directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.match(r"\[(\d+/\d+)\] ", line)
        if m:
            src = re.search(r"(?:-c|\s)\s*(\S+\.(?:cpp|cu))\b", line)
            what = os.path.relpath(src.group(1), ROOT) if src else ("link" if " -shared " in line else "step")
            _say(f"[{m.group(1)} {time.time() - t0:3.0f} s] {what}")
    if proc.wait() != 0:
        sys.stdout.write("".join(lines))
        raise RuntimeError(error_prefix)


class Build(BuildExtension):
    """torch's BuildExtension (ninja), saying what it compiles and how long it took: pip shows these lines with -v."""

    def build_extensions(self) -> None:
        n = sum(len(e.sources) for e in self.extensions)
        isa = torch.backends.cpu.get_cpu_capability()
        _say(
            f"compiling {n} C++{'/CUDA' if BUILD_CUDA else ''} files with {_jobs()} parallel jobs ({isa} CPU): "
            f"about 30 s on two cores{', and 1-2 min more for the CUDA kernels' if BUILD_CUDA else ''}"
        )
        from torch.utils import cpp_extension

        t0, runner = time.time(), getattr(cpp_extension, "_run_ninja_build", None)
        if runner is not None:
            cpp_extension._run_ninja_build = _run_ninja
        try:
            super().build_extensions()
        finally:
            if runner is not None:
                cpp_extension._run_ninja_build = runner
        _say(f"done in {time.time() - t0:.0f} s")


setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": Build.with_options(use_ninja=True)},
)
