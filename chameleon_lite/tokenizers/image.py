"""Image tokenizer: a convolutional VQ autoencoder that maps pictures to a grid of codebook ids and back.

Pipeline: RGB uint8 [B, H, W, 3] -> [-1, 1] (grayscale models: one channel, the mean of R, G and B) -> encoder
(pixel-unshuffle stem, strided convs, residual blocks; downsampling factor f) -> quantizer from
vector-quantize-pytorch (``VectorQuantize`` with EMA codebook updates, cosine-similarity (l2-normalised) codes, k-means initialisation and dead-code replacement; or ``FSQ``) ->
codes [B, H/f, W/f] in raster order -> decoder (mirror image, pixel-shuffle head) -> uint8 [B, H, W, 3] (a
grayscale model's one channel repeated: it cannot draw colour a grey picture does not have).

Input preparation (:func:`load_images`): paths, PIL images, uint8 arrays/tensors ([H, W], [H, W, 1|3|4] or
[B, H, W, 3]) are converted to 8-bit RGB (every PIL mode scaled to 8 bits or refused by name, alpha composited
over black, EXIF orientation applied to files: :func:`_pil_to_rgb`, :func:`read_image_file`), the shorter side
is resized to ``image_size`` (bicubic with antialiasing; no-op when the size already fits) and the centre
``image_size`` x ``image_size`` square is cropped. Files larger than ``max_pixels`` are refused before decoding.

Artifacts: ``image_vq.safetensors`` (weights incl. the codebook) + ``image_vq.json`` (the config, whose
``codebook_size`` the unified vocabulary reads).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chameleon_lite.bundle import IMAGE_CONFIG, IMAGE_WEIGHTS, read_weights, write_safetensors_atomic
from chameleon_lite.configs import config_from_dict
from chameleon_lite.data.image_files import DEFAULT_MAX_PIXELS, load_images
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import read_json, write_json_atomic
from chameleon_lite.hardware import fast_cpu_dtype
from chameleon_lite.vocab import UnifiedVocab

QUANTIZERS = ("vq", "fsq")
NORMS = ("channel", "group")
PADDINGS = ("background", "zeros")
# what configs written before a field existed meant by its absence
LEGACY_DEFAULTS = {"norm": "group", "padding": "zeros"}
# 4096 x 4096 RGB is ~50 MB decoded; anything bigger than this bound is refused from its header alone.


@dataclasses.dataclass
class ImageVQConfig:
    """Shape and training-relevant settings of the image VQ autoencoder.

    image_size: side of the square pictures the model sees; factor: downsampling f (grid = image_size / f).
    channels: encoder widths per resolution, from the stem (image_size / 2) down to the grid; the number of
    entries fixes f = 2 ** len(channels). codebook_size: K; codebook_dim: dimension of each code vector.
    quantizer: "vq" (VectorQuantize) or "fsq" (then ``fsq_levels`` multiply to ``codebook_size``).
    norm: "channel" normalises each position over its channels (local: a patch's code depends only on the pixels
    in its receptive field) or "group" (GroupNorm over the whole picture: a code also depends on the rest of it).
    padding: "background" pads every encoder feature map with the value a plain black picture has there (as if
    the picture went on in black, so a shape reads the same next to the border as anywhere else on a black
    background; the decoder replicates its edges) or "zeros" (zero padding everywhere: no background assumed).
    in_channels: 3 (RGB) or 1 (grayscale: the model reads the mean of R, G and B and decodes grey).
    """

    image_size: int = 48  # the procedural corpus default: each 3x3 grid cell is 2x2 patches of factor 8
    factor: int = 8
    channels: tuple[int, ...] = (32, 64, 128)
    res_blocks: int = 1
    dec_channels: tuple[int, ...] = (32, 64, 128)
    codebook_size: int = 512
    codebook_dim: int = 32
    quantizer: str = "vq"
    norm: str = "channel"
    padding: str = "background"
    fsq_levels: tuple[int, ...] = (8, 8, 8)
    ema_decay: float = 0.95
    commitment_weight: float = 0.25
    # EMA count per batch below which a code is re-seeded from the batch. Keep it well under the mean count
    # (tokens per batch / K, about 2 for the tiny preset at batch 32): near the mean, half the codebook would be
    # re-seeded every step and the decoder would chase moving codes.
    dead_code_threshold: float = 0.1
    kmeans_iters: int = 10
    max_pixels: int = DEFAULT_MAX_PIXELS
    in_channels: int = 3

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.dec_channels = tuple(int(c) for c in self.dec_channels)
        self.fsq_levels = tuple(int(c) for c in self.fsq_levels)
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.padding == "background" and self.norm != "channel":
            raise ConfigError(
                "padding 'background' needs norm 'channel': a picture-wide norm gives the black picture "
                "that defines the background other statistics than the real one"
            )
        if self.factor < 2 or self.factor & (self.factor - 1):
            raise ConfigError(f"factor must be a power of two >= 2, got {self.factor}")
        if 2 ** len(self.channels) != self.factor or len(self.dec_channels) != len(self.channels):
            raise ConfigError(
                f"factor {self.factor} needs {int(math.log2(self.factor))} encoder and decoder widths, "
                f"got {self.channels} and {self.dec_channels}"
            )
        if any(c < 1 for c in self.channels + self.dec_channels) or self.res_blocks < 0:
            raise ConfigError("channel widths must be positive and res_blocks non-negative")
        if self.image_size < self.factor or self.image_size % self.factor:
            raise ConfigError(f"image_size {self.image_size} must be a positive multiple of factor {self.factor}")
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ConfigError(
                f"codebook_size must be >= 2 and codebook_dim >= 1, got {self.codebook_size}, {self.codebook_dim}"
            )
        if self.quantizer == "fsq" and math.prod(self.fsq_levels) != self.codebook_size:
            raise ConfigError(
                f"fsq_levels {self.fsq_levels} give {math.prod(self.fsq_levels)} codes, "
                f"not codebook_size {self.codebook_size}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.max_pixels < self.image_size**2:
            raise ConfigError(f"max_pixels {self.max_pixels} is below one {self.image_size}x{self.image_size} picture")

    @property
    def grid(self) -> tuple[int, int]:
        n = self.image_size // self.factor
        return n, n

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("channels", "dec_channels", "fsq_levels"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ImageVQConfig:
        return config_from_dict(cls, d, source, "image tokenizer config", defaults=LEGACY_DEFAULTS)


PRESETS: dict[str, ImageVQConfig] = {
    "tiny": ImageVQConfig(),
    "base": ImageVQConfig(
        image_size=256,
        factor=16,
        channels=(64, 128, 256, 256),
        dec_channels=(64, 128, 256, 256),
        codebook_size=8192,
        codebook_dim=32,
    ),
    "chameleon": ImageVQConfig(
        image_size=512,
        factor=16,
        channels=(64, 128, 256, 512),
        dec_channels=(64, 128, 256, 512),
        codebook_size=8192,
        codebook_dim=32,
    ),
    # real small grayscale pictures (MNIST-like digits, 28x28): 7x7 = 49 tokens of 512 codes, one channel (no false
    # colour), zero padding (no background colour assumed)
    "digits": ImageVQConfig(
        image_size=28,
        factor=4,
        channels=(32, 64),
        dec_channels=(32, 64),
        res_blocks=2,
        codebook_size=512,
        codebook_dim=16,
        padding="zeros",
        in_channels=1,
    ),
}


def preset(name: str, **overrides: Any) -> ImageVQConfig:
    """A copy of preset ``name`` with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown image tokenizer preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------------- network
