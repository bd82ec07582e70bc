"""The pretraining optimiser: AdamW with weight decay on matrices only, or Muon for the transformer blocks' matrices
with AdamW for the rest; and gradient clipping that works on sharded (DTensor) gradients."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from chameleon_lite.errors import ConfigError
from chameleon_lite.train.config import OPTIMIZERS


class OptimizerSet(list):
    """Several optimisers stepped as one (Muon for the block matrices, AdamW for the rest). A list, so the
    checkpointer saves and restores each one's state; ``param_groups`` spans them all, so a schedule sets every
    group's learning rate as for one optimiser."""

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self for g in opt.param_groups]

    def step(self) -> None:
        for opt in self:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self:
            opt.zero_grad(set_to_none=set_to_none)


def is_block_matrix(name: str, p: torch.Tensor) -> bool:
    """A 2-D weight inside a transformer block (attention and feed-forward projections): what Muon orthogonalises.
    The embedding and the output head are lookups/classifiers, not hidden transforms: they stay with AdamW."""
    return p.dim() == 2 and ".layers." in f".{name}"


def _adamw(params: Iterable[nn.Parameter], lr, weight_decay, betas, eps) -> torch.optim.AdamW:
    params = list(params)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (one pass over each tensor) is 4x faster than foreach on CPU; sharded (DTensor)
    # parameters keep the foreach implementation, which supports them everywhere.
    plain = all(type(p) is nn.Parameter for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps, fused=plain or None)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    kind: str = "adamw",
    muon_momentum: float = 0.95,
) -> torch.optim.Optimizer | OptimizerSet:
    """The optimiser of ``model``'s trainable parameters. Norm gains (1-D) are not decayed: shrinking them only
    fights the norm. Build it after sharding so the optimiser holds the sharded parameters.

    ``kind="muon"``: torch.optim.Muon (momentum, then Newton-Schulz orthogonalisation of each update) for the block
    matrices, with its learning rate matched to AdamW's update size (``match_rms_adamw``), so one ``lr`` and one
    schedule serve both; AdamW for embeddings, head and gains. Muon needs each matrix whole on its rank."""
    if kind not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if kind == "adamw":
        return _adamw((p for _, p in named), lr, weight_decay, betas, eps)
    matrices = [p for n, p in named if is_block_matrix(n, p)]
    if any(type(p) is not nn.Parameter for p in matrices):
        raise ConfigError("optimizer=muon needs every matrix whole on each rank: use --parallel=ddp or none, not fsdp")
    if not matrices:
        raise ConfigError("optimizer=muon: the model has no block matrices to give it")
    muon = torch.optim.Muon(
        matrices, lr=lr, weight_decay=weight_decay, momentum=muon_momentum, adjust_lr_fn="match_rms_adamw"
    )
    rest = _adamw((p for n, p in named if not is_block_matrix(n, p)), lr, weight_decay, betas, eps)
    return OptimizerSet([muon, rest])


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (0 = measure only) and return the norm before clipping.
    A non-finite norm is returned as is and nothing is scaled (the caller skips the step)."""
    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if hasattr(norm, "full_tensor"):  # sharded gradients give a partial norm: reduce it over ranks
        norm = norm.full_tensor()
    if max_norm > 0 and torch.isfinite(norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return float(norm)
