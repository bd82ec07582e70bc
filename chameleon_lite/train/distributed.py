"""Process-group setup and model wrapping: gloo on CPU, NCCL on GPU; FSDP2 (per block, then the root) or DDP."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def init_distributed() -> DistInfo:
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set); a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op outside a process group); returns ``t``."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in the backward pass instead of keeping its activations."""

    for name, block in list(model.layers.named_children()):
        model.layers.register_module(name, checkpoint_wrapper(block, preserve_rng_state=False))


def apply_compile(model: nn.Module) -> None:
    """Compile block by block: every block has the same graph, so one compilation serves all."""
    for name, block in list(model.layers.named_children()):
        model.layers.register_module(name, torch.compile(block, dynamic=False))


def wrap_model(model: nn.Module, info: DistInfo, parallel: str) -> nn.Module:
    """Shard or replicate ``model`` over the process group. ``parallel`` is "fsdp", "ddp" or "none"; outside a
    process group every choice is "none". FSDP2 shards each block, then the root (embedding, norm, head)."""
    if not info.distributed or parallel == "none":
        return model
    if parallel == "ddp":
        return DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
