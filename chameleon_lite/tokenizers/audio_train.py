"""The audio codec's part of tokenizer training (the loop is chameleon_lite.train.tokenizer_loop, shared with the
image tokenizer), and its evaluation (see audio.py for the model).

Outputs: out/audio_codec.safetensors + out/audio_codec.json (the codec, written at the end, atomically); in the run
folder out/run/audio also spectrogram_XXXXXX.png (log-mel of originals, top, vs reconstructions, bottom) and
sample_XXXXXX_K.wav (reconstructed clips; originals: original_K.wav) every sample_every steps, beside the loop's
checkpoints, log.jsonl (losses, SI-SNR, codebook usage, seconds of audio per second) and summary.json.

Losses: multi-scale log-mel L1, multi-scale STFT magnitude (spectral convergence + log-magnitude L1), multi-scale
complex STFT L1 and waveform L1 plus a scale-invariant SNR term (these keep the waveform in phase, which magnitude
losses cannot see), and the RVQ commitment loss. Optional: a multi-scale STFT discriminator (hinge) with feature matching from ``disc_start``.
Training crops are ``segment_frames`` frames long, drawn uniformly from the clips of the manifest (of one
``split`` part, when set; read from disk as batches draw them, with a bounded cache: tokenizers/train_data.py),
starting on a frame boundary of their clip (``frame_aligned_crops``), where encoding the whole clip puts one.

Decoder fine-tuning (``finetune_decoder``): start from a trained codec and train only its decoder on the inference
path (frozen encoder -> nearest codes of every level -> codebook latents -> decoder). Encoder and codebooks stay
bit-identical, so every clip keeps its codes and a transformer trained on them keeps working.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from chameleon_lite.configs import config_from_dict
from chameleon_lite.data.audio_files import load_audio, mel_filterbank
from chameleon_lite.data.checkers import check_audio, compare_audio
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import PNG_SOFTWARE, atomic_path
from chameleon_lite.tokenizers.audio import (
    AudioCodecConfig,
    AudioCodecModel,
    AudioTokenizer,
    load_model,
    preset,
    save_model,
)
from chameleon_lite.tokenizers.train_data import check_split, clip_source, manifest_media


@dataclasses.dataclass
class AudioCodecTrainConfig:
    """Settings of one codec training run (the model's shape comes from ``preset`` + ``model_overrides``)."""

    preset: str = "tiny"
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 3000
    batch_size: int = 16
    segment_frames: int = 32
    # Crops start on frame boundaries of their clip (as encoding a clip cuts it); off: at any sample.
    frame_aligned_crops: bool = True
    # 3e-3: at 600 steps (one thread, one seed) 11.4 dB SI-SNR against 2.0 dB at 1e-3; 5e-3 diverges; a short run's
    # result varies with the seed (docs/speedrun.md)
    lr: float = 3e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    # window sizes of the multi-scale spectral losses; long windows resolve single harmonics over a whole note
    spectral_ffts: tuple[int, ...] = (2048, 1024, 512, 256, 128)
    # < 0: the spectral losses ignore what lies this many dB below each clip's loudest bin (MultiScaleSpectralLoss);
    # 0: only the absolute floor 1e-5
    spectral_floor_db: float = 0.0
    mel_weight: float = 1.0
    stft_weight: float = 1.0
    complex_weight: float = 2.0
    wave_weight: float = 5.0
    sisnr_weight: float = 2.0
    disc_start: int = 0
    disc_weight: float = 0.1
    feature_weight: float = 1.0
    sample_every: int = 500
    log_every: int = 20
    ckpt_every: int = 250
    max_clips: int = 0
    # "train", "val" or "test": only the manifest's documents of that part of chameleon_lite.data.splits
    split: str = ""
    # decoded clips kept in memory (least recently used go first); the rest are read from disk per batch
    cache_clips: int = 4096
    seed: int = 0
    threads: int = 0
    # A trained codec folder: train only its decoder (see the module docstring); the model's shape is that
    # codec's, so ``preset`` is not used and ``model_overrides`` may only add decoder attention blocks
    # (FINETUNE_OVERRIDES), which start near the identity and train with the decoder.
    finetune_decoder: str = ""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "segment_frames", "sample_every", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_split(self.split)
        for name in ("warmup", "disc_start", "max_clips", "threads", "seed", "cache_clips"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.spectral_ffts = tuple(int(n) for n in self.spectral_ffts)
        if not self.spectral_ffts or any(n < 16 for n in self.spectral_ffts):
            raise ConfigError(f"spectral_ffts must be window sizes >= 16, got {self.spectral_ffts}")
        if not -120 <= self.spectral_floor_db <= 0:
            raise ConfigError(f"spectral_floor_db must be in [-120, 0] dB (0 = off), got {self.spectral_floor_db}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")
        self.model_config()

    def model_config(self) -> AudioCodecConfig:
        if self.finetune_decoder:
            return finetune_config(_finetune_base(self.finetune_decoder).cfg, self.model_overrides)
        try:
            return preset(self.preset, **self.model_overrides)
        except TypeError as e:
            raise ConfigError(f"bad model override ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> AudioCodecTrainConfig:
        return config_from_dict(cls, d, source, "audio codec training option")


def _finetune_base(folder: str) -> AudioCodecModel:
    """The trained codec whose decoder a fine-tuning run trains (clear errors for a folder without one)."""
    if not os.path.isdir(folder):
        raise ConfigError(f"finetune_decoder: {folder} is not a folder holding an audio codec")
    return load_model(folder)


# codec fields a decoder fine-tuning run may change: they add blocks to the decoder and touch nothing that makes codes
FINETUNE_OVERRIDES = ("decoder_attention", "decoder_attention_heads")


def finetune_config(base: AudioCodecConfig, overrides: dict[str, Any]) -> AudioCodecConfig:
    """The shape of a decoder fine-tuned from a codec of config ``base``: ``base`` with ``overrides`` applied, which
    may only add decoder attention blocks (a trained block is never dropped, nor its heads regrouped)."""
    if not overrides:
        return base
    bad = sorted(set(overrides) - set(FINETUNE_OVERRIDES))
    if bad:
        raise ConfigError(
            f"finetune_decoder keeps the codec's shape: --model.KEY may only add decoder attention blocks "
            f"({', '.join(FINETUNE_OVERRIDES)}), got {', '.join(bad)}"
        )
    try:
        cfg = dataclasses.replace(base, **overrides)
    except TypeError as e:  # a value of the wrong type, e.g. --model.decoder_attention_heads='"4"'
        raise ConfigError(f"bad model override ({e})") from None
    if cfg.decoder_attention < base.decoder_attention:
        raise ConfigError(
            f"finetune_decoder: the codec has {base.decoder_attention} decoder attention blocks; "
            f"fine-tuning can add blocks but not drop trained ones (asked for {cfg.decoder_attention})"
        )
    if base.decoder_attention and cfg.decoder_attention_heads != base.decoder_attention_heads:
        raise ConfigError(
            f"finetune_decoder: the codec's decoder attention blocks have "
            f"{base.decoder_attention_heads} heads; their trained weights can not be regrouped into "
            f"{cfg.decoder_attention_heads}"
        )
    return cfg


def finetune_model(folder: str, cfg: AudioCodecConfig) -> AudioCodecModel:
    """The codec of ``folder`` shaped as ``cfg`` (from :func:`finetune_config`): its trained weights, plus fresh
    decoder attention blocks where ``cfg`` adds them."""
    base = _finetune_base(folder)
    if cfg == base.cfg:
        return base
    model = AudioCodecModel(cfg)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("decoder.context.") for k in missing), "only new blocks are fresh"
    return model.eval()


def quickstart_config(steps: int, seed: int = 0) -> AudioCodecTrainConfig:
    """The tiny-preset settings `chameleon-lite quickstart` trains with (a short run on the procedural corpus).

    Two residual levels instead of four: the notes and the timbre live in the first two (the four-level tiny codec
    read back 99.4 % exact from its first two levels), and half the levels is half the audio tokens the
    transformer has to read and write. At 3000 steps (the quickstart's cap) and lr 1e-3 this codec read back 97.6 %
    exact on 500 held-out clips (docs/audio_codec_eval.json).

    The peak learning rate is the trainer's default, 3e-3; the magnitude losses (log-mel, STFT) weigh 4x the
    trainer's defaults, and they ignore what lies 30 dB under each clip's loudest bin (``spectral_floor_db``). In 600
    steps on 2 threads, over three seeds, on 191 held-out clips (docs/speedrun.md): default weights 2.1-9.5 dB SI-SNR
    and 21-67 % checker agreement; magnitude terms 4x, 7.3-7.9 dB and 50-75 %; and with the -30 dB floor as well,
    7.1-15.6 dB (mean 12.7) and 73-91 % (mean 84 %). Without the relative floor the log terms are mostly about
    matching the empty bins of a synthetic tone's spectrum, and a short run leaves out the harmonics that tell a
    square or sawtooth wave from a sine."""
    return AudioCodecTrainConfig(
        preset="tiny",
        model_overrides={"num_levels": 2, "quantizer_dropout": 0.0},
        steps=steps,
        mel_weight=4.0,
        stft_weight=4.0,
        spectral_floor_db=-30.0,
        warmup=min(100, max(1, steps // 20)),
        seed=seed,
        sample_every=max(50, steps // 4),
        ckpt_every=max(50, steps // 8),
        log_every=20,
    )


# ---------------------------------------------------------------------------------------------- data
def manifest_audio(manifest: str, split: str = "") -> list[tuple[str, dict | None]]:
    """(absolute path, ground-truth meta record or None) of every audio segment of a JSONL manifest (of the ``split``
    part, when set), in order."""
    return manifest_media(manifest, "audio", split)


def load_clips(
    paths: list[str], sample_rate: int, progress: bool = True, desc: str = "loading clips"
) -> list[np.ndarray]:
    """Every path as mono float32 at ``sample_rate`` (errors name the file; conversions are counted and shown)."""
    clips, converted = [], 0
    for p in tqdm(paths, desc=desc, unit="clip", disable=not progress):
        wave, info = load_audio(p, sample_rate)
        converted += info.resampled or info.downmixed
        clips.append(wave)
    if converted and progress:
        print(f"{converted} of {len(paths)} clips converted to mono {sample_rate} Hz")
    return clips


def random_crops(clips: Sequence[np.ndarray], n: int, length: int, gen: torch.Generator, grid: int = 1) -> torch.Tensor:
    """n crops of ``length`` samples ([n, 1, length]); shorter clips are zero-padded at a random offset.

    Offsets (where a crop starts in its clip, or where a short clip starts in its crop) are multiples of ``grid``
    samples: with ``grid`` = the codec's hop, training sees frames cut where encoding a clip cuts them.
    """
    if grid < 1:
        raise ConfigError(f"grid must be >= 1 sample, got {grid}")
    out = torch.zeros(n, 1, length)
    pick = torch.randint(0, len(clips), (n,), generator=gen).tolist()
    u = torch.rand(n, generator=gen).tolist()
    for i, (c, r) in enumerate(zip(pick, u)):
        x = clips[c]
        if len(x) >= length:
            s = int(r * ((len(x) - length) // grid + 1)) * grid
            out[i, 0] = torch.from_numpy(x[s : s + length])
        else:
            s = int(r * ((length - len(x)) // grid + 1)) * grid
            out[i, 0, s : s + len(x)] = torch.from_numpy(x)
    return out


# ---------------------------------------------------------------------------------------------- losses
class MultiScaleSpectralLoss(nn.Module):
    """Log-mel L1 and STFT (spectral convergence + log-magnitude L1) summed over several window sizes.

    Magnitudes are floored at 1e-5 and, with ``floor_db`` (< 0), at that many dB below each clip's loudest bin (of
    the reference, per window size; for the mel terms, its loudest mel bin): what lies under the floor on both sides
    costs nothing. A synthetic tone's spectrum is almost all empty bins tens of dB down, so without a relative floor
    the log terms are mostly about matching that emptiness, and the harmonics (a few bins) come last."""

    def __init__(
        self, sample_rate: int, ffts: tuple[int, ...] = (2048, 1024, 512, 256, 128), floor_db: float = 0.0
    ) -> None:
        super().__init__()
        self.ffts = ffts
        self.floor = 10 ** (floor_db / 20) if floor_db < 0 else 0.0
        for n in ffts:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
            self.register_buffer(f"mel{n}", mel_filterbank(sample_rate, n, min(80, n // 4)), persistent=False)

    def _spec(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.stft(
            x, n, hop_length=n // 4, window=getattr(self, f"win{n}"), pad_mode="constant", return_complex=True
        )

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """y, x: [B, T] -> (mel loss, stft magnitude loss, complex stft loss), each a mean over scales.

        The complex term (L1 between real and imaginary parts, relative to the reference's magnitude) is the one
        that sees phase; the magnitude terms do not."""
        mel_l, stft_l, cplx_l = y.new_zeros(()), y.new_zeros(()), y.new_zeros(())
        for n in self.ffts:
            sy, sx = self._spec(y, n), self._spec(x, n)
            ay, ax = sy.abs(), sx.abs()
            floor = (ax.amax(dim=(-2, -1), keepdim=True) * self.floor).clamp_min(1e-5)
            my, mx = torch.maximum(ay, floor), torch.maximum(ax, floor)
            stft_l = (
                stft_l
                + torch.linalg.norm(my - mx) / torch.linalg.norm(mx).clamp_min(1e-5)
                + (my.log() - mx.log()).abs().mean()
            )
            cplx_l = cplx_l + (torch.view_as_real(sy) - torch.view_as_real(sx)).abs().mean() / mx.mean().clamp_min(1e-5)
            fb = getattr(self, f"mel{n}")
            mel_y, mel_x = fb @ my, fb @ mx
            mel_floor = (mel_x.amax(dim=(-2, -1), keepdim=True) * self.floor).clamp_min(1e-5)
            mel_l = mel_l + (torch.maximum(mel_y, mel_floor).log() - torch.maximum(mel_x, mel_floor).log()).abs().mean()
        k = len(self.ffts)
        return mel_l / k, stft_l / k, cplx_l / k


def si_snr(y: torch.Tensor, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB of estimate y against reference x, per row ([B, T] -> [B])."""
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    proj = (y * x).sum(-1, keepdim=True) / ((x * x).sum(-1, keepdim=True) + eps) * x
    noise = y - proj
    return 10 * torch.log10(((proj * proj).sum(-1) + eps) / ((noise * noise).sum(-1) + eps))


class STFTDiscriminator(nn.Module):
    """Multi-scale complex-STFT discriminator: per scale a 2-D conv stack over (time, frequency) of the
    real/imaginary parts; returns per-scale logits and intermediate features (for feature matching)."""

    def __init__(self, ffts: tuple[int, ...] = (1024, 512, 256), ch: int = 16) -> None:
        super().__init__()
        self.ffts = ffts
        self.nets = nn.ModuleList()
        for _ in ffts:
            self.nets.append(
                nn.ModuleList(
                    [
                        nn.Conv2d(2, ch, (3, 9), padding=(1, 4)),
                        nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
                        nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
                        nn.Conv2d(ch, ch, (3, 3), padding=(1, 1)),
                        nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        out = []
        for n, net in zip(self.ffts, self.nets):
            spec = torch.stft(
                x,
                n,
                hop_length=n // 4,
                window=torch.hann_window(n, device=x.device),
                pad_mode="constant",
                return_complex=True,
            )
            h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
            feats = []
            for i, conv in enumerate(net):
                h = conv(h)
                if i < len(net) - 1:
                    h = F.leaky_relu(h, 0.2)
                    feats.append(h)
            out.append((h, feats))
        return out


# ---------------------------------------------------------------------------------------------- pictures & sound
def log_mel(wave: np.ndarray, sample_rate: int, n_fft: int = 1024, n_mels: int = 80) -> np.ndarray:
    x = torch.as_tensor(np.asarray(wave, np.float32)).reshape(-1)
    if len(x) < n_fft:
        x = F.pad(x, (0, n_fft - len(x)))
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
    return (mel_filterbank(sample_rate, n_fft, n_mels) @ spec).clamp_min(1e-5).log10().numpy()


def save_spectrograms(
    path: str, originals: list[np.ndarray], recons: list[np.ndarray], sample_rate: int, title: str = ""
) -> None:
    """PNG: log-mel spectrograms of originals (top row) and reconstructions (bottom row)."""
    import matplotlib  # lazy: 0.3 s to import, and its Agg backend is chosen only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 4.2), squeeze=False)
    for i in range(n):
        for r, (w, label) in enumerate(((originals[i], "original"), (recons[i], "reconstruction"))):
            ax = axes[r][i]
            ax.imshow(log_mel(w, sample_rate), origin="lower", aspect="auto", vmin=-5, vmax=1, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=80, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)


def write_wav(path: str, wave: np.ndarray, sample_rate: int) -> str:
    """16-bit PCM WAV, written atomically and marked as this tool's (see :func:`files.check_wav_output`)."""
    with atomic_path(path, ".wav") as tmp:
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, format="WAV", subtype="PCM_16") as f:
            f.software = PNG_SOFTWARE
            f.write(np.clip(np.nan_to_num(np.asarray(wave, np.float32)), -1, 1))
    return path


# ---------------------------------------------------------------------------------------------- training
def crop_grid(cfg: AudioCodecTrainConfig, mcfg: AudioCodecConfig) -> int:
    """Samples between allowed crop offsets: one hop with ``frame_aligned_crops``, else 1."""
    return mcfg.hop if cfg.frame_aligned_crops else 1


def _kmeans_warmup(
    model: AudioCodecModel, clips: Sequence[np.ndarray], cfg: AudioCodecTrainConfig, gen: torch.Generator
) -> None:
    """Initialise every RVQ level by k-means on one large batch (enough vectors for the codebook)."""
    mcfg = model.cfg
    need = 2 * mcfg.codebook_size
    n = max(cfg.batch_size, -(-need // cfg.segment_frames))
    x = random_crops(clips, n, cfg.segment_frames * mcfg.hop, gen, crop_grid(cfg, mcfg))
    with torch.no_grad():
        model.quantize(model.encoder(x), dropout=False)


class AudioCodecTask:
    """The audio codec's part of a run of the tokenizer loop (chameleon_lite.train.tokenizer_loop): its clips,
    model, optimisers, k-means start, losses, log record and samples."""

    kind, rate_key = "audio", "audio_seconds_per_s"

    def __init__(
        self,
        manifest: str,
        cfg: AudioCodecTrainConfig,
        progress: bool = True,
        eval_clips: int = 4,
        clips: list[np.ndarray] | None = None,
    ) -> None:
        self.manifest, self.cfg, self.progress, self.eval_clips, self.clips = manifest, cfg, progress, eval_clips, clips
        self.mcfg = mcfg = cfg.model_config()
        self.finetune = bool(cfg.finetune_decoder)
        self.desc = "audio decoder" if self.finetune else "audio codec"
        self.seg = cfg.segment_frames * mcfg.hop
        self.sample_every, self.units_per_step = cfg.sample_every, cfg.batch_size * self.seg / mcfg.sample_rate
        self.usage = torch.zeros(mcfg.num_levels, mcfg.codebook_size, dtype=torch.int64)

    def load_data(self) -> None:
        """List the training clips (read per batch, see train_data.py), unless they were given."""
        split = self.cfg.split
        if self.clips is None:
            paths = [p for p, _ in manifest_audio(self.manifest, split)][: self.cfg.max_clips or None]
            self.clips = clip_source(paths, self.mcfg.sample_rate, self.cfg.cache_clips)
        if not len(self.clips):
            raise DataError(f"{self.manifest}: no audio segments{f' in split {split!r}' if split else ''} to train on")
        pick = np.linspace(0, len(self.clips) - 1, min(self.eval_clips, len(self.clips))).astype(int)
        self.show = [self.clips[int(i)] for i in pick]

    def build_model(self) -> AudioCodecModel:
        cfg = self.cfg
        return finetune_model(cfg.finetune_decoder, self.mcfg) if self.finetune else AudioCodecModel(self.mcfg)

    def optimizers(self, params: list[nn.Parameter]):
        cfg = self.cfg
        self.spectral = MultiScaleSpectralLoss(self.mcfg.sample_rate, cfg.spectral_ffts, cfg.spectral_floor_db)
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay)
        disc = STFTDiscriminator() if cfg.disc_start else None
        dopt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.8, 0.99)) if disc is not None else None
        return opt, disc, dopt

    def begin(self, model: AudioCodecModel, gen: torch.Generator) -> None:
        """A fresh (not fine-tuning) run initialises every RVQ level by k-means on one large batch."""
        if not self.finetune:
            model.train()
            _kmeans_warmup(model, self.clips, self.cfg, gen)

    def _reconstruct(self, model: AudioCodecModel, x: torch.Tensor, step: int, gen: torch.Generator):
        """(reconstruction, codes, commitment loss) of x with quantizer dropout; fine-tuning runs the inference
        path: frozen encoder -> nearest codes of the kept levels -> codebook latents -> decoder."""
        mcfg = self.mcfg
        drop = float(torch.rand((), generator=gen)) < mcfg.quantizer_dropout
        drop_seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
        # The quantizer's dead-code replacement draws from torch's global generator: seed it per step so that a
        # resumed run repeats exactly the steps an uninterrupted one takes.
        torch.manual_seed(self.cfg.seed * 1_000_003 + step)
        if not self.finetune:
            return model(x, dropout=drop, dropout_seed=drop_seed)
        with torch.no_grad():
            codes = model.encode_codes(model.encoder(x)).clone()
            if drop and mcfg.num_levels > mcfg.min_levels:  # quantizer dropout: the first j levels only
                j = mcfg.min_levels + drop_seed % (mcfg.num_levels - mcfg.min_levels)  # j in [min_levels, nq)
                codes[:, j:] = -1
                q = model.codes_to_latent(codes[:, :j])
            else:
                q = model.codes_to_latent(codes)
        return model.decoder(q), codes, torch.zeros(())

    def forward(self, model: AudioCodecModel, disc: nn.Module | None, step: int, gen: torch.Generator):
        """The loss of one batch of crops (and the discriminator's loss, to run after the codec's step)."""
        cfg, mcfg = self.cfg, self.mcfg
        x = random_crops(self.clips, cfg.batch_size, self.seg, gen, crop_grid(cfg, mcfg))
        y, codes, commit = self._reconstruct(model, x, step, gen)
        ys, xs = y[:, 0], x[:, 0]
        mel_l, stft_l, cplx_l = self.spectral(ys, xs)
        wave_l = (ys - xs).abs().mean()
        voiced = xs.pow(2).mean(-1) > 1e-6
        snr = si_snr(ys[voiced], xs[voiced]) if bool(voiced.any()) else ys.new_zeros(1)
        loss = (
            cfg.mel_weight * mel_l
            + cfg.stft_weight * stft_l
            + cfg.complex_weight * cplx_l
            + cfg.wave_weight * wave_l
            - cfg.sisnr_weight * snr.clamp(max=40).mean() / 10
            + commit
        )
        if disc is not None:
            adv, fm = self._generator_losses(disc, xs, ys)
            loss = loss + adv + fm
        for lv in range(mcfg.num_levels):
            c = codes[:, lv].reshape(-1)
            self.usage[lv] += torch.bincount(c[c >= 0], minlength=mcfg.codebook_size)
        self.last = dict(
            loss=loss, mel=mel_l, stft=stft_l, complex=cplx_l, wave_l1=wave_l, si_snr_db=snr, commit=commit
        )

        def disc_loss() -> torch.Tensor:
            real, fake = disc(xs), disc(ys.detach())
            return sum(F.relu(1 - lr_).mean() + F.relu(1 + lf).mean() for (lr_, _), (lf, _) in zip(real, fake)) / len(
                real
            )

        return loss, disc_loss

    def _generator_losses(
        self, disc: nn.Module, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted hinge adversarial loss, weighted feature matching against the discriminator's features of the
        original)."""
        cfg = self.cfg
        real, fake = disc(xs), disc(ys)
        adv = sum(F.relu(1 - lf).mean() for lf, _ in fake) / len(fake)
        fm = sum(
            (ff - fr.detach()).abs().mean() / (fr.detach().abs().mean() + 1e-5)
            for (_, fr_list), (_, ff_list) in zip(real, fake)
            for fr, ff in zip(fr_list, ff_list)
        )
        return cfg.disc_weight * adv, cfg.feature_weight * fm / max(1, sum(len(f) for _, f in real))

    def log_values(self, lr: float) -> dict[str, Any]:
        values = {k: v.mean().item() if k == "si_snr_db" else v.item() for k, v in self.last.items()}
        values.update(lr=lr, usage=[round(float((u > 0).float().mean()), 3) for u in self.usage])
        self.usage.zero_()
        return values

    def postfix(self, rec: dict[str, Any]) -> dict[str, str]:
        return {"mel": f"{rec['mel']:.3f}", "snr": f"{rec['si_snr_db']:.1f}dB", "use": f"{min(rec['usage']):.2f}"}

    def samples(self, model: AudioCodecModel, run: str, done: int) -> None:
        sr = self.mcfg.sample_rate
        tok = AudioTokenizer(model)
        recons = [tok.decode(tok.encode_waveform(w))[: len(w)] for w in self.show]
        save_spectrograms(os.path.join(run, f"spectrogram_{done:06d}.png"), self.show, recons, sr, f"step {done}")
        for k, (w, r) in enumerate(zip(self.show[:2], recons[:2])):
            if not os.path.exists(os.path.join(run, f"original_{k}.wav")):
                write_wav(os.path.join(run, f"original_{k}.wav"), w, sr)
            write_wav(os.path.join(run, f"sample_{done:06d}_{k}.wav"), r, sr)

    def save(self, model: AudioCodecModel, out: str) -> None:
        save_model(model, out)

    def summary_counts(self) -> dict[str, Any]:
        return {"clips": len(self.clips), "split": self.cfg.split or "all"}

    def summary_extra(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(
    tokenizer_dir: str,
    manifest: str,
    n: int = 500,
    progress: bool = True,
    levels_low: int = 2,
    spectrogram_path: str | None = None,
) -> dict[str, Any]:
    """Measure a trained codec on the first ``n`` clips of ``manifest``.

    SI-SNR (mean of per-clip dB), multi-scale log-mel distance, and checker agreement: the fraction of clips whose
    reconstruction reads exactly the same notes and timbre as the original, with all levels and with only the
    first ``levels_low`` (notes alone too), and with all levels per timbre of the original
    (``checker_agreement_<timbre>``, over ``clips_<timbre>`` clips: where a codec loses a timbre); plus agreement
    with the manifest's ground truth when present.
    """
    tok = AudioTokenizer.load(tokenizer_dir)
    items = manifest_audio(manifest)[:n]
    if not items:
        raise DataError(f"{manifest}: no audio segments to evaluate on")
    sr = tok.sample_rate
    spectral = MultiScaleSpectralLoss(sr)
    low = min(levels_low, tok.num_levels)
    mcfg = tok.model.cfg
    if low < tok.num_levels and (mcfg.quantizer_dropout == 0 or mcfg.num_levels == 1 or low < mcfg.min_levels):
        low = tok.num_levels  # the codec was not trained to decode from that few levels: measure all of them
    sums = dict(
        si_snr=0.0,
        mel=0.0,
        same=0,
        same_low=0,
        notes_low=0,
        timbre_low=0,
        truth_orig=0,
        truth_recon=0,
        n_truth=0,
        si_snr_low=0.0,
    )
    show_o, show_r = [], []
    per_timbre: dict[str, list[int]] = {}  # timbre of the original -> [clips, exact reconstructions]
    for path, truth in tqdm(items, desc="audio eval", unit="clip", disable=not progress):
        wave, _ = load_audio(path, sr)
        codes = tok.encode_waveform(wave)
        rec = tok.decode(codes)[: len(wave)]
        rec_low = tok.decode(codes[:low])[: len(wave)]
        xo, xr, xl = (torch.from_numpy(np.ascontiguousarray(w))[None] for w in (wave, rec, rec_low))
        sums["si_snr"] += float(si_snr(xr, xo))
        sums["si_snr_low"] += float(si_snr(xl, xo))
        pad = max(0, 2048 - xo.shape[1])
        sums["mel"] += float(spectral(F.pad(xr, (0, pad)), F.pad(xo, (0, pad)))[0])  # log-mel L1, mean over scales
        a, b, c = check_audio(wave, sr), check_audio(rec, sr), check_audio(rec_low, sr)
        exact = compare_audio(b, a).exact
        sums["same"] += exact
        if a.timbre is not None:
            t = per_timbre.setdefault(a.timbre, [0, 0])
            t[0] += 1
            t[1] += exact
        m_low = compare_audio(c, a)
        sums["same_low"] += m_low.exact
        sums["notes_low"] += m_low.attributes["notes"]
        sums["timbre_low"] += m_low.attributes["timbre"]
        if truth is not None:
            sums["n_truth"] += 1
            sums["truth_orig"] += compare_audio(a, truth).exact
            sums["truth_recon"] += compare_audio(b, truth).exact
        if len(show_o) < 6:
            show_o.append(wave)
            show_r.append(rec)
    k = len(items)
    if spectrogram_path:
        save_spectrograms(spectrogram_path, show_o, show_r, sr, "held-out clips: original (top) vs codec (bottom)")
    nt = sums["n_truth"]
    return {
        "clips": k,
        "si_snr_db": round(sums["si_snr"] / k, 3),
        "mel_distance": round(sums["mel"] / k, 4),
        "checker_agreement": round(sums["same"] / k, 5),
        **{f"checker_agreement_{t}": round(same / n, 5) for t, (n, same) in sorted(per_timbre.items())},
        **{f"clips_{t}": n for t, (n, _) in sorted(per_timbre.items())},
        f"checker_agreement_{low}_levels": round(sums["same_low"] / k, 5),
        f"notes_agreement_{low}_levels": round(sums["notes_low"] / k, 5),
        f"timbre_agreement_{low}_levels": round(sums["timbre_low"] / k, 5),
        f"si_snr_{low}_levels_db": round(sums["si_snr_low"] / k, 3),
        "checker_truth_original": round(sums["truth_orig"] / nt, 5) if nt else None,
        "checker_truth_reconstruction": round(sums["truth_recon"] / nt, 5) if nt else None,
        "num_levels": tok.num_levels,
        "codebook_size": tok.codebook_size,
        "frame_rate": tok.frame_rate,
        "sample_rate": sr,
    }
