"""Runs a snippet in fresh processes for each (kernel build, thread count): a build is picked once per process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch


def run_in_builds(code: str, isa_env: str, tmp_path, builds=("auto", "portable"), threads=(1, 2)) -> dict:
    """``code`` reads the thread count from argv[1] and torch.saves its result to argv[2]; the environment variable
    ``isa_env`` selects the build. -> {(build, threads): the loaded result}."""
    out = {}
    for isa in builds:
        for n in threads:
            path = str(tmp_path / f"{isa}{n}.pt")
            subprocess.run([sys.executable, "-c", code, str(n), path], check=True, env={**os.environ, isa_env: isa})
            out[isa, n] = torch.load(path, weights_only=True)
    return out
