"""Audio tokenizer: a convolutional neural codec with residual vector quantisation.

Pipeline: waveform (any rate/channels; :func:`load_audio` converts to the model's mono rate with soxr and says so)
-> encoder (strided 1-D convolutions whose strides multiply to the hop, residual units with Snake activations)
-> ``ResidualVQ`` from vector-quantize-pytorch (nq levels x K codes, EMA updates, k-means initialisation,
dead-code replacement, optional quantizer dropout so that the first levels alone still decode)
-> codes [nq, frames] -> decoder (the mirror image: transposed convolutions, each followed by residual units at
its new rate, so the last units shape the waveform at the full sample rate) -> float waveform. The Snake
activations run as one fused C++ op (``chameleon_lite.ops.snake``); inference encoding finds each level's code
with one matrix product (:meth:`AudioCodecModel.encode_codes`).

One frame covers ``hop`` samples (tiny preset: 16 kHz, hop 320 -> 50 frames/s). A clip of T samples is padded
with zeros to ``ceil(T / hop)`` whole frames; decode returns ``frames * hop`` samples. Clips longer than
``chunk_seconds`` are encoded and decoded in chunks with ``context_frames`` of overlap on each side, so memory is
bounded and the result equals a whole-clip pass up to that context.

In the unified vocabulary the codes are flattened frame-major (f0l0 f0l1 ... f0l{nq-1} f1l0 ...), each level in
its own id range (ARCHITECTURE §3/§4); :meth:`AudioTokenizer.to_unified` / :meth:`AudioTokenizer.from_unified`.

Artifacts: ``audio_codec.safetensors`` (weights incl. codebooks) + ``audio_codec.json`` (config; its
``num_levels`` and ``codebook_size`` define the audio id range of the vocabulary).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chameleon_lite.bundle import AUDIO_CONFIG, AUDIO_WEIGHTS, read_weights, write_safetensors_atomic
from chameleon_lite.configs import config_from_dict
from chameleon_lite.data.audio_files import DEFAULT_MAX_SECONDS, AudioInfo, load_audio
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import read_json, write_json_atomic
from chameleon_lite.vocab import UnifiedVocab

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AudioCodecConfig:
    """Shape of the codec.

    strides: downsampling factor of each encoder stage (their product is the hop, samples per frame);
    channels: encoder width after each stage; dec_channels: decoder widths (mirror order: the last entry is
    next to the latent). latent_dim: width of the quantised latent. num_levels x codebook_size: the RVQ.
    quantizer_dropout: probability that a training step keeps only the first j levels (j uniform in
    [min_levels, nq)); decoding from fewer levels only works for a codec trained with it.
    """

    sample_rate: int = 16000
    strides: tuple[int, ...] = (8, 4, 10)
    channels: tuple[int, ...] = (32, 64, 128)
    dec_channels: tuple[int, ...] = (48, 96, 192)
    out_channels: int = 16
    res_blocks: int = 2
    latent_dim: int = 64
    num_levels: int = 4
    codebook_size: int = 1024
    codebook_dim: int = 64
    ema_decay: float = 0.99
    commitment_weight: float = 1.0
    dead_code_threshold: float = 2.0
    kmeans_iters: int = 10
    quantizer_dropout: float = 0.5
    min_levels: int = 1
    # decoder upsampling: "transposed" convolutions, or "nearest" repetition followed by a convolution (no fixed
    # checkerboard pattern at multiples of the stage rates, at about s times the cost of that stage)
    upsample: str = "transposed"
    # decoder residual units after each upsampling, at the higher rate (so the last ones shape the waveform at the
    # full sample rate and can draw harmonics above the previous stage's Nyquist frequency), or before it
    res_after_upsample: bool = True
    # "conv": the mirrored upsampling decoder above; "istft": blocks at the frame rate predict an STFT (log
    # magnitude and phase per bin, window istft_fft_mult * hop) that an inverse STFT turns into the waveform, so
    # harmonics are drawn as spectral lines rather than by full-rate convolutions (dec_channels, out_channels,
    # upsample and res_after_upsample then do not apply)
    decoder: str = "conv"
    istft_dim: int = 256
    istft_blocks: int = 6
    istft_fft_mult: int = 4
    # Bidirectional self-attention blocks at the frame rate in front of either decoder (0: none), over each decoded
    # chunk: every frame's output can draw on all the chunk's codes, so what one part of a clip shows clearly (a
    # timbre heard unambiguously in its low notes) can settle frames whose codes two sounds share. Their residual
    # branches start near zero, so blocks can be added to a trained decoder and fine-tuned with it. Each chunk is
    # decoded on its own (chunk_seconds), so a long clip's frames attend only within their chunk.
    decoder_attention: int = 0
    decoder_attention_heads: int = 4
    chunk_seconds: float = 30.0
    context_frames: int = 16
    max_seconds: float = DEFAULT_MAX_SECONDS

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        self.channels = tuple(int(c) for c in self.channels)
        self.dec_channels = tuple(int(c) for c in self.dec_channels)
        if not self.strides or any(s < 2 for s in self.strides):
            raise ConfigError(f"strides must be integers >= 2, got {self.strides}")
        if len(self.channels) != len(self.strides) or len(self.dec_channels) != len(self.strides):
            raise ConfigError(
                f"need one encoder and one decoder width per stride: strides {self.strides}, "
                f"channels {self.channels}, dec_channels {self.dec_channels}"
            )
        if any(c < 2 for c in self.channels + self.dec_channels) or self.out_channels < 1 or self.res_blocks < 0:
            raise ConfigError("channel widths must be >= 2 and res_blocks non-negative")
        if not 8000 <= self.sample_rate <= 96000:
            raise ConfigError(f"sample_rate must be in [8000, 96000] Hz, got {self.sample_rate}")
        if self.num_levels < 1 or self.codebook_size < 2 or self.codebook_dim < 1 or self.latent_dim < 1:
            raise ConfigError("num_levels >= 1, codebook_size >= 2, codebook_dim >= 1 and latent_dim >= 1 are required")
        if not 0.0 <= self.quantizer_dropout < 1.0 or not 1 <= self.min_levels <= self.num_levels:
            raise ConfigError(
                f"quantizer_dropout must be in [0, 1) and min_levels in [1, num_levels], "
                f"got {self.quantizer_dropout}, {self.min_levels}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.decoder not in ("conv", "istft"):
            raise ConfigError(f"decoder must be 'conv' or 'istft', got {self.decoder!r}")
        if self.istft_dim < 2 or self.istft_blocks < 0 or self.istft_fft_mult < 1:
            raise ConfigError("istft_dim >= 2, istft_blocks >= 0 and istft_fft_mult >= 1 are required")
        if (
            self.decoder_attention < 0
            or self.decoder_attention_heads < 1
            or self.latent_dim % self.decoder_attention_heads
        ):
            raise ConfigError(
                f"decoder_attention must be >= 0 and decoder_attention_heads >= 1 dividing latent_dim "
                f"{self.latent_dim}, got {self.decoder_attention}, {self.decoder_attention_heads}"
            )
        if self.upsample not in ("transposed", "nearest"):
            raise ConfigError(f"upsample must be 'transposed' or 'nearest', got {self.upsample!r}")
        if self.chunk_seconds * self.frame_rate < 1 or self.context_frames < 0 or self.max_seconds <= 0:
            raise ConfigError("chunk_seconds must hold a frame, context_frames >= 0, max_seconds > 0")

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("strides", "channels", "dec_channels"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> AudioCodecConfig:
        # codecs saved before the decoder order was a field had their residual units before each upsampling
        return config_from_dict(cls, d, source, "audio codec config", defaults={"res_after_upsample": False})


PRESETS: dict[str, AudioCodecConfig] = {
    # CPU: 16 kHz, 50 frames/s, 4 levels x 1024 codes (2 kbit/s).
    # Quantizer dropout on 3 steps in 4, keeping 2, 3 or all 4 levels: the first two levels alone carry the notes.
    "tiny": AudioCodecConfig(quantizer_dropout=0.75, min_levels=2),
    # Recorded speech at 8 kHz (telephone band, the rate of spoken-digit sets such as FSDD): 100 frames/s, 4 levels
    # x 512 codes (3.6 kbit/s); an iSTFT decoder (its blocks run at the frame rate, cheap on CPU) and no quantizer
    # dropout, so that all four levels are trained to decode together.
    "speech": AudioCodecConfig(
        sample_rate=8000,
        strides=(2, 4, 10),
        channels=(16, 32, 64),
        res_blocks=1,
        latent_dim=64,
        num_levels=4,
        codebook_size=512,
        codebook_dim=64,
        decoder="istft",
        istft_dim=192,
        istft_blocks=4,
        quantizer_dropout=0.0,
    ),
    # GPU users: 24 kHz, 75 frames/s, 8 levels x 1024 codes (6 kbit/s).
    "base": AudioCodecConfig(
        sample_rate=24000,
        strides=(2, 4, 5, 8),
        channels=(32, 64, 128, 256),
        dec_channels=(64, 128, 256, 512),
        out_channels=32,
        latent_dim=128,
        codebook_dim=128,
        num_levels=8,
        codebook_size=1024,
    ),
    "large": AudioCodecConfig(
        sample_rate=24000,
        strides=(2, 4, 5, 8),
        channels=(64, 128, 256, 512),
        dec_channels=(96, 192, 384, 768),
        out_channels=48,
        res_blocks=3,
        latent_dim=256,
        codebook_dim=128,
        num_levels=8,
        codebook_size=2048,
    ),
}


def preset(name: str, **overrides: Any) -> AudioCodecConfig:
    """A copy of preset ``name`` with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown audio codec preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------------- network
