"""The pretraining loop behind ``train/pretrain.py``: one process per rank, same code for 1 CPU and N GPUs.

A step is ``grad_accum`` micro-batches of the loader's *global* batch (each rank holds its rows). The loss of a
step is the mean over every unmasked target token of the global step (cross-entropy + z_loss * lse^2), so the
losses and gradients are the same whatever the world size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from chameleon_lite.bundle import codes_hash
from chameleon_lite.data.loader import PackedLoader
from chameleon_lite.data.shards import read_vocab
from chameleon_lite.errors import ConfigError, DataError, UserError
from chameleon_lite.files import RUN, check_output_dir, write_json_atomic
from chameleon_lite.hardware import cpu_has_fast_bf16
from chameleon_lite.model.config import ModelConfig
from chameleon_lite.model.io import load_weights, read_model_weights
from chameleon_lite.model.transformer import Transformer, token_losses
from chameleon_lite.ops.verify import prepare as verify_kernels
from chameleon_lite.train import checkpoint as ckpt
from chameleon_lite.train.config import PretrainConfig
from chameleon_lite.train.distributed import (
    DistInfo,
    all_reduce_sum,
    apply_activation_checkpointing,
    apply_compile,
    broadcast_object,
    init_distributed,
    wrap_model,
)
from chameleon_lite.train.metrics import STAT_SIZE, MetricsLog, loss_stats, measure_peak_flops, summarize_stats
from chameleon_lite.train.optim import OptimizerSet, build_optimizer, clip_grad_norm
from chameleon_lite.train.schedule import lr_at
from chameleon_lite.vocab import UnifiedVocab

RUN_FILE = "run.json"
BATCH_KEYS = ("input_ids", "targets", "loss_mask", "doc_ids", "span_ids", "positions")

LoaderFactory = Callable[..., Iterator[dict[str, torch.Tensor]]]


class TrainingError(UserError):
    """The run cannot continue (e.g. the loss stayed non-finite)."""


def compute_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype:
    """bf16 autocast on GPUs and on CPUs with native bf16 GEMMs (AMX or AVX512-BF16); fp32 elsewhere."""
    if cfg.dtype == "bf16":
        return torch.bfloat16
    if cfg.dtype == "fp32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def _next_batch(it: Iterator[dict[str, torch.Tensor]], device: torch.device, what: str) -> dict[str, torch.Tensor]:
    try:
        b = next(it)
    except StopIteration:
        raise DataError(f"the {what} loader ran out of batches") from None
    missing = [k for k in BATCH_KEYS if k not in b]
    if missing:
        raise DataError(f"the {what} loader gave a batch without {', '.join(missing)}")
    return {k: b[k].to(device, non_blocking=True) for k in BATCH_KEYS}


def make_loss_terms(model, compile_whole: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """fn(input_ids, positions, doc_ids, span_ids, targets) -> (ce, lse) [B, L] fp32. Compiled as one graph
    (model and loss together) when ``compile_whole``: fusing the head with the log-softmax and the norms/RoPE
    with their neighbours is where compilation pays on CPU (block-wise compilation gained little)."""

    def loss_terms(input_ids, positions, doc_ids, span_ids, targets):
        return token_losses(model(input_ids, positions, doc_ids, span_ids), targets)

    return torch.compile(loss_terms) if compile_whole else loss_terms


def forward_losses(loss_terms, b: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(b["input_ids"].device.type, dtype=dtype, enabled=dtype != torch.float32):
        return loss_terms(
            b["input_ids"], b["positions"], b["doc_ids"].to(torch.int32), b["span_ids"].to(torch.int32), b["targets"]
        )


@torch.no_grad()
def evaluate(
    loss_terms, cfg: PretrainConfig, info: DistInfo, vocab: UnifiedVocab, make_loader: LoaderFactory, dtype: torch.dtype
) -> dict[str, float]:
    """Mean validation loss overall and per modality over the first ``val_batches`` global batches of val_data
    (the same rows at every evaluation)."""
    it = iter(
        make_loader(cfg.val_data, cfg.seq_len, cfg.batch_size, rank=info.rank, world_size=info.world_size, seed=0)
    )
    stats = torch.zeros(STAT_SIZE, dtype=torch.float64, device=info.device)
    for _ in range(cfg.val_batches):
        b = _next_batch(it, info.device, "validation")
        ce, lse = forward_losses(loss_terms, b, dtype)
        stats += loss_stats(ce, lse, b["targets"], b["loss_mask"], vocab)
    return summarize_stats(all_reduce_sum(stats), prefix="val_")


def run_codes_hash(cfg: PretrainConfig, meta: dict[str, Any], val_meta: dict[str, Any], tokenizers: str) -> str:
    """Which codes the run trains on: the hash the training shards recorded when they were tokenized, which the
    validation shards and the tokenizer folder must share (the vocab hash alone cannot tell a retrained tokenizer
    of the same sizes apart); the folder's hash for shards that recorded none; "" when neither is known."""
    codes = meta.get("codes_hash", "")
    val = val_meta.get("codes_hash", "")
    if codes and val and val != codes:
        raise DataError(
            f"{cfg.val_data}: the validation shards were tokenized with other tokenizers (codes hash {val}) "
            f"than the training shards {cfg.data} ({codes})"
        )
    if tokenizers and os.path.isdir(tokenizers):
        have = codes_hash(tokenizers)
        if codes and have != codes:
            raise ConfigError(
                f"{cfg.data}: the shards were tokenized with other tokenizers (codes hash {codes}) than the "
                f"ones in {tokenizers} ({have}); pass the tokenizers they were made with, or tokenize again"
            )
        codes = codes or have
    return codes


