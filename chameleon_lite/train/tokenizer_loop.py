"""The one training loop of the image VQ tokenizer and the audio codec, on the pretraining stack's pieces: the
schedule (train/schedule.py), the checkpointer (train/checkpoint.py: atomic, integrity-checked, exact resume of
weights, optimisers, discriminator and every RNG) and the metrics log (train/metrics.py).

What differs per modality (data, losses, discriminator, samples) is a task object from
tokenizers/image_train.py or tokenizers/audio_train.py; this module runs any of them.

Run folder (``out/run/<kind>``, so the image tokenizer and the audio codec trained into one ``out`` keep separate
runs)::

    checkpoints/step_XXXXXXXX/   resumable state (the newest only), written atomically
    log.jsonl                    one record per log_every steps
    summary.json                 wall time, steps, last record, configs
    (the task's samples: grid_XXXXXX.png, spectrogram_XXXXXX.png, sample_XXXXXX_K.wav)

Decoder fine-tuning (``finetune_decoder``) trains only the decoder: the encoder and quantizer are frozen here and
checked bit-identical at the end (see ``freeze_code_path``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from chameleon_lite.bundle import makes_codes
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import TOKENIZERS, check_output_dir, read_json, write_json_atomic
from chameleon_lite.tokenizers.audio_train import AudioCodecTask
from chameleon_lite.tokenizers.image_train import ImageVQTask
from chameleon_lite.train import checkpoint as ckpt
from chameleon_lite.train.distributed import DistInfo
from chameleon_lite.train.metrics import MetricsLog
from chameleon_lite.train.schedule import lr_at

LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
# a model config field that only the tokenizers of that kind have: tells whose checkpoint a run folder holds
RUN_KINDS = {"image": "image_size", "audio": "sample_rate"}


class TokenizerTask(Protocol):
    """A modality's part of a tokenizer training run (see ImageVQTask, AudioCodecTask)."""

    kind: str  # "image" or "audio": the run folder out/run/<kind>
    desc: str  # progress bar label
    cfg: Any  # the run's config: steps, lr, warmup, min_lr_ratio, seed, threads, disc_start, log_every, ...
    mcfg: Any  # the tokenizer's config
    manifest: str
    sample_every: int
    rate_key: str  # name of the throughput entry of a log record
    units_per_step: float  # what rate_key counts, per step

    def load_data(self) -> None: ...
    def build_model(self) -> nn.Module: ...
    def optimizers(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, nn.Module | None, Any]: ...
    def begin(self, model: nn.Module, gen: torch.Generator) -> None: ...
    def forward(self, model: nn.Module, disc: nn.Module | None, step: int, gen: torch.Generator) -> tuple: ...
    def log_values(self, lr: float) -> dict[str, Any]: ...
    def postfix(self, rec: dict[str, Any]) -> dict[str, str]: ...
    def samples(self, model: nn.Module, run: str, done: int) -> None: ...
    def save(self, model: nn.Module, out: str) -> None: ...
    def summary_counts(self) -> dict[str, Any]: ...
    def summary_extra(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------- run folder
def run_folder(out: str, kind: str) -> str:
    """``out/run/<kind>``, after refusing a checkpoint of this kind in the format before this loop (out/run/<kind>/
    checkpoint or, older still, out/run/checkpoint): one line saying what to do, not a traceback."""
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    check_output_dir(out, TOKENIZERS)  # never write tokenizer files into a folder that is not one
    shared = os.path.join(out, "run")
    run = os.path.join(shared, kind)
    for folder, name in (
        (run, "checkpoint"),
        (run, "checkpoint.old"),
        (shared, "checkpoint"),
        (shared, "checkpoint.old"),
    ):
        state = os.path.join(folder, name, "state.json")
        if os.path.isfile(state) and (folder == run or _old_checkpoint_kind(state) == kind):
            raise ConfigError(
                f"{os.path.join(folder, name)}: a tokenizer checkpoint of an older chameleon-lite, which this version "
                f"cannot resume; delete {os.path.join(folder, name)} to train from scratch, or use another --out"
            )
    return run


def _old_checkpoint_kind(state_json: str) -> str | None:
    try:
        model_config = read_json(state_json, "checkpoint state").get("model_config", {})
    except ConfigError:
        return None
    return next((k for k, field in RUN_KINDS.items() if field in model_config), None)


def different_config_error(path: str, run: str) -> ConfigError:
    """The error for a checkpoint whose model config is not this run's."""
    return ConfigError(
        f"{path}: checkpoint was trained with a different model config (another --preset or --model.KEY, "
        f"or another tokenizer to fine-tune); use another --out, or delete {run} to train from scratch"
    )


# ---------------------------------------------------------------------------------------------- fine-tuning
def code_path_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a tokenizer that makes the codes (all but ``decoder.*``): what decoder fine-tuning keeps."""
    return {k: v for k, v in model.state_dict().items() if makes_codes(k)}


def code_path_changed(model: nn.Module, frozen: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(v, frozen[k]) for k, v in code_path_state(model).items())


def freeze_code_path(model: nn.Module) -> dict[str, torch.Tensor]:
    """Stop gradients to the encoder and quantizer; returns a copy of their tensors to check against later."""
    model.encoder.requires_grad_(False)
    model.quantizer.requires_grad_(False)
    return {k: v.clone() for k, v in code_path_state(model).items()}


def set_train_mode(model: nn.Module, finetune: bool) -> None:
    """Training mode; when fine-tuning the decoder, the frozen parts stay in eval mode (no codebook EMA updates,
    no dead-code replacement)."""
    model.train()
    if finetune:
        model.encoder.eval()
        model.quantizer.eval()


def check_finetune_resume(path: str, state: dict[str, Any], finetune_decoder: str) -> None:
    """A checkpoint resumes only the same kind of run: both from scratch, or both fine-tuning the same decoder."""
    have = state["train_config"].get("finetune_decoder", "")
    if have != finetune_decoder:
        raise ConfigError(
            f"{path}: checkpoint of a run with finetune_decoder={have!r}, this run has "
            f"{finetune_decoder!r}; use another --out"
        )


# ---------------------------------------------------------------------------------------------- checkpoints
class _Parts:
    """What one run trains: the tokenizer with its optimiser, the discriminator with its own, the batch generator."""

    def __init__(self, task: TokenizerTask, gen: torch.Generator) -> None:
        self.finetune = bool(task.cfg.finetune_decoder)
        self.model = task.build_model()
        self.frozen = freeze_code_path(self.model) if self.finetune else {}
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt, self.disc, self.dopt = task.optimizers(self.params)
        self.gen = gen

    def checkpointed(self, with_disc: bool) -> tuple[nn.Module, list[torch.optim.Optimizer]]:
        """The modules and optimisers a checkpoint holds. The discriminator's only once it has stepped: DCP would
        give an optimiser without state one (a zero step), which would shift its Adam step count."""
        if with_disc and self.disc is not None:
            return nn.ModuleDict({"model": self.model, "disc": self.disc}), [self.opt, self.dopt]
        return nn.ModuleDict({"model": self.model}), [self.opt]

    def disc_stepped(self) -> bool:
        return self.dopt is not None and bool(self.dopt.state)


def _single_process() -> DistInfo:
    return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _resume(task: TokenizerTask, parts: _Parts, run: str) -> tuple[int, float]:
    """Load the run's newest checkpoint (after checking it is of this run); (step, seconds trained so far)."""
    newest = ckpt.newest_train_state(run)
    if newest is None:
        return 0, 0.0
    path, state = newest
    if state.get("model_config") != task.mcfg.to_dict():
        raise different_config_error(path, run)
    check_finetune_resume(path, state, task.cfg.finetune_decoder)
    model, opts = parts.checkpointed(bool(state.get("disc_stepped")))
    path, state = ckpt.resume_newest(run, model, opts, warn=_warn, generators={"batches": parts.gen})
    if parts.finetune and code_path_changed(parts.model, parts.frozen):
        raise ConfigError(
            f"{path}: the encoder or codebook of {task.cfg.finetune_decoder} changed since this "
            "fine-tuning run started; use another --out"
        )
    return int(state["step"]), float(state.get("elapsed", 0.0))


def _save(task: TokenizerTask, parts: _Parts, run: str, done: int, elapsed: float) -> None:
    stepped = parts.disc_stepped()
    model, opts = parts.checkpointed(stepped)
    state = {
        "step": done,
        "kind": task.kind,
        "elapsed": elapsed,
        "disc_stepped": stepped,
        "train_config": task.cfg.to_dict(),
        "model_config": task.mcfg.to_dict(),
    }
    ckpt.save_checkpoint(run, done, model, opts, state, _single_process(), keep=1, generators={"batches": parts.gen})


# ---------------------------------------------------------------------------------------------- the loop
def _step(task: TokenizerTask, parts: _Parts, step: int, lr: float) -> float | None:
    """One optimiser step of the tokenizer (then of the discriminator, once it is on); its loss, if it ran."""
    for g in parts.opt.param_groups:
        g["lr"] = lr
    disc = parts.disc if parts.disc is not None and step >= task.cfg.disc_start else None
    loss, disc_loss = task.forward(parts.model, disc, step, parts.gen)
    parts.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parts.params, 1.0)
    parts.opt.step()
    d_loss = None
    if disc is not None:
        d = disc_loss()
        parts.dopt.zero_grad(set_to_none=True)
        d.float().backward()
        parts.dopt.step()
        d_loss = d.item()
    if not torch.isfinite(loss):
        raise ConfigError(f"non-finite loss at step {step}; lower --lr")
    return d_loss