def fused_ops() -> bool:
    """Whether the codec runs its fused paths (the C++ Snake op, inference codes from one matrix product per
    level); CHAMELEON_LITE_CODEC_OPS=reference selects plain PyTorch and the quantizer's own forward instead."""
    return os.environ.get("CHAMELEON_LITE_CODEC_OPS", "fused") != "reference"


class Snake(nn.Module):
    """x + sin^2(a x) / a with a learned per-channel frequency a > 0 (kept positive through its logarithm, so
    1/a can not blow up): a periodic bias that suits pitched sound."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(1, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from chameleon_lite.ops.snake import snake, snake_reference  # lazy: loads the compiled C++ ops (seconds)

        return snake(x, self.log_alpha) if fused_ops() else snake_reference(x, self.log_alpha)


class ResUnit(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        hid = max(ch // 2, 1)
        self.net = nn.Sequential(
            Snake(ch), nn.Conv1d(ch, hid, 7, padding=3 * dilation, dilation=dilation), Snake(hid), nn.Conv1d(hid, ch, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _res_stack(ch: int, n: int) -> list[nn.Module]:
    return [ResUnit(ch, 3**i) for i in range(n)]


class Encoder(nn.Module):
    """[B, 1, T] (T a multiple of hop) -> [B, latent_dim, T / hop]."""

    def __init__(self, cfg: AudioCodecConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for s, c in zip(cfg.strides, cfg.channels):
            if c_in > 1:
                layers += [Snake(c_in)]
            layers += [nn.Conv1d(c_in, c, 2 * s, stride=s, padding=(s + 1) // 2)]  # exactly T / s outputs
            layers += _res_stack(c, cfg.res_blocks)
            c_in = c
        layers += [Snake(c_in), nn.Conv1d(c_in, cfg.latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """[B, latent_dim, frames] -> [B, 1, frames * hop]."""

    def __init__(self, cfg: AudioCodecConfig) -> None:
        super().__init__()
        chans = list(cfg.dec_channels)
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_dim, chans[-1], 7, padding=3)]
        for i in reversed(range(len(cfg.strides))):
            s, c_in = cfg.strides[i], chans[i]
            c_out = chans[i - 1] if i > 0 else cfg.out_channels
            if not cfg.res_after_upsample:
                layers += _res_stack(c_in, cfg.res_blocks)
            if cfg.upsample == "nearest":
                layers += [
                    Snake(c_in),
                    nn.Upsample(scale_factor=s, mode="nearest"),
                    nn.Conv1d(c_in, c_out, 7, padding=3),
                ]
            else:
                p = (s + 1) // 2  # exactly frames * s outputs
                layers += [
                    Snake(c_in),
                    nn.ConvTranspose1d(c_in, c_out, 2 * s, stride=s, padding=p, output_padding=2 * p - s),
                ]
            if cfg.res_after_upsample:
                layers += _res_stack(c_out, cfg.res_blocks)
        layers += [Snake(cfg.out_channels), nn.Conv1d(cfg.out_channels, 1, 7, padding=3)]
        self.context = frame_context(cfg)
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.context(z))


class FrameAttention(nn.Module):
    """One pre-norm transformer block over the frames of [B, C, F]: bidirectional multi-head self-attention, then
    an MLP (x4, GELU), each a residual branch with a learned per-channel scale that starts at ``scale``. The
    attention's input carries where each frame is through a depthwise convolution (kernel 7) of its neighbours, so
    the block needs no position table and takes any length."""

    def __init__(self, ch: int, heads: int, scale: float = 0.01) -> None:
        super().__init__()
        self.heads = heads
        self.pos = nn.Conv1d(ch, ch, 7, padding=3, groups=ch)
        self.norm1 = nn.LayerNorm(ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        self.norm2 = nn.LayerNorm(ch)
        self.fc1 = nn.Linear(ch, 4 * ch)
        self.fc2 = nn.Linear(4 * ch, ch)
        self.scale1 = nn.Parameter(torch.full((ch,), scale))
        self.scale2 = nn.Parameter(torch.full((ch,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, Fr = x.shape
        h = x.transpose(1, 2)  # [B, F, C]
        a = self.norm1(h + self.pos(x).transpose(1, 2))
        q, k, v = self.qkv(a).view(B, Fr, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Fr, C)
        h = h + self.proj(a) * self.scale1
        h = h + self.fc2(F.gelu(self.fc1(self.norm2(h)))) * self.scale2
        return h.transpose(1, 2)


def frame_context(cfg: AudioCodecConfig) -> nn.Sequential:
    """The ``decoder_attention`` blocks a decoder runs its latent through first (empty: the identity)."""
    return nn.Sequential(
        *[FrameAttention(cfg.latent_dim, cfg.decoder_attention_heads) for _ in range(cfg.decoder_attention)]
    )


class ConvNeXtBlock(nn.Module):
    """Depthwise convolution (kernel 7) -> LayerNorm over channels -> pointwise MLP (x3, GELU), residual with a
    learned per-channel scale: the frame-rate block of the STFT decoder."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.dw = nn.Conv1d(ch, ch, 7, padding=3, groups=ch)
        self.norm = nn.LayerNorm(ch)
        self.pw1 = nn.Linear(ch, 3 * ch)
        self.pw2 = nn.Linear(3 * ch, ch)
        self.scale = nn.Parameter(torch.full((ch,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dw(x).transpose(1, 2))
        h = self.pw2(F.gelu(self.pw1(h))) * self.scale
        return x + h.transpose(1, 2)


class ISTFTDecoder(nn.Module):
    """[B, latent_dim, frames] -> [B, 1, frames * hop]: frame-rate ConvNeXt blocks, then per frame the log
    magnitude and phase of every bin of an n_fft = istft_fft_mult * hop STFT, and the inverse STFT (Hann window,
    hop samples apart, centred)."""

    def __init__(self, cfg: AudioCodecConfig) -> None:
        super().__init__()
        self.hop = cfg.hop
        self.n_fft = cfg.istft_fft_mult * cfg.hop
        self.bins = self.n_fft // 2 + 1
        self.context = frame_context(cfg)
        self.inp = nn.Conv1d(cfg.latent_dim, cfg.istft_dim, 7, padding=3)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cfg.istft_dim) for _ in range(cfg.istft_blocks)])
        self.norm = nn.LayerNorm(cfg.istft_dim)
        self.head = nn.Linear(cfg.istft_dim, 2 * self.bins)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        frames = z.shape[-1]
        h = self.norm(self.blocks(self.inp(self.context(z))).transpose(1, 2))
        log_mag, phase = self.head(h).float().transpose(1, 2).chunk(2, dim=1)  # [B, bins, frames] each
        mag = log_mag.clamp(max=8.0).exp()
        spec = torch.polar(mag, phase)
        y = torch.istft(
            spec, self.n_fft, hop_length=self.hop, window=self.window, center=True, length=frames * self.hop
        )
        return y.unsqueeze(1)