def check_resume(last: str, state: dict[str, Any], vocab: UnifiedVocab, mcfg: ModelConfig) -> None:
    """A checkpoint resumes only on data of its vocabulary and codes."""
    if state.get("vocab_hash") != vocab.hash:
        raise ConfigError(
            f"{last}: checkpoint was trained on vocabulary {state.get('vocab_hash')}, the data uses {vocab.hash}"
        )
    if state.get("codes_hash") and mcfg.codes_hash and state["codes_hash"] != mcfg.codes_hash:
        raise ConfigError(
            f"{last}: checkpoint was trained on other codes (codes hash {state['codes_hash']}) than the data's "
            f"tokenizers make ({mcfg.codes_hash})"
        )


def init_weights_from(cfg: PretrainConfig, mcfg: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The weights of the exported model ``cfg.init_from`` (continued pretraining, fine-tuning), after checking
    that it is the architecture the run builds and was trained on the data's vocabulary; None without init_from."""
    if not cfg.init_from:
        return None
    src, state = read_model_weights(cfg.init_from)
    if src.vocab_hash != mcfg.vocab_hash:
        raise ConfigError(
            f"init_from={cfg.init_from}: the model was trained on vocabulary {src.vocab_hash}, the data uses {mcfg.vocab_hash}"
        )
    if src.codes_hash and mcfg.codes_hash and src.codes_hash != mcfg.codes_hash:
        raise ConfigError(
            f"init_from={cfg.init_from}: the model was trained on other codes (codes hash {src.codes_hash}) than the "
            f"data's tokenizers make ({mcfg.codes_hash}); tokenize the data with the model's own tokenizers"
        )
    a, b = src.to_dict(), mcfg.to_dict()
    differ = [k for k in a if k not in ("max_seq_len", "codes_hash") and a[k] != b.get(k)]
    if differ:
        raise ConfigError(
            f"init_from={cfg.init_from}: the model differs from the run's model ({cfg.model!r} with overrides) in "
            + ", ".join(f"{k}={a[k]!r} vs {b.get(k)!r}" for k in differ)
            + "; set --model / --model.<field> to match it"
        )
    return state


def build_train_model(
    mcfg: ModelConfig, cfg: PretrainConfig, info: DistInfo, init: dict[str, torch.Tensor] | None = None
) -> Transformer:
    """Meta-device build, materialise and initialise (the same seed on every rank; or the weights ``init``),
    then AC / compile / sharding.
    Under FSDP compilation goes block by block (torchtitan's way: the sharding hooks sit between blocks);
    otherwise make_loss_terms compiles model and loss as one graph."""
    with torch.device("meta"):
        model = Transformer(mcfg)
    model.to_empty(device=info.device)
    model.init_weights(seed=cfg.seed)
    if init is not None:
        load_weights(model, init, cfg.init_from)
    if cfg.activation_checkpoint:
        apply_activation_checkpointing(model)
    if cfg.compile and _blockwise_compile(cfg, info):
        apply_compile(model)
    return wrap_model(model, info, cfg.parallel)


def _blockwise_compile(cfg: PretrainConfig, info: DistInfo) -> bool:
    return info.distributed and cfg.parallel == "fsdp"


def _grad_sync(model, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not enabled:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class _Run:
    """One pretraining run as it goes: what ``_start`` builds and each step reads and advances."""

    cfg: PretrainConfig
    info: DistInfo
    vocab: UnifiedVocab
    mcfg: ModelConfig
    dtype: torch.dtype
    model: Any
    opt: torch.optim.Optimizer | OptimizerSet
    loss_terms: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    make_loader: LoaderFactory
    loader: Any
    log: MetricsLog
    peak_flops: float  # per process
    start: int = 0
    end: int = 0
    nonfinite: int = 0  # non-finite steps in a row
    batches: Iterator[dict[str, torch.Tensor]] | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.cfg.seq_len


def train(cfg: PretrainConfig, make_loader: LoaderFactory | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining as described by ``cfg``; returns the last step's record.

    ``make_loader(shards_dir, seq_len, batch_size, *, rank, world_size, seed)`` must return an iterator of
    batches with the PackedLoader contract and ``state_dict``/``load_state_dict`` (default: PackedLoader).
    """
    run = _start(cfg, make_loader or PackedLoader)
    record: dict[str, Any] = {}
    try:
        for step in range(run.start, run.end):
            record = _step(run, step)
            _after_step(run, step, record)
    finally:
        run.log.close()
    return record


def _check_setup(cfg: PretrainConfig, info: DistInfo) -> None:
    if not cfg.data or not cfg.out:
        raise ConfigError("training needs --data SHARDS and --out RUN")
    if cfg.batch_size % info.world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} (global rows) must be a multiple of the world size {info.world_size}"
        )
    if info.distributed and cfg.parallel == "none":
        raise ConfigError("parallel=none cannot train with more than one process; use fsdp or ddp")
    if info.is_main:  # the other ranks could see the folder main is making before its run.json is there
        check_output_dir(cfg.out, RUN)  # a folder with files but no run.json is not a run to resume or write into


def _read_data(cfg: PretrainConfig) -> tuple[UnifiedVocab, dict[str, Any], dict[str, Any]]:
    """The vocabulary and meta.json of the training shards, and the validation shards' meta (same vocabulary)."""
    vocab, meta = read_vocab(cfg.data)
    val_meta: dict[str, Any] = {}
    if cfg.val_data:
        val_vocab, val_meta = read_vocab(cfg.val_data)
        if val_vocab.hash != vocab.hash:
            raise DataError(
                f"{cfg.val_data}: validation shards use vocabulary {val_vocab.hash}, training shards {vocab.hash}"
            )
    return vocab, meta, val_meta


def _start(cfg: PretrainConfig, make_loader: LoaderFactory) -> _Run:
    """Check the setup and the data, write run.json, build model, optimiser and loader, resume the newest
    checkpoint if there is one."""
    info = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if info.device.type == "cpu":
        # Tiny gradients and Adam moments become denormal floats, which x86 handles ~100x slower; flushing them
        # to zero changes no result that matters and keeps CPU steps at full speed.
        torch.set_flush_denormal(True)
    _check_setup(cfg, info)
    vocab, meta, val_meta = _read_data(cfg)
    tokenizers = cfg.tokenizers or meta.get("tokenizers", "")
    mcfg = cfg.model_config(
        vocab.size,
        vocab.hash,
        run_codes_hash(cfg, meta, val_meta, tokenizers),
        (vocab.image_offset, vocab.audio_offset),
    )
    dtype = compute_dtype(cfg, info.device)
    os.makedirs(cfg.out, exist_ok=True)
    newest = ckpt.newest_train_state(cfg.out)
    if newest is not None:  # before run.json is rewritten: a refused resume leaves the run as it was
        check_resume(*newest, vocab, mcfg)
    if info.is_main:
        _write_run_json(cfg, mcfg, vocab, tokenizers, info, dtype)
    init = init_weights_from(cfg, mcfg) if newest is None else None  # a resumed run has its checkpoint's weights
    # the fused attention checks itself here, before the model is compiled (it falls back to PyTorch's path if not)
    verify_kernels(info.device, (dtype,))
    torch.manual_seed(cfg.seed)
    model = build_train_model(mcfg, cfg, info, init)
    loader = make_loader(
        cfg.data, cfg.seq_len, cfg.batch_size, rank=info.rank, world_size=info.world_size, seed=cfg.seed
    )
    run = _Run(
        cfg, info, vocab, mcfg, dtype, model,
        opt=build_optimizer(
            model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), kind=cfg.optimizer, muon_momentum=cfg.muon_momentum
        ),
        loss_terms=make_loss_terms(model, cfg.compile and not _blockwise_compile(cfg, info)),
        make_loader=make_loader, loader=loader, log=None, peak_flops=0.0,
        end=min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps,
    )  # fmt: skip
    last = _resume(run) if newest else None
    run.batches = iter(loader)
    run.peak_flops = (
        cfg.peak_tflops * 1e12
        if cfg.peak_tflops
        else broadcast_object(measure_peak_flops(info.device, dtype) if info.is_main else None)
    )
    run.log = MetricsLog(cfg.out, cfg.steps, run.start, info.is_main)
    if info.is_main:
        run.log.message(
            f"model {cfg.model}: {mcfg.num_params() / 1e6:.2f}M parameters, vocab {vocab.size} ({vocab.hash}); "
            f"world {info.world_size} ({cfg.parallel if info.distributed else 'single process'}), "
            f"{str(dtype).replace('torch.', '')}, {run.tokens_per_step} tokens/step"
            + (f"; resumed from {last}" if last else "")
        )
    return run


def _write_run_json(
    cfg: PretrainConfig, mcfg: ModelConfig, vocab: UnifiedVocab, tokenizers: str, info: DistInfo, dtype: torch.dtype
) -> None:
    run = {
        "train": cfg.to_dict(),
        "model": mcfg.to_dict(),
        "vocab": {**vocab.to_dict(), "hash": vocab.hash},
        "tokenizers": tokenizers,
        "world_size": info.world_size,
        "compute_dtype": str(dtype).replace("torch.", ""),
    }
    write_json_atomic(os.path.join(cfg.out, RUN_FILE), run)


def _resume(run: _Run) -> str | None:
    """Load the newest checkpoint into model, optimiser and loader; its path (None when there is none)."""
    resumed = ckpt.resume_newest(run.cfg.out, run.model, run.opt, warn=_warn if run.info.is_main else lambda _: None)
    if resumed is None:
        return None
    last, state = resumed
    run.loader.load_state_dict(state["loader"])
    run.start, run.nonfinite = int(state["step"]), int(state.get("nonfinite", 0))
    return last


def _step(run: _Run, step: int) -> dict[str, Any]:
    """One optimiser step over ``grad_accum`` micro-batches (skipped when the loss or gradient is not finite);
    its log record."""
    cfg, info = run.cfg, run.info
    t0 = time.perf_counter()
    lr = lr_at(
        step,
        lr=cfg.lr,
        warmup=cfg.warmup,
        total=cfg.steps,
        min_lr_ratio=cfg.min_lr_ratio,
        schedule=cfg.schedule,
        decay_frac=cfg.decay_frac,
    )
    for g in run.opt.param_groups:
        g["lr"] = lr
    micro = [_next_batch(run.batches, info.device, "training") for _ in range(cfg.grad_accum)]
    count = torch.tensor(
        [float(sum(int(b["loss_mask"].sum()) for b in micro))], dtype=torch.float64, device=info.device
    )
    # Gradients are averaged over ranks by FSDP/DDP; scaling by W turns that back into a global token mean.
    scale = info.world_size / max(float(all_reduce_sum(count)), 1.0)
    stats = torch.zeros(STAT_SIZE, dtype=torch.float64, device=info.device)
    for i, b in enumerate(micro):
        with _grad_sync(run.model, i == len(micro) - 1):
            ce, lse = forward_losses(run.loss_terms, b, run.dtype)
            mask = b["loss_mask"].to(ce.dtype)
            loss = ((ce + cfg.z_loss * lse.square()) * mask).sum() * scale
            loss.backward()
        stats += loss_stats(ce, lse, b["targets"], b["loss_mask"], run.vocab)
    record = summarize_stats(all_reduce_sum(stats))
    gnorm = clip_grad_norm(run.model, cfg.grad_clip)
    ok = math.isfinite(record["loss"]) and math.isfinite(gnorm)
    if ok:
        run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = run.tokens_per_step / dt
    mfu = tps * run.mcfg.flops_per_token(cfg.seq_len) / (run.peak_flops * info.world_size)
    record.update(step=step, lr=lr, grad_norm=gnorm, tokens_per_s=tps, mfu=mfu, step_time=dt)
    if not ok:
        record["skipped"] = True
    return record


def _after_step(run: _Run, step: int, record: dict[str, Any]) -> None:
    """Log the step; stop a run whose loss stays non-finite; validate and checkpoint when due."""
    cfg = run.cfg
    run.nonfinite = run.nonfinite + 1 if record.get("skipped") else 0
    if record.get("skipped"):
        run.log.message(
            f"step {step}: non-finite loss {record['loss']} / grad norm {record['grad_norm']}; step skipped "
            f"({run.nonfinite} in a row)"
        )
    run.log.log(record)
    if run.nonfinite >= cfg.max_nonfinite:
        good = ckpt.latest_checkpoint(cfg.out)
        raise TrainingError(
            f"the loss was non-finite for {run.nonfinite} steps in a row (steps {step - run.nonfinite + 1}..{step}); "
            f"the run stopped. Lower --lr or raise --warmup, or check the data; last good checkpoint: {good or 'none'}"
        )
    done = step + 1
    if cfg.val_data and cfg.val_batches and (done % cfg.val_every == 0 or done == run.end):
        val = evaluate(run.loss_terms, cfg, run.info, run.vocab, run.make_loader, run.dtype)
        run.log.log({"step": step, **val}, advance=False)
        run.log.message(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in val.items() if k.startswith("val_loss")))
    if done % cfg.ckpt_every == 0 or done == run.end:
        state = {
            "step": done,
            "loader": run.loader.state_dict(),
            "nonfinite": run.nonfinite,
            "vocab_hash": run.vocab.hash,
            "codes_hash": run.mcfg.codes_hash,
            "world_size": run.info.world_size,
        }
        ckpt.save_checkpoint(cfg.out, done, run.model, run.opt, state, run.info, cfg.keep_ckpts)
