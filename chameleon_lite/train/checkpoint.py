"""Resumable training checkpoints through ``torch.distributed.checkpoint`` (DCP).

Layout: ``RUN/checkpoints/step_00000100/`` holds the DCP files of the model, the optimiser and the RNG state
(resharded on load, so a run may resume at another world size) plus ``train_state.json`` (step, loader
position, counters, and the size and sha256 of every DCP file). A checkpoint is written to ``<name>.tmp`` and
renamed when complete, so a crash never leaves a half-written checkpoint under a final name (the run folder must
be on a shared file system for multi-node runs). Only the newest ``keep`` are kept.

Nothing in a checkpoint runs code when it is read. DCP's own reader unpickles ``.metadata`` and its default
planner unpickles every non-tensor value with ``weights_only=False``; here the metadata goes through an
unpickler that admits only DCP's metadata classes, and non-tensor values through ``torch.load(weights_only=True)``.
A checkpoint whose files are missing, truncated or altered is refused before DCP reads it, naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._nested_dict import set_element  # private to torch; used in one place here
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from chameleon_lite.errors import ConfigError
from chameleon_lite.files import write_json_atomic
from chameleon_lite.train.distributed import DistInfo, barrier, broadcast_object, is_main_process

CKPT_DIR = "checkpoints"
STATE_FILE = "train_state.json"
BROKEN_SUFFIX = ".broken"
_NAME = re.compile(r"^step_(\d{8})$")
_HASH_CHUNK = 1 << 22


class CorruptCheckpoint(ConfigError):
    """A checkpoint folder whose files cannot be read back as written (missing, truncated, altered, hostile)."""


# What DCP's .metadata pickle may name: its own metadata records, torch.Size / dtypes / layouts, and the path
# type of the checkpoint id. Constructing any of these runs no code from the file.
_METADATA_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        ("torch.distributed.checkpoint.metadata", n)
        for n in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "ChunkStorageMetadata",
            "BytesStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    ),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata type")


def read_metadata_file(path: str) -> dcp_metadata.Metadata:
    """Unpickle a DCP ``.metadata`` file admitting only metadata types; CorruptCheckpoint for anything else."""
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path}: checkpoint metadata missing") from None
    except Exception as e:  # a truncated or hostile pickle raises many kinds; none of them may escape as a traceback
        raise CorruptCheckpoint(f"{path}: not valid checkpoint metadata ({type(e).__name__}: {e})") from None
    if not isinstance(md, dcp_metadata.Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise CorruptCheckpoint(f"{path}: not valid checkpoint metadata (holds a {type(md).__name__})")
    return md


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with :func:`read_metadata_file` in place of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        md = read_metadata_file(os.fspath(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = dcp_metadata.StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, but non-tensor values (optimizer hyper-parameters) load with ``weights_only=True``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        fqn = read_item.dest_index.fqn
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CKPT_DIR, f"step_{step:08d}")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints of a run as (step, path), oldest first (``.tmp`` and ``.broken`` folders are ignored)."""
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


def _file_digest(path: str) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def _digests(folder: str) -> dict[str, dict[str, Any]]:
    return {n: _file_digest(os.path.join(folder, n)) for n in sorted(os.listdir(folder)) if n != STATE_FILE}


def verify_files(path: str, state: dict[str, Any]) -> None:
    """Check every DCP file of the checkpoint against the sizes and hashes recorded when it was written (older
    checkpoints without the record: the sizes the metadata implies). CorruptCheckpoint names the first bad file."""
    recorded = state.get("files")
    if isinstance(recorded, dict):
        for name, want in sorted(recorded.items()):
            f = os.path.join(path, os.path.basename(name))
            if not os.path.isfile(f):
                raise CorruptCheckpoint(f"{f}: checkpoint file missing")
            if os.path.getsize(f) != want.get("bytes") or _file_digest(f)["sha256"] != want.get("sha256"):
                raise CorruptCheckpoint(
                    f"{f}: checkpoint file damaged (its size or sha256 differs from the one recorded "
                    f"when it was written)"
                )
        return
    md = read_metadata_file(os.path.join(path, ".metadata"))
    need: dict[str, int] = {}
    for info in (md.storage_data or {}).values():
        rel = os.path.basename(str(getattr(info, "relative_path", "")))
        need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
    for rel, end in sorted(need.items()):
        f = os.path.join(path, rel)
        if not os.path.isfile(f):
            raise CorruptCheckpoint(f"{f}: checkpoint file missing")
        if os.path.getsize(f) < end:
            raise CorruptCheckpoint(f"{f}: checkpoint file truncated ({os.path.getsize(f)} bytes, needs {end})")


Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]
Generators = dict[str, torch.Generator]


