"""Builds the CUDA kernel bodies against the CPU emulator once per session (a torch C++ extension)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    from torch.utils.cpp_extension import load

    build = os.environ.get("CHAMELEON_LITE_EMU_BUILD_DIR") or str(tmp_path_factory.mktemp("cuda_emu_build"))
    os.makedirs(build, exist_ok=True)
    return load(
        name="chameleon_lite_cuda_emu",
        sources=[os.path.join(ROOT, "csrc", "cuda", "emu", "emu_ops.cpp")],
        extra_include_paths=[os.path.join(ROOT, "csrc")],
        extra_cflags=["-O2", "-std=c++20", "-Wall", "-Werror", "-Wno-unused-function"],
        build_directory=build,
        verbose=False,
    )