class AudioCodecModel(nn.Module):
    """Encoder -> ResidualVQ -> decoder."""

    def __init__(self, cfg: AudioCodecConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ  # lazy: slow to import (seconds)

        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = ISTFTDecoder(cfg) if cfg.decoder == "istft" else Decoder(cfg)
        self.quantizer = ResidualVQ(
            dim=cfg.latent_dim,
            num_quantizers=cfg.num_levels,
            codebook_size=cfg.codebook_size,
            codebook_dim=cfg.codebook_dim,
            decay=cfg.ema_decay,
            commitment_weight=cfg.commitment_weight,
            kmeans_init=True,
            kmeans_iters=cfg.kmeans_iters,
            threshold_ema_dead_code=cfg.dead_code_threshold,
            quantize_dropout=cfg.quantizer_dropout > 0 and cfg.num_levels > 1,
            quantize_dropout_cutoff_index=cfg.min_levels - 1,
        )

    def quantize(
        self, z: torch.Tensor, dropout: bool = False, dropout_seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B, D, F] -> (quantised [B, D, F], codes [B, nq, F] (-1 for levels dropped), commitment loss).

        dropout: keep only the first j levels (j drawn from ``dropout_seed``); training mode only."""
        rvq = self.quantizer
        keep = rvq.quantize_dropout
        rvq.quantize_dropout = bool(keep and dropout)
        try:
            q, idx, loss = rvq(z.transpose(1, 2), rand_quantize_dropout_fixed_seed=dropout_seed)
        finally:
            rvq.quantize_dropout = keep
        return q.transpose(1, 2), idx.transpose(1, 2), loss.sum()

    def _plain_euclidean(self) -> bool:
        rvq = self.quantizer
        return (
            isinstance(rvq.project_in, nn.Identity)
            and not getattr(rvq, "implicit_neural_codebook", False)
            and all(
                layer.heads == 1
                and not layer.use_cosine_sim
                and not layer.has_projections
                and layer._codebook.embed.dim() == 3
                for layer in rvq.layers
            )
        )

    @torch.inference_mode()
    def encode_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Inference: latent z [B, D, F] -> codes [B, nq, F], the nearest code of each residual per level.

        One matrix product per level (argmax of 2 r.c - |c|^2) instead of the quantizer's full forward, which
        also forms the distances' square roots, the quantised output and the losses; any other codebook kind (cosine,
        projections) takes that forward."""
        if self.training or not fused_ops() or not self._plain_euclidean():
            return self.quantize(z)[1]
        B, D, Fr = z.shape
        residual = z.transpose(1, 2).reshape(-1, D).float()
        codes = []
        for layer in self.quantizer.layers:
            embed = layer._codebook.embed[0].float()  # [K, D]
            scores = torch.addmm(-(embed * embed).sum(-1), residual, embed.t(), alpha=2.0)
            idx = scores.argmax(-1)
            residual = residual - embed[idx]
            codes.append(idx)
        return torch.stack(codes, 0).view(-1, B, Fr).transpose(0, 1)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, j, F] (the first j <= nq levels) -> latent [B, D, F]."""
        j = codes.shape[1]
        idx = codes.transpose(1, 2)
        if j < self.cfg.num_levels:
            if not self.quantizer.quantize_dropout:
                raise DataError(
                    f"this codec was trained without quantizer dropout; it decodes all "
                    f"{self.cfg.num_levels} levels, got {j}"
                )
            if j < self.cfg.min_levels:
                raise DataError(
                    f"this codec was trained to decode from at least {self.cfg.min_levels} of its "
                    f"{self.cfg.num_levels} levels, got {j}"
                )
            idx = F.pad(idx, (0, self.cfg.num_levels - j), value=-1)
        return self.quantizer.get_output_from_indices(idx).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, dropout: bool = False, dropout_seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, 1, T] (T a multiple of hop) -> (reconstruction [B, 1, T], codes [B, nq, F], commitment loss)."""
        z = self.encoder(x)
        q, codes, loss = self.quantize(z, dropout=dropout, dropout_seed=dropout_seed)
        return self.decoder(q), codes, loss


