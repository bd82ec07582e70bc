"""The image VQ tokenizer's part of tokenizer training (the loop is chameleon_lite.train.tokenizer_loop, shared
with the audio codec), and its evaluation (see image.py for the model).

Outputs: out/image_vq.safetensors + out/image_vq.json (the tokenizer, written at the end, atomically); in the run
folder out/run/image also grid_XXXXXX.png (originals, top, vs reconstructions, bottom; every grid_every steps)
beside the loop's checkpoints, log.jsonl (losses, PSNR, codebook usage, images/s) and summary.json.

Data: the manifest's pictures (of one ``split`` part, when set) are read from disk as batches draw them, with a
bounded cache (tokenizers/train_data.py), so memory does not grow with the data set.

Losses: L1 + L2 on pixels (pixels away from their picture's median value weighted 1 + ``foreground_weight``,
so the logged l1/l2 are weighted means), an edge term (L1 between horizontal/vertical finite differences of
reconstruction and original, which keeps shape outlines sharp), the quantizer's commitment loss, and optionally a hinge patch
discriminator switched on after ``disc_start`` steps (0 = off). No pretrained perceptual network is used.

Decoder fine-tuning (``finetune_decoder``): start from a trained tokenizer and train only its decoder, on exactly the
inference path (frozen encoder -> nearest codes -> codebook latents -> decoder). The encoder and codebook stay
bit-identical, so every picture keeps its codes and a transformer trained on them keeps working, while pictures
decoded from its codes get sharper. A cheap fix for a tokenizer whose codes carry the picture but whose decoder
was trained too briefly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from chameleon_lite.configs import config_from_dict
from chameleon_lite.data import procedural as P
from chameleon_lite.data.checkers import check_image, compare_image
from chameleon_lite.data.image_files import load_images
from chameleon_lite.data.manifest import iter_documents
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import atomic_path, png_info
from chameleon_lite.tokenizers.image import (
    ImageTokenizer,
    ImageVQConfig,
    ImageVQModel,
    autocast_dtype,
    load_model,
    preset,
    save_model,
    to_model_input,
)
from chameleon_lite.tokenizers.train_data import ImageSource, check_split, manifest_media


@dataclasses.dataclass
class ImageVQTrainConfig:
    """Settings of one training run (the model's shape comes from ``preset`` + ``model_overrides``)."""

    preset: str = "tiny"
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The default recipe (tiny preset on the procedural corpus): 4000 steps of 32 pictures reach 43.6 dB PSNR,
    # 99.35 % checker agreement and 98.75 % cell invariance on 2000 held-out pictures (docs/image_tokenizer_eval.json).
    steps: int = 4000
    batch_size: int = 32
    lr: float = 2e-3
    # Adam betas of the autoencoder; (0.9, 0.99) learns these sparse pictures markedly faster than the GAN-style
    # (0.5, 0.9): without its quantizer, batch PSNR after 150 steps 20.2 vs 17.3 dB. The discriminator keeps (0.5, 0.9).
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    edge_weight: float = 0.5
    # Pixels that differ from their picture's median value (per channel) weigh 1 + foreground_weight in the L1/L2
    # terms: small shapes on a large plain area otherwise count so little that their color is learned last. The
    # median is the plain area's value whatever its colour or place (black procedural backgrounds, white paper),
    # and a picture without one weighs about every pixel alike. 0 = every pixel weighs the same.
    foreground_weight: float = 4.0
    # Probability that a training picture's intensities are remapped, v -> lo + (hi - lo) v with lo in [0, 0.5] and
    # hi in [0.5, 1], swapped half the time (on [0, 1], the same map for every channel): dark strokes on light paper,
    # grey on grey. A data set of one kind of background (MNIST: white on black) then does not teach the tokenizer
    # that kind. 0 = off (and no random numbers drawn, so a recipe without it keeps its batches).
    intensity_augment: float = 0.0
    disc_start: int = 0
    disc_weight: float = 0.1
    grid_every: int = 200
    log_every: int = 20
    ckpt_every: int = 200
    max_images: int = 0
    # "train", "val" or "test": only the manifest's documents of that part of chameleon_lite.data.splits
    split: str = ""
    # decoded pictures kept in memory (least recently used go first); the rest are read from disk per batch
    cache_images: int = 4096
    seed: int = 0
    threads: int = 0
    autocast: bool = True
    # A trained tokenizer folder: train only its decoder (see the module docstring); the model's shape is that
    # tokenizer's, so ``preset`` and ``model_overrides`` are not used.
    finetune_decoder: str = ""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grid_every", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.intensity_augment <= 1:
            raise ConfigError(f"intensity_augment must be a probability in [0, 1], got {self.intensity_augment}")
        if not self.foreground_weight >= 0:
            raise ConfigError(f"foreground_weight must be >= 0, got {self.foreground_weight}")
        check_split(self.split)
        for name in ("warmup", "disc_start", "max_images", "threads", "seed", "cache_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")
        self.model_config()  # validates preset name and overrides

    def model_config(self) -> ImageVQConfig:
        if self.finetune_decoder:
            return _finetune_base(self.finetune_decoder).cfg
        try:
            return preset(self.preset, **self.model_overrides)
        except TypeError as e:
            raise ConfigError(f"bad model override ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ImageVQTrainConfig:
        return config_from_dict(cls, d, source, "image tokenizer training option")


def _finetune_base(folder: str) -> ImageVQModel:
    """The trained tokenizer whose decoder a fine-tuning run trains (clear errors for a folder without one)."""
    if not os.path.isdir(folder):
        raise ConfigError(f"finetune_decoder: {folder} is not a folder holding an image tokenizer")
    return load_model(folder)


def quickstart_config(steps: int, seed: int = 0) -> ImageVQTrainConfig:
    """The tiny-preset settings `chameleon-lite quickstart` trains with (a short run on the procedural corpus)."""
    return ImageVQTrainConfig(
        preset="tiny",
        steps=steps,
        batch_size=32,
        warmup=min(50, max(1, steps // 20)),
        seed=seed,
        grid_every=max(50, steps // 6),
        ckpt_every=max(50, steps // 6),
        log_every=20,
    )


# ---------------------------------------------------------------------------------------------- data
def manifest_image_paths(manifest: str, split: str = "") -> list[str]:
    """Absolute paths of every image segment of a JSONL manifest (of the ``split`` part, when set), in order."""
    paths = [p for p, _ in manifest_media(manifest, "image", split)]
    if not paths:
        raise DataError(f"{manifest}: no image segments{f' in split {split!r}' if split else ''} to train on")
    return paths


def load_image_set(paths: list[str], size: int, progress: bool = True, desc: str = "loading images") -> np.ndarray:
    """Decode every path to uint8 [N, size, size, 3] (errors name the file)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i in tqdm(range(0, len(paths), 256), desc=desc, unit="chunk", disable=not progress):
        out[i : i + 256] = load_images(paths[i : i + 256], size)
    return out


def remap_intensity(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """x: [B, C, H, W] in [-1, 1]; with probability p per picture, v -> lo + (hi - lo) v on the [0, 1] scale
    (lo ~ U[0, 0.5], hi ~ U[0.5, 1], swapped with probability 1/2: inverted). Draws 4 numbers per picture from
    ``gen``."""
    u = torch.rand(4, x.shape[0], generator=gen)
    lo, hi = 0.5 * u[0], 0.5 + 0.5 * u[1]
    lo, hi = torch.where(u[2] < 0.5, lo, hi), torch.where(u[2] < 0.5, hi, lo)
    on = u[3] < p
    lo, hi = torch.where(on, lo, torch.zeros_like(lo)), torch.where(on, hi, torch.ones_like(hi))
    v = (x + 1) / 2 * (hi - lo)[:, None, None, None] + lo[:, None, None, None]
    return v * 2 - 1


# ---------------------------------------------------------------------------------------------- losses
def edge_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean |d(x) - d(y)| over horizontal and vertical finite differences; x, y: [B, C, H, W]."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def pixel_losses(y: torch.Tensor, x: torch.Tensor, foreground_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, L2) of reconstruction y against x ([B, C, H, W] in [-1, 1]), each a weighted mean over pixels: a pixel
    whose target differs from its picture's median (per channel) by more than one 8-bit level weighs
    1 + ``foreground_weight``, the others 1."""
    d = y - x
    if not foreground_weight:
        return d.abs().mean(), d.pow(2).mean()
    median = x.flatten(2).median(dim=2).values[:, :, None, None]
    fg = ((x - median).abs() > 1.0 / 127.5).any(dim=1, keepdim=True)
    w = 1.0 + foreground_weight * fg.float()
    w = w / w.mean()
    return (d.abs() * w).mean(), (d.pow(2) * w).mean()


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: [B, C, H, W] -> logits [B, 1, H/8, W/8], one per receptive-field patch."""

    def __init__(self, ch: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ch, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1),
            nn.GroupNorm(8, 2 * ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ch, 4 * ch, 4, 2, 1),
            nn.GroupNorm(8, 4 * ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * ch, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------- pictures
def save_grid(path: str, originals: np.ndarray, recons: np.ndarray, scale: int = 2) -> None:
    """PNG with originals (top row) above reconstructions (bottom row); arrays uint8 [N, H, W, 3]."""
    n, h, w, _ = originals.shape
    pad = 2
    canvas = np.full((2 * h + 3 * pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        x0 = pad + i * (w + pad)
        canvas[pad : pad + h, x0 : x0 + w] = originals[i]
        canvas[2 * pad + h : 2 * pad + 2 * h, x0 : x0 + w] = recons[i]
    img = Image.fromarray(canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, pnginfo=png_info())


# ---------------------------------------------------------------------------------------------- training
class ImageVQTask:
    """The image tokenizer's part of a run of the tokenizer loop (chameleon_lite.train.tokenizer_loop): its data,
    model, optimisers, losses, log record and sample grids."""

    kind, rate_key = "image", "images_per_s"

    def __init__(
        self,
        manifest: str,
        cfg: ImageVQTrainConfig,
        progress: bool = True,
        eval_images: int = 8,
        images: np.ndarray | None = None,
    ) -> None:
        self.manifest, self.cfg, self.progress, self.eval_images, self.images = (
            manifest,
            cfg,
            progress,
            eval_images,
            images,
        )
        self.mcfg = cfg.model_config()
        self.finetune = bool(cfg.finetune_decoder)
        self.desc = "image decoder" if self.finetune else "image VQ"
        self.sample_every, self.units_per_step = cfg.grid_every, cfg.batch_size
        self.amp = autocast_dtype() if cfg.autocast else None
        self.usage = torch.zeros(self.mcfg.codebook_size, dtype=torch.int64)

    def load_data(self) -> None:
        """List the training pictures (decoded per batch, see train_data.py), or check the given array."""
        size = self.mcfg.image_size
        if self.images is None:
            paths = manifest_image_paths(self.manifest, self.cfg.split)[: self.cfg.max_images or None]
            self.source = ImageSource(paths, size, self.cfg.cache_images)
        else:
            if self.images.shape[1:] != (size, size, 3):
                raise DataError(
                    f"training pictures have shape {self.images.shape[1:]}, the model needs {(size, size, 3)}"
                )
            self.source = ImageSource(None, size, images=self.images)
        n_show = min(self.eval_images, len(self.source))
        self.show = self.source.take(np.linspace(0, len(self.source) - 1, n_show).astype(int))

    def build_model(self) -> ImageVQModel:
        return _finetune_base(self.cfg.finetune_decoder) if self.finetune else ImageVQModel(self.mcfg)

    def optimizers(self, params: list[nn.Parameter]):
        cfg = self.cfg
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        disc = PatchDiscriminator(in_channels=self.mcfg.in_channels) if cfg.disc_start else None
        dopt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) if disc is not None else None
        return opt, disc, dopt

    def begin(self, model: ImageVQModel, gen: torch.Generator) -> None:
        """Nothing before the first step: the codebook initialises itself in the first training-mode pass."""

    def _autocast(self):
        return torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=self.amp is not None)

    def _reconstruct(self, model: ImageVQModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, codes, commitment loss) of x; fine-tuning runs the inference path: frozen encoder ->
        nearest codes -> codebook latents -> decoder."""
        if not self.finetune:
            with self._autocast():
                return model(x)
        with torch.no_grad():
            with self._autocast():
                z = model.encoder(x)
            codes = model.quantize(z.float())[1]
            q = model.codes_to_latent(codes)
        with self._autocast():
            y = model.decoder(q)
        return y, codes, torch.zeros(())

    def forward(self, model: ImageVQModel, disc: nn.Module | None, step: int, gen: torch.Generator):
        """The loss of one batch (and the discriminator's loss, to run after the tokenizer's step)."""
        cfg = self.cfg
        idx = torch.randint(0, len(self.source), (cfg.batch_size,), generator=gen).numpy()
        x = to_model_input(self.source.take(idx), channels=self.mcfg.in_channels)
        if cfg.intensity_augment:
            x = remap_intensity(x, cfg.intensity_augment, gen)
        y, codes, aux = self._reconstruct(model, x)
        y = y.float()
        l1, l2, le = pixel_losses(y, x, cfg.foreground_weight) + (edge_loss(y, x),)
        loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.edge_weight * le + aux
        if disc is not None:
            with self._autocast():
                g_loss = -disc(y).float().mean()
            loss = loss + cfg.disc_weight * g_loss
        self.usage += torch.bincount(codes.reshape(-1), minlength=self.mcfg.codebook_size)
        self.last = dict(x=x, y=y, loss=loss, l1=l1, l2=l2, edge=le, commit=aux)

        def disc_loss() -> torch.Tensor:
            with self._autocast():
                return F.relu(1 - disc(x)).mean() + F.relu(1 + disc(y.detach())).mean()

        return loss, disc_loss

    def log_values(self, lr: float) -> dict[str, Any]:
        last = self.last
        mse = float(F.mse_loss(last["y"].detach().clamp(-1, 1), last["x"])) / 4.0  # [-1, 1] -> [0, 1] scale
        values = {k: last[k].item() for k in ("loss", "l1", "l2", "edge", "commit")}
        values.update(psnr=10 * math.log10(1.0 / max(mse, 1e-10)), lr=lr, usage=float((self.usage > 0).float().mean()))
        self.usage.zero_()
        return values

    def postfix(self, rec: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{rec['loss']:.4f}", "psnr": f"{rec['psnr']:.1f}", "usage": f"{rec['usage']:.2f}"}

    def samples(self, model: ImageVQModel, run: str, done: int) -> None:
        tok = ImageTokenizer(model, autocast=self.amp)
        save_grid(os.path.join(run, f"grid_{done:06d}.png"), self.show, tok.decode(tok.encode_rgb(self.show)))

    def save(self, model: ImageVQModel, out: str) -> None:
        save_model(model, out)

    def summary_counts(self) -> dict[str, Any]:
        return {"images": len(self.source), "split": self.cfg.split or "all"}

    def summary_extra(self) -> dict[str, Any]:
        return {"autocast": str(self.amp)}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(
    tokenizer_dir: str, manifest: str, n: int = 2000, progress: bool = True, grid_path: str | None = None
) -> dict[str, Any]:
    """Measure a trained tokenizer on the first ``n`` images of ``manifest``.

    Returns PSNR (from the mean squared error over all pixels, and the mean of per-image PSNRs), the fraction
    of pictures where the procedural checker reads exactly the same shapes from the reconstruction as from the
    original (and the fraction matching the manifest's ground truth, when present), codebook usage, and
    :func:`cell_invariance`.
    """
    tok = ImageTokenizer.load(tokenizer_dir)
    paths, truths = [], []
    for doc in iter_documents(manifest):
        media = (doc.meta or {}).get("media") or []
        mi = 0
        for seg in doc.segments:
            if seg.kind in ("image", "audio"):
                rec = media[mi] if mi < len(media) else None
                mi += 1
                if seg.kind == "image":
                    paths.append(seg.path)
                    truths.append(rec if isinstance(rec, dict) and rec.get("type") == "image" else None)
        if len(paths) >= n:
            break
    paths, truths = paths[:n], truths[:n]
    if not paths:
        raise DataError(f"{manifest}: no image segments to evaluate on")
    orig = load_image_set(paths, tok.image_size, progress=progress, desc="loading eval images")
    codes = tok.encode_rgb(orig)
    recon = tok.decode(codes)
    err = (orig.astype(np.float64) - recon.astype(np.float64)) / 255.0
    mse_img = (err**2).reshape(len(orig), -1).mean(axis=1)
    same = truth_orig = truth_recon = n_truth = 0
    for i in tqdm(range(len(orig)), desc="checkers", disable=not progress):
        a, b = check_image(orig[i]), check_image(recon[i])
        same += compare_image(b, a.to_spec()).exact
        if truths[i] is not None:
            n_truth += 1
            truth_orig += compare_image(a, truths[i]).exact
            truth_recon += compare_image(b, truths[i]).exact
    used = int(torch.unique(codes).numel())
    if grid_path:
        save_grid(grid_path, orig[:12], recon[:12])
    return {
        "images": len(orig),
        "psnr_db": round(10 * math.log10(1.0 / max(float(mse_img.mean()), 1e-12)), 3),
        "psnr_mean_per_image_db": round(float(np.mean(10 * np.log10(1.0 / np.maximum(mse_img, 1e-12)))), 3),
        "checker_agreement": round(same / len(orig), 5),
        "checker_truth_original": round(truth_orig / n_truth, 5) if n_truth else None,
        "checker_truth_reconstruction": round(truth_recon / n_truth, 5) if n_truth else None,
        "codebook_used": used,
        "codebook_usage": round(used / tok.codebook_size, 4),
        "codebook_size": tok.codebook_size,
        "tokens_per_image": tok.tokens_per_image,
        "cell_invariance": cell_invariance(tok),
    }


def cell_invariance(tok: ImageTokenizer) -> float | None:
    """Fraction of the procedural shapes (kind x color x size) whose codes are the same in all 9 grid cells: each
    drawn alone in each cell, the codes of the patches of its own cell compared (the patches around it, which its
    edge can reach through the encoder's receptive field, are not). 1.0 means one code pattern per shape inside its
    cell, wherever the cell is. None when the cells are not whole patches at this size."""
    side, (gh, gw) = tok.image_size, tok.grid
    if side % 3 or gh % 3 or gw % 3 or gh != gw:
        return None
    g = gh // 3
    shapes = [(k, c, s) for k in P.SHAPE_KINDS for c in P.COLOR_NAMES for s in P.SIZE_NAMES]
    rgb = np.stack(
        [P.render_image(P.ImageSpec((P.Shape(k, c, s, pos),)), side) for k, c, s in shapes for pos in P.POSITIONS]
    )
    codes = tok.encode_rgb(rgb).reshape(len(shapes), 9, gh, gw)
    same = 0
    for i in range(len(shapes)):
        blocks = {
            tuple(
                codes[i, cell, (cell // 3) * g : (cell // 3 + 1) * g, (cell % 3) * g : (cell % 3 + 1) * g]
                .reshape(-1)
                .tolist()
            )
            for cell in range(9)
        }
        same += len(blocks) == 1
    return round(same / len(shapes), 4)
