"""Resumable training checkpoints through ``torch.distributed.checkpoint`` (DCP).

Layout: ``RUN/checkpoints/step_00000100/`` holds the DCP files of the model, the optimiser and the RNG state
(resharded on load, so a run may resume at another world size) plus ``train_state.json`` (step, loader
position, counters; JSON, no pickle). A checkpoint is written to ``<name>.tmp`` and renamed when complete, so a
crash never leaves a half-written checkpoint under a final name (the run folder must be on a shared file system
for multi-node runs). Only the newest ``keep`` are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from chameleon_lite.errors import ConfigError
from chameleon_lite.train.distributed import DistInfo, barrier

CKPT_DIR = "checkpoints"
STATE_FILE = "train_state.json"
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CKPT_DIR, f"step_{step:08d}")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints of a run as (step, path), oldest first (``.tmp`` folders are ignored)."""
    root = os.path.join(run_dir, CKPT_DIR)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        if m and os.path.exists(os.path.join(root, name, STATE_FILE)):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def latest_checkpoint(run_dir: str) -> str | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd, "rng": torch.get_rng_state()}


def save_checkpoint(run_dir: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, train_state: dict[str, Any], info: DistInfo, keep: int) -> str:
    """Write the checkpoint of ``step`` atomically (collective: every rank calls it) and prune to ``keep``."""
    final = checkpoint_dir(run_dir, step)
    tmp = final + ".tmp"
    if info.is_main:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    with warnings.catch_warnings():  # DCP warns when it runs without a process group, which is a normal case here
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(_state(model, optimizer), checkpoint_id=tmp)
    barrier()
    if info.is_main:
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(train_state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_train_state(path: str) -> dict[str, Any]:
    p = os.path.join(path, STATE_FILE)
    try:
        with open(p) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not a complete checkpoint ({STATE_FILE} missing)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: corrupt training state ({e})") from None


def load_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load model (and optimiser, RNG) state from a checkpoint folder into the live, possibly sharded objects;
    returns the JSON training state. Collective when a process group exists."""
    train_state = read_train_state(path)
    state = _state(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=path)
    except Exception as e:  # DCP reports missing keys and shape mismatches as generic errors
        raise ConfigError(f"{path}: checkpoint does not fit this model ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        torch.set_rng_state(state["rng"])
    return train_state