# ---------------------------------------------------------------------------------------------- tokenizer
class AudioTokenizer:
    """Waveforms <-> codes [nq, frames] (int64 in [0, codebook_size)) with a trained :class:`AudioCodecModel`."""

    def __init__(self, model: AudioCodecModel, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.cfg = model.cfg
        self.device = torch.device(device)
        self.last_info: AudioInfo | None = None

    # ---- properties
    @property
    def num_levels(self) -> int:
        return self.cfg.num_levels

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop(self) -> int:
        return self.cfg.hop

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    def frames_for(self, samples: int) -> int:
        return -(-samples // self.hop)

    # ---- chunked passes
    def _chunks(self, frames: int) -> list[tuple[int, int, int, int]]:
        """(lo, hi, keep_lo, keep_hi) frame windows: run on [lo, hi), keep [keep_lo, keep_hi)."""
        step = max(1, int(self.cfg.chunk_seconds * self.frame_rate))
        ctx = self.cfg.context_frames
        out = []
        for a in range(0, frames, step):
            b = min(frames, a + step)
            out.append((max(0, a - ctx), min(frames, b + ctx), a, b))
        return out

    @torch.inference_mode()
    def encode_waveform(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mono float [T] at the model rate (already checked) -> codes int64 [nq, ceil(T / hop)]."""
        x = torch.as_tensor(np.asarray(wave, np.float32)).reshape(-1)
        frames = self.frames_for(len(x))
        x = F.pad(x, (0, frames * self.hop - len(x)))
        outs = []
        for lo, hi, a, b in self._chunks(frames):
            seg = x[lo * self.hop : hi * self.hop].to(self.device).view(1, 1, -1)
            codes = self.model.encode_codes(self.model.encoder(seg))[0]
            outs.append(codes[:, a - lo : b - lo].cpu())
        return torch.cat(outs, dim=1).long()

    def encode(self, value: Any, sample_rate: int | None = None) -> torch.Tensor:
        """A path or waveform (see :func:`load_audio`) -> codes int64 [nq, frames]; ``last_info`` says what
        conversion the input needed."""
        wave, self.last_info = load_audio(value, self.sample_rate, sample_rate, self.cfg.max_seconds)
        return self.encode_waveform(wave)

    def check_codes(self, codes: Any) -> torch.Tensor:
        """Validate codes for decode: integer [j, frames] with 1 <= j <= nq levels, values in [0, K)."""
        t = torch.as_tensor(codes)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise DataError(f"audio codes must be integers, got dtype {t.dtype}")
        if t.dim() != 2 or not 1 <= t.shape[0] <= self.num_levels:
            raise DataError(f"audio codes must have shape [levels <= {self.num_levels}, frames], got {tuple(t.shape)}")
        bad = (t < 0) | (t >= self.codebook_size)
        if bool(bad.any()):
            raise DataError(
                f"audio code {int(t[bad][0])} is outside [0, {self.codebook_size}) "
                f"({int(bad.sum())} code(s) out of range)"
            )
        return t.long()

    @torch.inference_mode()
    def decode(self, codes: Any) -> np.ndarray:
        """codes [j, frames] (all nq levels, or the first j with a dropout-trained codec) -> float32 [frames * hop]."""
        t = self.check_codes(codes)
        frames = t.shape[1]
        if frames == 0:
            return np.zeros(0, np.float32)
        outs = []
        for lo, hi, a, b in self._chunks(frames):
            z = self.model.codes_to_latent(t[None, :, lo:hi].to(self.device))
            y = self.model.decoder(z)[0, 0]
            outs.append(y[(a - lo) * self.hop : (b - lo) * self.hop].float().cpu())
        return torch.cat(outs).numpy()

    def reconstruct(self, value: Any, sample_rate: int | None = None, levels: int | None = None) -> np.ndarray:
        """encode then decode (optionally from the first ``levels`` levels only), trimmed to the input length."""
        wave, self.last_info = load_audio(value, self.sample_rate, sample_rate, self.cfg.max_seconds)
        codes = self.encode_waveform(wave)
        return self.decode(codes[:levels] if levels else codes)[: len(wave)]

    # ---- unified ids
    def _check_vocab(self, vocab: UnifiedVocab) -> None:
        if vocab.audio_levels != self.num_levels or vocab.audio_codebook != self.codebook_size:
            raise ConfigError(
                f"vocabulary has {vocab.audio_levels} audio levels x {vocab.audio_codebook} codes but this "
                f"codec has {self.num_levels} x {self.codebook_size}"
            )

    def to_unified(self, codes: Any, vocab: UnifiedVocab) -> torch.Tensor:
        """codes [nq, frames] -> frame-major unified ids [frames * nq]."""
        self._check_vocab(vocab)
        t = self.check_codes(codes)
        if t.shape[0] != self.num_levels:
            raise DataError(f"unified audio ids need all {self.num_levels} levels, got {t.shape[0]}")
        return vocab.audio_to_unified(t)

    def from_unified(self, ids: Any, vocab: UnifiedVocab) -> torch.Tensor:
        """frame-major unified ids [frames * nq] -> codes [nq, frames]; whole frames and level order are checked."""
        self._check_vocab(vocab)
        return vocab.unified_to_audio(ids)

    # ---- files
    def save(self, path: str | os.PathLike) -> str:
        save_model(self.model, os.fspath(path))
        return os.fspath(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", state: dict[str, torch.Tensor] | None = None
    ) -> AudioTokenizer:
        """Load from a folder holding audio_codec.safetensors + audio_codec.json (``state``: its weights, already
        read)."""
        return cls(load_model(os.fspath(path), state), device=device)


def save_model(model: AudioCodecModel, folder: str) -> None:
    """Write audio_codec.safetensors + audio_codec.json into ``folder`` (each atomically)."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors_atomic(os.path.join(folder, AUDIO_WEIGHTS), state, {"format": "chameleon_lite.audio_codec"})
    write_json_atomic(os.path.join(folder, AUDIO_CONFIG), model.cfg.to_dict())


def load_model(folder: str, state: dict[str, torch.Tensor] | None = None) -> AudioCodecModel:
    """The audio codec of ``folder`` (``state``: the tensors of its weights file when already read)."""
    cpath, wpath = os.path.join(folder, AUDIO_CONFIG), os.path.join(folder, AUDIO_WEIGHTS)
    cfg = AudioCodecConfig.from_dict(read_json(cpath, "audio codec config"), cpath)
    if state is None:
        state = read_weights(wpath, "audio codec")
    model = AudioCodecModel(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ConfigError(f"{wpath}: weights do not match {cpath} ({str(e).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise ConfigError(
            f"{wpath}: weights do not match {cpath} (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ConfigError(f"{wpath}: tensor {k} holds NaN/inf")
    return model.eval()
