"""Pretraining configuration: a validated dataclass, JSON files under train/configs/, and ``--key=value`` overrides
(parsed by chameleon_lite.configs, as every trainer's are)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from chameleon_lite.configs import config_from_dict, parse_overrides
from chameleon_lite.errors import ConfigError
from chameleon_lite.model.config import PRESETS, ModelConfig
from chameleon_lite.train.schedule import SCHEDULES

DTYPES = ("auto", "fp32", "bf16")
PARALLEL = ("fsdp", "ddp", "none")
OPTIMIZERS = ("adamw", "muon")


MAX_SEQ_LEN = 1 << 17


@dataclasses.dataclass
class PretrainConfig:
    """Everything a pretraining run needs besides the data itself.

    Batches are counted in rows of ``seq_len`` tokens: ``batch_size`` is the *global* number of rows of one
    micro-step (split evenly over ranks), ``grad_accum`` micro-steps make one optimiser step, so a step sees
    ``batch_size * grad_accum * seq_len`` tokens whatever the world size.
    """

    model: str = "tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    data: str = ""
    val_data: str = ""
    out: str = ""
    tokenizers: str = ""
    init_from: str = ""
    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    steps: int = 1000
    stop_after: int = 0
    lr: float = 1e-3
    # "adamw", or "muon": Muon for the transformer blocks' matrices, AdamW for the rest (train/optim.py)
    optimizer: str = "adamw"
    muon_momentum: float = 0.95
    min_lr_ratio: float = 0.1
    # "cosine" (to min_lr_ratio over the steps after the warm-up) or "wsd": the peak rate held, then a linear decay
    # to min_lr_ratio over the last decay_frac of the steps (train/schedule.py)
    schedule: str = "cosine"
    decay_frac: float = 0.3
    warmup: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    z_loss: float = 1e-5
    dtype: str = "auto"
    parallel: str = "fsdp"
    activation_checkpoint: bool = False
    compile: bool = False
    ckpt_every: int = 100
    keep_ckpts: int = 3
    val_every: int = 50
    val_batches: int = 4
    log_every: int = 1
    seed: int = 0
    max_nonfinite: int = 5
    peak_tflops: float = 0.0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.model not in PRESETS:
            raise ConfigError(f"train config: unknown model preset {self.model!r}; known: {', '.join(PRESETS)}")
        if not isinstance(self.model_overrides, dict):
            raise ConfigError("train config: model_overrides must be a JSON object")
        for name in (
            "seq_len",
            "batch_size",
            "grad_accum",
            "steps",
            "ckpt_every",
            "keep_ckpts",
            "val_every",
            "log_every",
            "max_nonfinite",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"train config: {name} must be a positive int, got {v!r}")
        if self.seq_len > MAX_SEQ_LEN:  # a row is packed and attended whole: past this it only exhausts memory
            raise ConfigError(f"train config: seq_len must be at most {MAX_SEQ_LEN}, got {self.seq_len}")
        for name in ("stop_after", "warmup", "val_batches", "seed", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"train config: {name} must be a non-negative int, got {v!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(
                f"train config: need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, min_lr_ratio={self.min_lr_ratio}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train config: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.decay_frac <= 1:
            raise ConfigError(f"train config: decay_frac must lie in (0, 1], got {self.decay_frac}")
        for name in ("weight_decay", "grad_clip", "z_loss", "peak_tflops"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train config: {name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"train config: betas must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"train config: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train config: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"train config: muon_momentum must lie in [0, 1), got {self.muon_momentum}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"train config: parallel must be one of {PARALLEL}, got {self.parallel!r}")

    def model_config(
        self, vocab_size: int, vocab_hash: str, codes_hash: str = "", starts: tuple[int, int] | None = None
    ) -> ModelConfig:
        """The preset with the overrides and the data's vocabulary (and tokenizers' codes hash); max_seq_len covers
        seq_len. ``starts``: the vocabulary's first image and audio ids, which an untied model routes by."""
        d = {
            **PRESETS[self.model],
            **self.model_overrides,
            "vocab_size": vocab_size,
            "vocab_hash": vocab_hash,
            "codes_hash": codes_hash,
        }
        if starts is not None and d.get("untied"):
            d["image_start"], d["audio_start"] = starts
        d["max_seq_len"] = max(int(d.get("max_seq_len", 0)), self.seq_len)
        return ModelConfig.from_dict(d, source=f"model preset {self.model!r} with overrides")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> PretrainConfig:
        return config_from_dict(cls, d, source, "training option")


def read_config_file(name_or_path: str, configs_dir: str, known: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """(path, JSON object) of ``configs_dir/<name>.json`` or of a path to a JSON file; a name in ``known`` (a model
    preset) without such a file is ``{"model": name}``."""
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(configs_dir, f"{name_or_path}.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: training config is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: training config must be a JSON object")
        return path, d
    if name_or_path in known:
        return path, {"model": name_or_path}
    names = sorted(f[:-5] for f in os.listdir(configs_dir) if f.endswith(".json")) if os.path.isdir(configs_dir) else []
    raise ConfigError(
        f"training config {name_or_path!r} not found (looked for {path}; known: {', '.join(names) or 'none'})"
    )


def load_config(
    name_or_path: str, configs_dir: str, overrides: Sequence[str] = (), base: dict[str, Any] | None = None
) -> PretrainConfig:
    """Read ``configs_dir/<name>.json`` (or a path to a JSON file), apply ``base`` then ``--key=value`` overrides.

    ``--model.<field>=value`` overrides a field of the model preset.
    """
    path, d = read_config_file(name_or_path, configs_dir, PRESETS)
    d = {**d, **(base or {})}
    parsed = parse_overrides(overrides, PretrainConfig, {"model": ModelConfig})
    d["model_overrides"] = {**d.get("model_overrides", {}), **parsed.pop("model", {})}
    return PretrainConfig.from_dict({**d, **parsed}, source=path)