def train_tokenizer(task: TokenizerTask, out: str, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) ``task``'s tokenizer; write it into ``out`` and its run into out/run/<kind>. Returns the
    summary (also written to the run's summary.json)."""
    cfg = task.cfg
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = run_folder(out, task.kind)
    os.makedirs(run, exist_ok=True)
    task.load_data()
    torch.manual_seed(cfg.seed)
    parts = _Parts(task, torch.Generator().manual_seed(cfg.seed))
    start, elapsed = _resume(task, parts, run)
    if start == 0:
        task.begin(parts.model, parts.gen)
    log = MetricsLog(
        run, cfg.steps, start, True, name=LOG_FILE, desc=task.desc, progress=progress, postfix=task.postfix,
        keep_below=start + 1,
    )  # fmt: skip
    t_seg = time.perf_counter()
    try:
        rec = _loop(task, parts, run, start, log, lambda: elapsed + time.perf_counter() - t_seg)
    finally:
        log.close()
    return _finish(task, parts, out, run, rec, elapsed + time.perf_counter() - t_seg)


def _loop(task: TokenizerTask, parts: _Parts, run: str, start: int, log: MetricsLog, clock) -> dict[str, Any]:
    cfg = task.cfg
    set_train_mode(parts.model, parts.finetune)
    t_log, seen = time.perf_counter(), 0.0
    rec: dict[str, Any] = {}
    for step in range(start, cfg.steps):
        lr = lr_at(step, lr=cfg.lr, warmup=cfg.warmup, total=cfg.steps, min_lr_ratio=cfg.min_lr_ratio)
        d_loss = _step(task, parts, step, lr)
        if d_loss is not None:
            rec["d_loss"] = d_loss
        seen += task.units_per_step
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            rec.update(step=done, **task.log_values(lr), **{task.rate_key: seen / (now - t_log)})
            log.log(rec)
            t_log, seen = now, 0.0
        else:
            log.advance()
        if done % task.sample_every == 0 or done == cfg.steps:
            task.samples(parts.model, run, done)
            set_train_mode(parts.model, parts.finetune)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            _save(task, parts, run, done, clock())
    return rec


def _finish(task: TokenizerTask, parts: _Parts, out: str, run: str, rec: dict, elapsed: float) -> dict[str, Any]:
    parts.model.eval()
    if parts.finetune and code_path_changed(parts.model, parts.frozen):
        raise RuntimeError("decoder fine-tuning changed the encoder or codebook")  # a bug, never the user's input
    task.save(parts.model, out)
    summary = {
        "manifest": os.fspath(task.manifest),
        **task.summary_counts(),
        "steps": task.cfg.steps,
        "train_seconds": round(elapsed, 1),
        **task.summary_extra(),
        "threads": torch.get_num_threads(),
        "last": rec,
        "train_config": task.cfg.to_dict(),
        "model_config": task.mcfg.to_dict(),
    }
    write_json_atomic(os.path.join(run, SUMMARY_FILE), summary)
    return summary


# ---------------------------------------------------------------------------------------------- entry points
def train_image_vq(
    manifest: str, out: str, cfg, progress: bool = True, eval_images: int = 8, images: np.ndarray | None = None
) -> dict[str, Any]:
    """Train (or resume) an image tokenizer on the image segments of ``manifest`` (cfg: ImageVQTrainConfig).

    images: optionally the training pictures already decoded (uint8 [N, S, S, 3]); then ``manifest`` only names
    the data in the summary."""
    return train_tokenizer(ImageVQTask(manifest, cfg, progress, eval_images, images), out, progress)


def train_audio_codec(
    manifest: str, out: str, cfg, progress: bool = True, eval_clips: int = 4, clips: list[np.ndarray] | None = None
) -> dict[str, Any]:
    """Train (or resume) an audio codec on the audio segments of ``manifest`` (cfg: AudioCodecTrainConfig).

    clips: optionally the training waveforms already loaded (mono float32 at the model rate)."""
    return train_tokenizer(AudioCodecTask(manifest, cfg, progress, eval_clips, clips), out, progress)