def _state(model: nn.Module, optimizer: Optimizers | None, generators: Generators | None = None) -> dict[str, Any]:
    """What a checkpoint holds: the model; with optimiser(s) also their state, torch's global RNG and the state
    of each named generator. Several optimisers (a tokenizer's and its discriminator's) are keyed by parameter
    name, so ``model`` must hold the parameters of all of them."""
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "rng": torch.get_rng_state()}
    if generators:
        state["generators"] = {name: g.get_state() for name, g in generators.items()}
    return state


def save_checkpoint(
    run_dir: str,
    step: int,
    model: nn.Module,
    optimizer: Optimizers,
    train_state: dict[str, Any],
    info: DistInfo,
    keep: int,
    generators: Generators | None = None,
) -> str:
    """Write the checkpoint of ``step`` atomically (collective: every rank calls it) and prune to ``keep``."""
    final = checkpoint_dir(run_dir, step)
    tmp = final + ".tmp"
    if info.is_main:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    with warnings.catch_warnings():  # DCP warns when it runs without a process group, which is a normal case here
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(_state(model, optimizer, generators), checkpoint_id=tmp)
    barrier()
    if info.is_main:
        write_json_atomic(os.path.join(tmp, STATE_FILE), {**train_state, "files": _digests(tmp)})
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_train_state(path: str) -> dict[str, Any]:
    p = os.path.join(path, STATE_FILE)
    if not os.path.isdir(path):
        raise CorruptCheckpoint(f"{path}: not a checkpoint folder" + ("" if os.path.exists(path) else " (not found)"))
    try:
        with open(p, "rb") as f:
            state = json.loads(f.read())
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path}: not a complete checkpoint ({STATE_FILE} missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"{p}: corrupt training state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CorruptCheckpoint(f'{p}: corrupt training state (no integer "step")')
    return state


def _underlying(e: BaseException) -> BaseException:
    """The first rank's error inside a DCP CheckpointException (failures: rank -> (error, stack)), else ``e``."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        return inner[0] if isinstance(inner, tuple) else inner
    return e


def _first_failure(e: BaseException) -> str:
    """One line naming the underlying error."""
    e = _underlying(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def load_checkpoint(
    path: str, model: nn.Module, optimizer: Optimizers | None = None, generators: Generators | None = None
) -> dict[str, Any]:
    """Load model (and optimiser, RNG, generators) state from a checkpoint folder into the live, possibly sharded objects;
    returns the JSON training state. Collective when a process group exists. A damaged checkpoint raises
    CorruptCheckpoint naming the file; one that does not fit the model, ConfigError."""
    train_state = read_train_state(path)
    problem = broadcast_object(_verify_message(path, train_state))  # rank 0 reads the files once for everyone
    if problem:
        raise CorruptCheckpoint(problem)
    state = _state(model, optimizer, generators)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner())
    except CorruptCheckpoint:
        raise
    except (Exception, dcp.api.CheckpointException) as e:  # CheckpointException derives from BaseException
        if isinstance(_underlying(e), CorruptCheckpoint):
            raise _underlying(e) from None
        if "files" in train_state:  # every file verified: what fails now is the model's fit, not the bytes
            raise ConfigError(f"{path}: checkpoint does not fit this model ({_first_failure(e)})") from None
        raise CorruptCheckpoint(f"{path}: checkpoint unreadable or not of this model ({_first_failure(e)})") from None
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        torch.set_rng_state(state["rng"])
        for name, g in (generators or {}).items():
            g.set_state(state["generators"][name])
    return train_state


def _verify_message(path: str, train_state: dict[str, Any]) -> str:
    if not is_main_process():
        return ""
    try:
        verify_files(path, train_state)
    except CorruptCheckpoint as e:
        return str(e)
    return ""


def newest_train_state(run_dir: str) -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint whose training state reads, with that state (None when there is none)."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_train_state(path)
        except CorruptCheckpoint:
            continue
    return None


def resume_newest(
    run_dir: str,
    model: nn.Module,
    optimizer: Optimizers,
    warn: Callable[[str], None],
    generators: Generators | None = None,
) -> tuple[str, dict[str, Any]] | None:
    """Load the newest checkpoint of ``run_dir`` that loads, saying through ``warn`` which newer ones were skipped
    and why; (path, training state), or None when the run has no checkpoint. Damaged checkpoints are left in
    place (a later save of the same step replaces them). Every checkpoint damaged: CorruptCheckpoint."""
    skipped = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, model, optimizer, generators)
        except CorruptCheckpoint as e:
            warn(f"skipping a damaged checkpoint: {e}")
            skipped.append(str(e))
    if skipped:
        raise CorruptCheckpoint(
            f"{run_dir}: no checkpoint of this run loads ({len(skipped)} damaged; newest: {skipped[0]}); "
            f"to start over, move {os.path.join(run_dir, CKPT_DIR)} away"
        )
    return None
