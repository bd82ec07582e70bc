"""Chameleon's image tokenizer: the Make-a-Scene style VQGAN of Meta's Chameleon release, encoder and decoder.

Pictures [B, 3, 512, 512] in [-1, 1] -> encoder (conv stem, residual levels with stride-2 downsampling, a middle
block with self-attention) -> 1x1 ``quant_conv`` -> nearest of 8192 codebook vectors (256-d) -> codes
[B, 32, 32]; decoding maps codes -> codebook vectors -> 1x1 ``post_quant_conv`` -> decoder (the mirror image,
nearest-neighbour upsampling) -> pixels [B, 3, 512, 512], roughly in [-1, 1] (no output squashing: clamp to show).

Parameter names are those of the release checkpoint ``tokenizer/vqgan.ckpt`` (taming-transformers naming), so its
``state_dict`` loads as it is; transformers' ``ChameleonVQVAE`` uses the same names for everything it has (all but
the decoder). Loaders (:func:`load_original`, :func:`from_hf_state`) read tensors only: nothing in a file is run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from chameleon_lite.bundle import IMAGE_CONFIG, IMAGE_WEIGHTS, read_weights, write_safetensors_atomic
from chameleon_lite.data.image_files import DEFAULT_MAX_PIXELS
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import read_json, write_json_atomic
from chameleon_lite.tokenizers.image import ImageTokenizer, from_model_output, to_model_input

# GroupNorm of every normalised layer: 32 groups, eps 1e-6 (the release's convention)
NORM_GROUPS = 32
NORM_EPS = 1e-6
# the original yaml's ``ddconfig`` / ``params`` names -> this config's (transformers') names
ORIGINAL_NAMES = {
    "n_embed": "num_embeddings",
    "double_z": "double_latent",
    "z_channels": "latent_channels",
    "ch": "base_channels",
    "ch_mult": "channel_multiplier",
    "out_ch": "out_channels",
}
# architecture switches of the reference code: accepted only with the value the release uses
FIXED_SETTINGS = {
    "attn_type": "vanilla",
    "resamp_with_conv": True,
    "use_linear_attn": False,
    "give_pre_end": False,
    "tanh_out": False,
}
# what transformers writes into any config dict besides its fields
HF_BOOKKEEPING = frozenset(
    {
        "transformers_version",
        "model_type",
        "architectures",
        "initializer_range",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "dtype",
        "torch_dtype",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "_name_or_path",
    }
)
HF_MODEL_TYPE = "chameleon_vqgan"
# ``model.params`` entries of the original yaml about training or output format, not the network
ORIGINAL_IGNORED_PARAMS = frozenset(
    {
        "lossconfig",
        "ckpt_path",
        "ignore_keys",
        "image_key",
        "monitor",
        "scheduler_config",
        "lr_g_factor",
        "colorize_nlabels",
        "sane_index_shape",
    }
)
# prefixes of the training-only modules (perceptual loss, discriminator) a Lightning checkpoint also holds
TRAINING_PREFIXES = ("loss.", "discriminator.")
HF_PREFIX = "model.vqmodel."
CONFIG_NAME = "vqgan.yaml"


@dataclasses.dataclass
class ChameleonVQConfig:
    """Shape of the VQGAN; the defaults are the Chameleon release's (512x512 RGB -> 32x32 codes of 8192).

    embed_dim: dimension of a codebook vector; num_embeddings: codebook size. latent_channels: channels of the
    encoder output / decoder input (``z_channels``); double_latent must be false (a VQ model has no variance).
    base_channels (``ch``) times each channel_multiplier (``ch_mult``) gives the width of each resolution level;
    there are len(channel_multiplier) levels, so the downsampling factor is 2 ** (levels - 1).
    attn_resolutions: feature-map sides (starting at ``resolution``, halving per level) whose residual blocks are
    each followed by self-attention. out_channels: channels the decoder draws.
    """

    embed_dim: int = 256
    num_embeddings: int = 8192
    double_latent: bool = False
    latent_channels: int = 256
    resolution: int = 512
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channel_multiplier = _int_tuple("channel_multiplier", self.channel_multiplier)
        self.attn_resolutions = _int_tuple(
            "attn_resolutions", () if self.attn_resolutions is None else self.attn_resolutions
        )
        for name in ("embed_dim", "num_embeddings", "latent_channels", "resolution", "in_channels", "out_channels"):
            _check_positive_int(name, getattr(self, name))
        for name in ("base_channels", "num_res_blocks"):
            _check_positive_int(name, getattr(self, name))
        if not self.channel_multiplier or min(self.channel_multiplier) < 1:
            raise ConfigError(
                f"channel_multiplier must be a non-empty list of positive integers, got {list(self.channel_multiplier)}"
            )
        widths = [self.base_channels * m for m in self.channel_multiplier]
        if any(w % NORM_GROUPS for w in widths):
            raise ConfigError(
                f"base_channels x channel_multiplier gives widths {widths}; each must be a multiple of {NORM_GROUPS} (GroupNorm groups)"
            )
        if self.resolution % self.factor:
            raise ConfigError(
                f"resolution {self.resolution} must be a multiple of the downsampling factor {self.factor}"
            )
        if not isinstance(self.double_latent, bool):
            raise ConfigError(f"double_latent must be true or false, got {self.double_latent!r}")
        if self.double_latent:
            raise ConfigError("double_latent must be false: quant_conv takes latent_channels, not twice that")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)

    @property
    def factor(self) -> int:
        """Downsampling factor from pixels to codes."""
        return 2 ** (len(self.channel_multiplier) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChameleonVQConfig:
        """A config from transformers' ``vq_config`` names or the original yaml's ``ddconfig``/``params`` names
        (``ch``, ``ch_mult``, ``z_channels``, ``double_z``, ``out_ch``, ``n_embed``), mixed freely as long as two
        names of one field agree. transformers' bookkeeping entries are ignored; any other unknown key is refused.
        Missing fields take the release's values."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"the VQGAN config must be a mapping, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        given_as: dict[str, str] = {}  # field -> the key that set it
        unknown = []
        for key, value in d.items():
            if key in FIXED_SETTINGS:
                if value != FIXED_SETTINGS[key]:
                    raise ConfigError(f"{key} {value!r} is not supported (only {FIXED_SETTINGS[key]!r})")
                continue
            if key == "model_type" and value != HF_MODEL_TYPE:
                raise ConfigError(f"model_type {value!r} is not a Chameleon VQGAN ({HF_MODEL_TYPE!r})")
            if key in HF_BOOKKEEPING:
                continue
            name = ORIGINAL_NAMES.get(key, key)
            if name not in fields:
                unknown.append(key)
            elif name in values and _plain(values[name]) != _plain(value):
                raise ConfigError(f"{key} = {value!r} disagrees with {given_as[name]} = {values[name]!r}")
            else:
                values[name], given_as[name] = value, key
        if unknown:
            raise ConfigError(
                f"unknown VQGAN config keys {sorted(unknown)}; known: {sorted(fields | set(ORIGINAL_NAMES))}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields under transformers' names, JSON-ready."""
        d = dataclasses.asdict(self)
        d["channel_multiplier"] = list(self.channel_multiplier)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ConfigError(f"{name} must be a list of integers, got {value!r}")
    return tuple(value)


def _swish(x: torch.Tensor) -> torch.Tensor:
    # written out (not F.silu) so the arithmetic, and hence every code, matches the reference bit for bit
    return x * torch.sigmoid(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


def _conv1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1)


class _ResBlock(nn.Module):
    """norm-swish-conv twice, plus the input (through a 1x1 ``nin_shortcut`` when the width changes)."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = _conv3(cin, cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3(cout, cout)
        self.nin_shortcut = _conv1(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class _Attention(nn.Module):
    """Single-head self-attention over all positions of a feature map, 1x1 convs as projections, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = _conv1(channels, channels)
        self.k = _conv1(channels, channels)
        self.v = _conv1(channels, channels)
        self.proj_out = _conv1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        queries = self.q(n).reshape(b, c, h * w).transpose(1, 2)  # [b, hw, c]
        keys = self.k(n).reshape(b, c, h * w)  # [b, c, hw]
        values = self.v(n).reshape(b, c, h * w)  # [b, c, hw]
        weights = torch.softmax(torch.bmm(queries, keys) * c**-0.5, dim=2)  # [b, query, key]
        mixed = torch.bmm(values, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(mixed)


class _Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row/column at the bottom/right only (the release's layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1)))


class _Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: residual blocks (``block``), each followed by attention when the level has it (``attn``),
    then a ``downsample`` (encoder) or ``upsample`` (decoder) unless it is the last level on its way."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(_ResBlock(cin, cout, dropout) for cin, cout in widths)
        self.attn = nn.ModuleList(_Attention(cout) for _, cout in widths) if attention else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        return x


class _Middle(nn.Module):
    """Residual block, attention, residual block at the coarsest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = _ResBlock(channels, channels, dropout)
        self.attn_1 = _Attention(channels)
        self.block_2 = _ResBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Encoder(nn.Module):
    """Pixels -> latent_channels at 1/factor resolution. ``down[i]`` works at resolution / 2**i."""

    def __init__(self, cfg: ChameleonVQConfig) -> None:
        super().__init__()
        mult = cfg.channel_multiplier
        self.conv_in = _conv3(cfg.in_channels, cfg.base_channels)
        self.down = nn.ModuleList()
        width = cfg.base_channels
        for i, m in enumerate(mult):
            out = cfg.base_channels * m
            widths = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks)]
            level = _Level(widths, cfg.resolution // 2**i in cfg.attn_resolutions, cfg.dropout)
            if i < len(mult) - 1:
                level.downsample = _Downsample(out)
            self.down.append(level)
            width = out
        self.mid = _Middle(width, cfg.dropout)
        self.norm_out = _norm(width)
        self.conv_out = _conv3(width, cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.down):
            x = level(x)
            if i < len(self.down) - 1:
                x = level.downsample(x)
        return self.conv_out(_swish(self.norm_out(self.mid(x))))


class _Decoder(nn.Module):
    """latent_channels at 1/factor resolution -> pixels. ``up[i]`` works at resolution / 2**i and runs from the
    last index to 0; each level has num_res_blocks + 1 residual blocks."""

    def __init__(self, cfg: ChameleonVQConfig) -> None:
        super().__init__()
        mult = cfg.channel_multiplier
        width = cfg.base_channels * mult[-1]
        self.conv_in = _conv3(cfg.latent_channels, width)
        self.mid = _Middle(width, cfg.dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(mult))):
            out = cfg.base_channels * mult[i]
            widths = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks + 1)]
            level = _Level(widths, cfg.resolution // 2**i in cfg.attn_resolutions, cfg.dropout)
            if i > 0:
                level.upsample = _Upsample(out)
            levels.insert(0, level)
            width = out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width)
        self.conv_out = _conv3(width, cfg.out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            x = self.up[i](x)
            if i > 0:
                x = self.up[i].upsample(x)
        return self.conv_out(_swish(self.norm_out(x)))


class _Codebook(nn.Module):
    """The code vectors, as ``embedding.weight`` [num_embeddings, embed_dim]."""

    def __init__(self, num_embeddings: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embed_dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code vector of each row of ``z`` [N, D] by squared distance, ties to the lowest
        index; the distance is expanded as |z|^2 + |e|^2 - 2 z.e in the reference's order, so ties and
        near-ties break exactly as there."""
        e = self.embedding.weight
        dist = z.pow(2).sum(dim=1, keepdim=True) + e.pow(2).sum(dim=1) - 2 * torch.mm(z, e.t())
        return dist.argmin(dim=1)


class ChameleonVQGAN(nn.Module):
    """The Chameleon VQGAN. ``decoder=False`` builds the encoder side only (what transformers checkpoints hold):
    :meth:`decode` then raises :class:`ConfigError`. ``source`` names where the weights came from in messages."""

    def __init__(self, config: ChameleonVQConfig, decoder: bool = True, source: str = "model") -> None:
        super().__init__()
        self.config = config
        self.source = source
        self.encoder = _Encoder(config)
        self.quant_conv = _conv1(config.latent_channels, config.embed_dim)
        self.quantize = _Codebook(config.num_embeddings, config.embed_dim)
        self.post_quant_conv = _conv1(config.embed_dim, config.latent_channels)
        self.decoder = _Decoder(config) if decoder else None

    @property
    def grid(self) -> tuple[int, int]:
        """(height, width) of the code grid of a ``resolution`` x ``resolution`` picture."""
        side = self.config.resolution // self.config.factor
        return side, side

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Codes [B, H/f, W/f] int64 of pixels [B, in_channels, H, W] in [-1, 1] (H, W multiples of f)."""
        cfg = self.config
        if not torch.is_tensor(pixels) or not pixels.is_floating_point():
            raise DataError(f"pixels must be a float tensor in [-1, 1], got {_describe(pixels)}")
        if pixels.dim() != 4 or pixels.shape[1] != cfg.in_channels:
            raise DataError(f"pixels must have shape [B, {cfg.in_channels}, H, W], got {tuple(pixels.shape)}")
        b, _, h, w = pixels.shape
        if h % cfg.factor or w % cfg.factor or not h or not w:
            raise DataError(f"picture sides must be positive multiples of {cfg.factor}, got {h}x{w}")
        weight = self.quant_conv.weight
        z = self.quant_conv(self.encoder(pixels.to(device=weight.device, dtype=weight.dtype)))
        flat = z.permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
        return self.quantize.nearest(flat).reshape(b, h // cfg.factor, w // cfg.factor)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Pixels [B, out_channels, h*f, w*f] (roughly [-1, 1], unclamped) of codes [B, h, w]."""
        if self.decoder is None:
            raise ConfigError(
                f"{self.source}: this checkpoint has no VQGAN decoder (transformers keeps the encoder side only); load the release's vqgan.ckpt to decode"
            )
        n = self.config.num_embeddings
        if not torch.is_tensor(codes) or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise DataError(f"codes must be an integer tensor, got {_describe(codes)}")
        if codes.dim() != 3 or codes.numel() == 0:
            raise DataError(f"codes must have shape [B, h, w], got {tuple(codes.shape)}")
        if int(codes.min()) < 0 or int(codes.max()) >= n:
            raise DataError(f"codes must lie in [0, {n}), got values in [{int(codes.min())}, {int(codes.max())}]")
        weight = self.quantize.embedding.weight
        z = self.quantize.embedding(codes.to(device=weight.device, dtype=torch.long)).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z))


def _describe(x: Any) -> str:
    return f"dtype {x.dtype}" if torch.is_tensor(x) else type(x).__name__


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _load_weights(model: ChameleonVQGAN, state: Mapping[str, Any], source: str) -> ChameleonVQGAN:
    """Copy ``state`` into ``model`` after checking it has exactly the model's keys, tensors of its shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}"] if missing else []
        parts += [f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}"] if unexpected else []
        raise ConfigError(f"{source}: weights do not fit the VQGAN config ({'; '.join(parts)})")
    for key, target in expected.items():
        value = state[key]
        if not torch.is_tensor(value) or not value.is_floating_point():
            raise ConfigError(f"{source}: {key} must be a float tensor, got {_describe(value)}")
        if value.shape != target.shape:
            raise ConfigError(f"{source}: {key} has shape {tuple(value.shape)}, the config needs {tuple(target.shape)}")
    model.load_state_dict(dict(state))
    return model.eval()


def _read_config_file(path: str) -> ChameleonVQConfig:
    """The config in a yaml file: the release's ``vqgan.yaml`` (``model.params`` with ``embed_dim``, ``n_embed``
    and ``ddconfig``) or a flat ``vq_config`` mapping. Without pyyaml only JSON (a subset of YAML) is read."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: VQGAN config not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: VQGAN config cannot be read ({_one_line(e)})") from None
    try:
        import yaml  # lazy: pyyaml is optional (not a dependency); without it the config is read as JSON
    except ImportError:
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"{path}: not valid JSON (install pyyaml to read YAML) ({e})") from None
    else:
        try:
            doc = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as e:
            raise ConfigError(f"{path}: not valid YAML ({_one_line(e)})") from None
    try:
        return ChameleonVQConfig.from_dict(_config_mapping(doc))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _config_mapping(doc: Any) -> dict[str, Any]:
    """The flat config mapping of a parsed config document (see :func:`_read_config_file`)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"expected a mapping, got {type(doc).__name__}")
    if "model" not in doc:
        return doc
    params = doc["model"].get("params") if isinstance(doc["model"], dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        raise ConfigError("model.params.ddconfig (the network's shape) is missing")
    flat = {k: v for k, v in params.items() if k not in ORIGINAL_IGNORED_PARAMS and k != "ddconfig"}
    clash = sorted(set(flat) & set(params["ddconfig"]))
    if clash:
        raise ConfigError(f"model.params and model.params.ddconfig both set {clash}")
    return {**flat, **params["ddconfig"]}


def _read_checkpoint(path: str) -> dict[str, Any]:
    """The ``state_dict`` of a Lightning checkpoint, read with ``weights_only`` (tensors and plain containers)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: VQGAN checkpoint not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: VQGAN checkpoint cannot be read ({e.strerror or _one_line(e)})") from None
    except pickle.UnpicklingError as e:
        detail = _one_line(e).partition("WeightsUnpickler error:")[2].strip().split(". ")[0] or "not a PyTorch file"
        raise ConfigError(f"{path}: not a checkpoint that loads without running code ({detail})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError) as e:
        raise ConfigError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_one_line(e)[:200]})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{path}: not a Lightning checkpoint (no 'state_dict' mapping)")
    return ckpt["state_dict"]