class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position of [B, C, H, W] (no statistics across positions)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(cfg: ImageVQConfig, ch: int) -> nn.Module:
    return ChannelNorm(ch) if cfg.norm == "channel" else nn.GroupNorm(min(32, ch // 4) or 1, ch)


class PadConv2d(nn.Conv2d):
    """A k x k convolution padded by (k - 1) // 2 on every side: with zeros, by replicating the edge (``mode``), or,
    when ``fill`` ([1, C, 1, 1]) is given, with that value (the map itself is left untouched)."""

    def __init__(self, a: int, b: int, k: int, stride: int = 1, mode: str = "zeros") -> None:
        super().__init__(a, b, k, stride=stride, padding=0)
        self.pad, self.mode = (k - 1) // 2, mode

    def forward(self, x: torch.Tensor, fill: torch.Tensor | None = None, replicate: bool = False) -> torch.Tensor:
        p = (self.pad,) * 4
        if self.pad and fill is not None:
            border = F.pad(x.new_zeros((1, 1) + x.shape[2:]), p, value=1.0)  # 1 on the padding, 0 inside
            x = F.pad(x, p) + fill.to(x.dtype) * border
        elif self.pad and (replicate or self.mode == "replicate"):
            x = F.pad(x, p, mode="replicate")
        elif self.pad:
            x = F.pad(x, p)
        return F.conv2d(x, self.weight, self.bias, self.stride)


# conv(c, x): how a block runs its PadConv2d c on x (the encoder's background padding passes its fills this way)
ConvRunner = Callable[[PadConv2d, torch.Tensor], torch.Tensor]


def _plain(c: PadConv2d, x: torch.Tensor) -> torch.Tensor:
    return c(x)


def _conv(cfg: ImageVQConfig, a: int, b: int, k: int, stride: int = 1, decoder: bool = False) -> PadConv2d:
    return PadConv2d(a, b, k, stride, "replicate" if decoder and cfg.padding == "background" else "zeros")


class ResBlock(nn.Module):
    def __init__(self, cfg: ImageVQConfig, ch: int, decoder: bool = False) -> None:
        super().__init__()
        self.norm = _norm(cfg, ch)
        self.conv1 = _conv(cfg, ch, ch, 3, decoder=decoder)
        self.conv2 = _conv(cfg, ch, ch, 3, decoder=decoder)

    def forward(self, x: torch.Tensor, conv: ConvRunner = _plain) -> torch.Tensor:
        return x + conv(self.conv2, F.silu(conv(self.conv1, F.silu(self.norm(x)))))


class Encoder(nn.Module):
    """[B, C, H, W] in [-1, 1] (C = in_channels) -> [B, D, H/f, W/f]. The stem folds 2x2 pixels into channels, so
    no conv runs at full resolution."""

    def __init__(self, cfg: ImageVQConfig) -> None:
        super().__init__()
        ch = cfg.channels
        layers: list[nn.Module] = [nn.PixelUnshuffle(2), _conv(cfg, 4 * cfg.in_channels, ch[0], 3)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.SiLU(), _conv(cfg, a, b, 4, stride=2)]
        layers += [ResBlock(cfg, ch[-1]) for _ in range(cfg.res_blocks)]
        layers += [_norm(cfg, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.codebook_dim, 1)]
        self.net = nn.Sequential(*layers)
        self.factor, self.background = cfg.factor, cfg.padding == "background"

    def _run(self, x: torch.Tensor, conv: ConvRunner) -> torch.Tensor:
        for layer in self.net:
            if isinstance(layer, PadConv2d):
                x = conv(layer, x)
            elif isinstance(layer, ResBlock):
                x = layer(x, conv)
            else:
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.background:
            return self.net(x)
        # First a black picture of one latent position, padded by replicating its edge: every map of it is constant,
        # and each conv's input there is what a plain black background has at that depth. Then x, padded with those
        # values (passed along, no module state: the encoder can be shared between threads).
        fills: dict[PadConv2d, torch.Tensor] = {}

        def record(c: PadConv2d, h: torch.Tensor) -> torch.Tensor:
            fills[c] = h[:, :, :1, :1]
            return c(h, replicate=True)

        self._run(x.new_full((1, x.shape[1], self.factor, self.factor), -1.0), record)
        return self._run(x, lambda c, h: c(h, fill=fills[c]))


class Decoder(nn.Module):
    """[B, D, h, w] -> [B, C, h*f, w*f] in about [-1, 1] (C = in_channels). Upsampling by conv + pixel shuffle."""

    def __init__(self, cfg: ImageVQConfig) -> None:
        super().__init__()
        ch = cfg.dec_channels[::-1]
        layers: list[nn.Module] = [_conv(cfg, cfg.codebook_dim, ch[0], 3, decoder=True)]
        layers += [ResBlock(cfg, ch[0], decoder=True) for _ in range(cfg.res_blocks)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [
                nn.SiLU(),
                _conv(cfg, a, 4 * b, 3, decoder=True),
                nn.PixelShuffle(2),
                ResBlock(cfg, b, decoder=True),
            ]
        layers += [nn.SiLU(), _conv(cfg, ch[-1], 4 * cfg.in_channels, 3, decoder=True), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ImageVQModel(nn.Module):
    """Encoder + quantizer + decoder. ``forward`` is the training path; the tokenizer wraps the inference path."""

    def __init__(self, cfg: ImageVQConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import FSQ, VectorQuantize  # lazy: slow to import (seconds)

        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.quantizer == "vq":
            self.quantizer = VectorQuantize(
                dim=cfg.codebook_dim,
                codebook_size=cfg.codebook_size,
                decay=cfg.ema_decay,
                use_cosine_sim=True,
                kmeans_init=True,
                kmeans_iters=cfg.kmeans_iters,
                threshold_ema_dead_code=cfg.dead_code_threshold,
                commitment_weight=cfg.commitment_weight,
                accept_image_fmap=True,
            )
        else:
            self.quantizer = FSQ(levels=list(cfg.fsq_levels), dim=cfg.codebook_dim, channel_first=True)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: [B, D, h, w] -> (quantized [B, D, h, w], codes [B, h, w] int64, auxiliary loss scalar)."""
        # Nearest-code search and EMA statistics in fp32 even under autocast: bf16 cosine scores tie too often.
        with torch.autocast(z.device.type, enabled=False):
            if self.cfg.quantizer == "vq":
                q, codes, aux = self.quantizer(z.float())
                return q, codes.long(), aux.sum()
            q, codes = self.quantizer(z.float())
            return q, codes.long(), z.new_zeros((), dtype=torch.float32)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [B, h, w] int64 -> latent [B, D, h, w] float32 (the decoder input)."""
        if self.cfg.quantizer == "vq":
            # accept_image_fmap makes the lookup return channels first: [B, D, h, w].
            return self.quantizer.get_output_from_indices(codes).float().contiguous()
        return self.quantizer.indices_to_codes(codes).float()  # channel_first: [B, D, h, w]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, C, H, W] in [-1, 1] -> (reconstruction [B, C, H, W], codes [B, h, w], quantizer loss)."""
        q, codes, aux = self.quantize(self.encoder(x))
        return self.decoder(q), codes, aux


def to_model_input(
    rgb: np.ndarray | torch.Tensor, device: torch.device | str = "cpu", channels: int = 3
) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, channels, H, W] in [-1, 1] (channels 1: the mean of R, G and B)."""
    t = torch.as_tensor(rgb, device=device).permute(0, 3, 1, 2).float()
    if channels == 1:
        t = t.mean(dim=1, keepdim=True)
    return t.div_(127.5).sub_(1.0)


def from_model_output(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3 | 1, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (clamped, rounded; one channel repeated as grey)."""
    out = x.float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out.expand(*out.shape[:3], 3).contiguous()


def autocast_dtype() -> torch.dtype | None:
    """bf16 when this CPU has native bf16 arithmetic (AMX or AVX512-BF16), else None (run fp32)."""
    return fast_cpu_dtype()


# ---------------------------------------------------------------------------------------------- tokenizer
class ImageTokenizer:
    """Pictures <-> codes [B, h, w] (int64, values in [0, codebook_size)) with a trained :class:`ImageVQModel`."""

    def __init__(
        self,
        model: ImageVQModel,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        autocast: torch.dtype | None | str = "auto",
    ) -> None:
        self.model = model.to(device).eval()
        self.cfg = model.cfg
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.amp = (
            (autocast_dtype() if self.device.type == "cpu" else torch.bfloat16) if autocast == "auto" else autocast
        )

    # ---- properties
    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    @property
    def tokens_per_image(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    # ---- coding
    @torch.inference_mode()
    def encode_rgb(self, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """rgb: uint8 [B, S, S, 3] already at the model size -> codes int64 [B, h, w] (CPU)."""
        outs = []
        for i in range(0, len(rgb), self.batch_size):
            x = to_model_input(rgb[i : i + self.batch_size], self.device, self.cfg.in_channels)
            with self._autocast():
                z = self.model.encoder(x)
            outs.append(self.model.quantize(z.float())[1].cpu())
        return torch.cat(outs)

    def encode(self, images: Any) -> torch.Tensor:
        """images: path(s), PIL image(s), uint8 arrays/tensors (see :func:`load_images`) -> codes int64 [B, h, w]."""
        return self.encode_rgb(load_images(images, self.image_size, self.cfg.max_pixels))

    def check_codes(self, codes: Any) -> torch.Tensor:
        """Validate codes for decode: integer [B, h, w] or [h, w] (or flat [B, h*w]) in [0, K) -> int64 [B, h, w]."""
        t = torch.as_tensor(codes)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise DataError(f"image codes must be integers, got dtype {t.dtype}")
        h, w = self.grid
        if t.dim() == 2 and tuple(t.shape) == (h, w):
            t = t[None]
        elif t.dim() == 2 and t.shape[1] == h * w:
            t = t.reshape(-1, h, w)
        if t.dim() != 3 or tuple(t.shape[1:]) != (h, w) or t.shape[0] == 0:
            raise DataError(f"image codes must have shape [B, {h}, {w}] (or [B, {h * w}]), got {tuple(t.shape)}")
        bad = (t < 0) | (t >= self.codebook_size)
        if bool(bad.any()):
            raise DataError(
                f"image code {int(t[bad][0])} is outside [0, {self.codebook_size}) "
                f"({int(bad.sum())} code(s) out of range)"
            )
        return t.long()

    @torch.inference_mode()
    def decode(self, codes: Any) -> np.ndarray:
        """codes: int [B, h, w] (or [h, w], [B, h*w]) in [0, K) -> uint8 numpy [B, H, W, 3]."""
        t = self.check_codes(codes)
        outs = []
        for i in range(0, len(t), self.batch_size):
            q = self.model.codes_to_latent(t[i : i + self.batch_size].to(self.device))
            with self._autocast():
                x = self.model.decoder(q)
            outs.append(from_model_output(x).cpu())
        return torch.cat(outs).numpy()

    def reconstruct(self, images: Any) -> np.ndarray:
        """encode then decode: uint8 [B, H, W, 3]."""
        return self.decode(self.encode(images))

    # ---- unified ids
    def _check_vocab(self, vocab: UnifiedVocab) -> None:
        if vocab.image_codebook != self.codebook_size:
            raise ConfigError(
                f"vocabulary has {vocab.image_codebook} image codes but this tokenizer has {self.codebook_size}"
            )

    def to_unified(self, codes: Any, vocab: UnifiedVocab) -> torch.Tensor:
        """codes [B, h, w] -> unified ids int64 [B, h*w] in raster order."""
        self._check_vocab(vocab)
        t = self.check_codes(codes)
        return vocab.image_to_unified(t.reshape(t.shape[0], -1))

    def from_unified(self, ids: Any, vocab: UnifiedVocab) -> torch.Tensor:
        """unified ids [B, h*w] (or [h*w]) -> codes int64 [B, h, w]."""
        self._check_vocab(vocab)
        t = torch.as_tensor(ids)
        if t.dim() == 1:
            t = t[None]
        h, w = self.grid
        if t.dim() != 2 or t.shape[1] != h * w:
            raise DataError(f"image ids must have shape [B, {h * w}], got {tuple(torch.as_tensor(ids).shape)}")
        return vocab.unified_to_image(t).reshape(-1, h, w)

    # ---- files
    def save(self, path: str | os.PathLike) -> str:
        """Write image_vq.safetensors + image_vq.json into folder ``path`` (atomically); returns the folder."""
        save_model(self.model, os.fspath(path))
        return os.fspath(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        state: dict[str, torch.Tensor] | None = None,
        config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ImageTokenizer:
        """Load from a folder holding image_vq.safetensors + image_vq.json (``state``, ``config``: its weights and
        its config's content, when already read)."""
        return cls(load_model(os.fspath(path), state, config), device=device, **kwargs)


def save_model(model: ImageVQModel, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors_atomic(os.path.join(folder, IMAGE_WEIGHTS), state, {"format": "chameleon_lite.image_vq"})
    write_json_atomic(os.path.join(folder, IMAGE_CONFIG), model.cfg.to_dict())


def load_model(
    folder: str, state: dict[str, torch.Tensor] | None = None, config: dict[str, Any] | None = None
) -> ImageVQModel:
    """The image tokenizer of ``folder`` (``state``, ``config``: its weights and its config's content when already
    read)."""
    cpath, wpath = os.path.join(folder, IMAGE_CONFIG), os.path.join(folder, IMAGE_WEIGHTS)
    cfg = ImageVQConfig.from_dict(read_json(cpath, "image tokenizer config") if config is None else config, cpath)
    if state is None:
        state = read_weights(wpath, "image tokenizer")
    model = ImageVQModel(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"{wpath}: weights do not fit {cpath} ({str(e).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise ConfigError(f"{wpath}: weights do not fit {cpath} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
