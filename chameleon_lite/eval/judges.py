"""Judges of real digits: small learned classifiers that read what the tokenizers' decoders produce.

* ``written``: a CNN over 28x28 grayscale pictures (MNIST-style, white digit on black);
* ``spoken``: a CNN over the log-mel spectrogram of one second of 8 kHz audio (FSDD-style spoken digits).

They are learned judges, trained on the training part of :mod:`chameleon_lite.data.splits` only
(:mod:`chameleon_lite.eval.judge_train`); each ships as ``{kind}_digits.safetensors`` (weights) + ``.json``
(config, the split it was trained on, its accuracy on the held-out part) in ``chameleon_lite/assets/judges``.
A judge's reading is evidence with the error rate stated in its JSON, not ground truth.

    judge = load_judge("written")
    labels, probs = judge.predict(images)               # uint8 [B, H, W] / [B, H, W, 3], paths, PIL images
    labels, probs = load_judge("spoken").predict(clips, sample_rate=16000)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from chameleon_lite.configs import config_from_dict
from chameleon_lite.data.audio_files import load_audio, mel_filterbank
from chameleon_lite.data.image_files import load_images
from chameleon_lite.data.media import is_tensor
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import read_json

KINDS = ("written", "spoken")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "judges")
RECORD_FORMAT = "chameleon-lite digit judge v1"
LOG_FLOOR = math.log(1e-5)  # normalised log-mel values are floored here (50 dB); silent frames get this value
ACTIVE = math.log(1e4)  # a frame is active when its loudest band is within 40 dB of the clip's loudest


@dataclasses.dataclass
class JudgeConfig:
    """A judge's front end and CNN. stages: conv widths, one tuple per stage; 2x2 max-pooling between stages,
    global average pooling after the last, then one linear layer to ``classes``. Front end: ``image_size``
    for written judges; ``sample_rate``, ``seconds``, ``n_fft``, ``hop``, ``n_mels`` for spoken ones."""

    kind: str = "written"
    stages: tuple[tuple[int, ...], ...] = ((16,), (32, 32), (64, 64))
    classes: int = 10
    dropout: float = 0.1
    image_size: int = 28
    sample_rate: int = 8000
    seconds: float = 1.0
    n_fft: int = 256
    hop: int = 80
    n_mels: int = 40

    def __post_init__(self) -> None:
        self.stages = tuple(tuple(s) for s in self.stages)  # JSON gives lists
        if self.kind not in KINDS:
            raise ConfigError(f"judge kind must be one of {KINDS}, got {self.kind!r}")
        if not self.stages or any(not s or any(int(c) < 1 for c in s) for s in self.stages):
            raise ConfigError(f"judge stages must be non-empty lists of positive widths, got {self.stages}")
        if self.classes < 2 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"judge needs classes >= 2 and dropout in [0, 1), got {self.classes}, {self.dropout}")
        if self.image_size < 8 or self.sample_rate < 1000 or self.seconds <= 0 or self.n_mels < 4:
            raise ConfigError("judge front end: image_size >= 8, sample_rate >= 1000, seconds > 0, n_mels >= 4")
        if not 0 < self.hop <= self.n_fft or self.n_fft > self.samples:
            raise ConfigError(f"judge front end: need 0 < hop <= n_fft <= samples, got {self.hop}, {self.n_fft}")

    @property
    def samples(self) -> int:
        return round(self.sample_rate * self.seconds)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        return d


PRESETS = {
    "written": JudgeConfig(kind="written", stages=((16,), (32, 32), (64, 64))),
    "spoken": JudgeConfig(kind="spoken", stages=((16,), (32,), (64,), (96, 96)), dropout=0.2),
}


# ---------------------------------------------------------------------------------------------- front ends
def log_mel(
    waves: torch.Tensor, fb: torch.Tensor, n_fft: int, hop: int, eq: torch.Tensor | None = None
) -> torch.Tensor:
    """waves: float32 [B, T] -> log-mel float32 [B, n_mels, T // hop + 1], channel-normalised: each band's mean
    over the clip's active frames (within ACTIVE of its loudest bin) is subtracted, and silent frames are set to
    LOG_FLOOR. A clip's level and its microphone's response (a tilt or bump per band: speakers recorded with
    different gear, a decoder's colouring) do not change what the judge sees. eq: float32 [B, n_mels] added to
    the log-mel before normalising (training augmentation: a random channel)."""
    spec = torch.stft(waves, n_fft, hop, window=torch.hann_window(n_fft, device=waves.device), return_complex=True)
    x = torch.log(fb @ spec.abs().square() + 1e-10)
    if eq is not None:
        x = x + eq[:, :, None]
    x = x - x.amax(dim=(1, 2), keepdim=True)
    active = (x.amax(dim=1, keepdim=True) > -ACTIVE).float()  # [B, 1, F]
    mean = (x * active).sum(dim=2, keepdim=True) / active.sum(dim=2, keepdim=True).clamp_min(1.0)
    return torch.where(active > 0, (x - mean).clamp_min(LOG_FLOOR), LOG_FLOOR)


def place_clip(wave: np.ndarray, length: int, offset: int | None = None) -> np.ndarray:
    """A mono clip [T] -> float32 [length]: a shorter clip is padded with silence, at ``offset`` (default centred);
    a longer one is cut to the ``length`` samples that hold the most energy."""
    wave = np.asarray(wave, np.float32)
    if len(wave) >= length:
        energy = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
        start = int(np.argmax(energy[length:] - energy[:-length]))
        return wave[start : start + length].copy()
    out = np.zeros(length, np.float32)
    off = (length - len(wave)) // 2 if offset is None else offset
    out[off : off + len(wave)] = wave
    return out


def _gray_batch(images: Any) -> Any:
    """A 3-D uint8 array or tensor whose last axis is not 1, 3 or 4 is a batch of grayscale pictures [B, H, W]."""
    if is_tensor(images):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] not in (1, 3, 4):
        return images[..., None]
    return images


def _clip_list(clips: Any) -> list[Any]:
    """Clips as a list: a path or a 1-D waveform is one clip; a 2-D array/tensor [B, T] is B clips."""
    if is_tensor(clips):
        clips = clips.detach().cpu().float().numpy()
    if isinstance(clips, (str, os.PathLike)) or (isinstance(clips, np.ndarray) and clips.ndim == 1):
        return [clips]
    if isinstance(clips, np.ndarray) and clips.ndim == 2:
        return list(clips)
    if isinstance(clips, Sequence) and not isinstance(clips, (bytes, str)):
        if not clips:
            raise DataError("no clips given")
        return list(clips)
    raise DataError(
        f"expected clip paths or waveforms ([T], a list of [T], or [B, T]), got {type(clips).__name__}"
        + (f" of shape {clips.shape}" if isinstance(clips, np.ndarray) else "")
    )


# ---------------------------------------------------------------------------------------------- the network
class DigitCNN(nn.Module):
    """x: float32 [B, 1, H, W] (a picture or a log-mel spectrogram) -> logits float32 [B, classes]."""

    def __init__(self, cfg: JudgeConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(1)]  # the input's scale is learned, not hand-set per modality
        width = 1
        for i, stage in enumerate(cfg.stages):
            if i:
                layers.append(nn.MaxPool2d(2))
            for c in stage:
                layers += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                width = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x).mean(dim=(2, 3))))


class Judge:
    """A digit judge: its config, network (in eval mode) and record (the JSON shipped beside the weights)."""

    def __init__(self, config: JudgeConfig, model: DigitCNN | None = None, record: dict[str, Any] | None = None):
        self.config = config
        self.model = (model or DigitCNN(config)).eval()
        self.record = record or {}
        self._fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels) if config.kind == "spoken" else None

    @property
    def kind(self) -> str:
        return self.config.kind

    def images_input(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 [B, S, S] grayscale at the judge's size -> the network's input float32 [B, 1, S, S]."""
        return torch.from_numpy(np.ascontiguousarray(pixels, np.float32) / 255.0)[:, None]

    def waves_input(self, waves: np.ndarray, eq: torch.Tensor | None = None) -> torch.Tensor:
        """float32 [B, samples] at the judge's rate -> the network's input, log-mel float32 [B, 1, n_mels, F]
        (eq: see :func:`log_mel`)."""
        x = torch.from_numpy(np.ascontiguousarray(waves, np.float32))
        return log_mel(x, self._fb, self.config.n_fft, self.config.hop, eq)[:, None]

    def prepare(self, inputs: Any, sample_rate: int | None = None) -> np.ndarray:
        """What a user gives -> the judge's raw input: uint8 [B, S, S] grayscale pictures (written) or float32
        [B, samples] clips at the judge's rate, each padded or cut to ``seconds`` (spoken).

        written: paths, PIL images, uint8 arrays/tensors [H, W], [H, W, 1|3|4], [B, H, W, 1|3|4], [B, H, W] (a
        3-D array whose last axis is not 1, 3 or 4), or a list of these; any size (shorter side resized, centre
        crop). spoken: paths, waveforms [T] (float in [-1, 1] or integer PCM) at ``sample_rate`` (default: the
        judge's), a list of them, or [B, T]; resampled to the judge's rate. DataError for anything else."""
        cfg = self.config
        if cfg.kind == "written":
            if sample_rate is not None:
                raise ConfigError("sample_rate is for spoken judges; a written judge reads pictures")
            rgb = load_images(_gray_batch(inputs), cfg.image_size).astype(np.float32)
            return np.rint(rgb @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        waves = []
        for i, clip in enumerate(_clip_list(inputs)):
            try:
                mono, _ = load_audio(clip, cfg.sample_rate, sample_rate)
            except DataError as e:
                raise DataError(f"clip #{i}: {e}" if not isinstance(clip, (str, os.PathLike)) else str(e)) from None
            waves.append(place_clip(mono, cfg.samples))
        return np.stack(waves)

    def network_input(self, raw: np.ndarray) -> torch.Tensor:
        return self.images_input(raw) if self.kind == "written" else self.waves_input(raw)

    @torch.no_grad()
    def predict(self, inputs: Any, sample_rate: int | None = None, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Read digits: (labels int64 [B], probabilities float32 [B, classes]). Inputs as :meth:`prepare` takes."""
        raw = self.prepare(inputs, sample_rate)
        probs = [
            F.softmax(self.model(self.network_input(raw[i : i + batch])), dim=-1) for i in range(0, len(raw), batch)
        ]
        p = torch.cat(probs).numpy().astype(np.float32)
        return p.argmax(axis=1).astype(np.int64), p


# ---------------------------------------------------------------------------------------------- files
def judge_paths(folder: str, kind: str) -> tuple[str, str]:
    """(weights, record) of a judge in ``folder``: ``{kind}_digits.safetensors`` and ``{kind}_digits.json``."""
    base = os.path.join(folder, f"{kind}_digits")
    return base + ".safetensors", base + ".json"


def load_judge(kind: str, folder: str | None = None) -> Judge:
    """The ``kind`` ("written" or "spoken") judge from ``folder`` (default: the judges the package ships).
    ConfigError naming the file for a missing, damaged or mismatched judge."""
    if kind not in KINDS:
        raise ConfigError(f"judge kind must be one of {KINDS}, got {kind!r}")
    weights, meta = judge_paths(folder or ASSETS, kind)
    record = read_json(meta, f"{kind} judge record")
    if record.get("format") != RECORD_FORMAT:
        raise ConfigError(f"{meta}: not a digit judge record (format {record.get('format')!r}, want {RECORD_FORMAT})")
    cfg = config_from_dict(JudgeConfig, record.get("config"), meta, "judge config")
    if cfg.kind != kind:
        raise ConfigError(f"{meta}: holds a {cfg.kind} judge, asked for {kind}")
    if not os.path.isfile(weights):
        raise ConfigError(f"{weights}: {kind} judge weights not found")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{weights}: not readable safetensors ({e})") from None
    model = DigitCNN(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{weights}: weights do not fit the config in {meta} ({str(e).splitlines()[0]})") from None
    return Judge(cfg, model, record)