def load_original(ckpt_path: str, yaml_path: str | None = None) -> ChameleonVQGAN:
    """The VQGAN of the Chameleon release: ``tokenizer/vqgan.ckpt`` plus its config (default: ``vqgan.yaml``
    beside the checkpoint). The training-only modules in the checkpoint (``loss.*``, ``discriminator.*``) are
    dropped; any other key that does not fit the config, or a missing one, is a :class:`ConfigError`."""
    if yaml_path is None:
        yaml_path = os.path.join(os.path.dirname(ckpt_path), CONFIG_NAME)
        if not os.path.exists(yaml_path):
            raise ConfigError(f"{ckpt_path}: no {CONFIG_NAME} beside the checkpoint; pass the VQGAN config's path")
    config = _read_config_file(yaml_path)
    state = {k: v for k, v in _read_checkpoint(ckpt_path).items() if not k.startswith(TRAINING_PREFIXES)}
    return _load_weights(ChameleonVQGAN(config, source=ckpt_path), state, ckpt_path)


def from_hf_state(
    state: Mapping[str, torch.Tensor],
    vq_config: Mapping[str, Any],
    source: str = "transformers checkpoint",
    prefix: str = HF_PREFIX,
) -> ChameleonVQGAN:
    """The encoder side of a transformers Chameleon checkpoint: the tensors under ``prefix`` (other keys, the
    language model's, are ignored) and its ``vq_config``. transformers keeps no decoder, so neither does the
    result: its :meth:`~ChameleonVQGAN.decode` raises :class:`ConfigError`. ``source`` names it in messages."""
    try:
        config = ChameleonVQConfig.from_dict(vq_config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    vq_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not vq_state:
        raise ConfigError(f"{source}: no VQGAN weights (no key starts with {prefix!r})")
    return _load_weights(ChameleonVQGAN(config, decoder=False, source=source), vq_state, source)


# ---- as an image tokenizer of a model folder ---------------------------------------------------------------------
BACKEND = "chameleon_vqgan"  # image_vq.json "backend" of a folder holding this tokenizer


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What :class:`~chameleon_lite.tokenizers.image.ImageTokenizer` reads of its config."""

    codebook_size: int
    grid: tuple[int, int]
    image_size: int
    in_channels: int
    max_pixels: int


class ChameleonImageTokenizer(ImageTokenizer):
    """Pictures <-> codes through Chameleon's VQGAN, with the interface (and the picture reading: resize, crop,
    [-1, 1]) of this project's image tokenizer. A folder records it as ``image_vq.json`` {"backend":
    "chameleon_vqgan", "codebook_size": K, "decoder": bool, ...the VQGAN config} beside ``image_vq.safetensors``."""

    def __init__(
        self, model: ChameleonVQGAN, device: str | torch.device = "cpu", batch_size: int = 8, autocast: Any = None
    ) -> None:
        self.model = model.to(device).eval()
        c = model.config
        self.cfg = _Shape(c.num_embeddings, model.grid, c.resolution, c.in_channels, max(DEFAULT_MAX_PIXELS,
                          c.resolution**2))  # fmt: skip
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.amp = None if autocast == "auto" else autocast  # fp32 by default: codes must match the reference's

    @torch.inference_mode()
    def encode_rgb(self, rgb: Any) -> torch.Tensor:
        outs = []
        for i in range(0, len(rgb), self.batch_size):
            x = to_model_input(rgb[i : i + self.batch_size], self.device, self.cfg.in_channels)
            with self._autocast():
                outs.append(self.model.encode(x).cpu())
        return torch.cat(outs)

    @torch.inference_mode()
    def decode(self, codes: Any) -> Any:
        t = self.check_codes(codes)
        outs = []
        for i in range(0, len(t), self.batch_size):
            with self._autocast():
                outs.append(from_model_output(self.model.decode(t[i : i + self.batch_size])).cpu())
        return torch.cat(outs).numpy()

    def save(self, path: str | os.PathLike) -> str:
        folder = os.fspath(path)
        os.makedirs(folder, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        write_safetensors_atomic(os.path.join(folder, IMAGE_WEIGHTS), state, {"format": "chameleon_lite.image_vq"})
        c = self.model.config
        # codebook_size: the field every reader of a tokenizer folder takes the vocabulary's image range from
        cfg = {"backend": BACKEND, "codebook_size": c.num_embeddings, "decoder": self.model.decoder is not None}
        cfg |= c.to_dict()
        write_json_atomic(os.path.join(folder, IMAGE_CONFIG), cfg)
        return folder

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        state: dict[str, torch.Tensor] | None = None,
        config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ChameleonImageTokenizer:
        folder = os.fspath(path)
        cpath, wpath = os.path.join(folder, IMAGE_CONFIG), os.path.join(folder, IMAGE_WEIGHTS)
        d = dict(read_json(cpath, "image tokenizer config") if config is None else config)
        if d.pop("backend", None) != BACKEND or not isinstance(d.get("decoder", True), bool):
            raise ConfigError(f"{cpath}: not a {BACKEND} image tokenizer config")
        decoder, size = d.pop("decoder", True), d.pop("codebook_size", None)
        try:
            config = ChameleonVQConfig.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{cpath}: {e}") from None
        if size != config.num_embeddings:
            raise ConfigError(
                f"{cpath}: codebook_size {size!r} is not the VQGAN's num_embeddings {config.num_embeddings}"
            )
        if state is None:
            state = read_weights(wpath, "image tokenizer")
        model = _load_weights(ChameleonVQGAN(config, decoder=decoder, source=wpath), state, wpath)
        return cls(model, device=device, **kwargs)
