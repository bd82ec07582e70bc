"""Training the digit judges (:mod:`chameleon_lite.eval.judges`) on the training part of the AV-MNIST splits.

Reads MNIST IDX files and a folder of FSDD-style clips with the importers' readers, splits them with
:mod:`chameleon_lite.data.splits`, trains with augmentation (written: affine jitter, blur, noise; spoken: speed,
gain, time shift, noise, spectrogram masks), keeps the epoch with the best accuracy on the val part, and measures
the held-out accuracy once at the end. Writes ``{kind}_digits.safetensors`` + ``.json`` + ``{kind}_confusion.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from chameleon_lite.data.audio_files import load_audio
from chameleon_lite.data.importers import FSDD_PATTERN, labelled_audio_items, read_idx
from chameleon_lite.data.splits import HELDOUT_SPEAKER, SPLITS, describe_splits, split_of_mnist, split_of_recording
from chameleon_lite.errors import DataError, UserError
from chameleon_lite.eval.judges import (
    LOG_FLOOR,
    PRESETS,
    RECORD_FORMAT,
    DigitCNN,
    Judge,
    JudgeConfig,
    judge_paths,
    place_clip,
)
from chameleon_lite.files import PNG_SOFTWARE, OutputKind, atomic_path, check_output_dir, write_json_atomic
from chameleon_lite.hardware import describe_machine
from chameleon_lite.train.schedule import lr_at

JUDGES_FOLDER = OutputKind(
    "a judges folder",
    "chameleon-lite train-judges",
    "*_digits.json",
    ("*_digits.json", "*_digits.safetensors", "*_confusion.png"),
)
HELDOUT_WHAT = {
    "written": "the MNIST test part (data.splits.split_of_mnist), never seen in training or model selection",
    "spoken": f"every clip of FSDD speaker {HELDOUT_SPEAKER}, a speaker unseen in training or model selection",
}


@dataclasses.dataclass
class TrainJudgeConfig:
    """Optimisation of one judge: AdamW, linear warm-up then cosine decay, label smoothing."""

    epochs: int = 15
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    seed: int = 0


TRAIN_PRESETS = {"written": TrainJudgeConfig(epochs=15, batch=64), "spoken": TrainJudgeConfig(epochs=25, batch=32)}


@dataclasses.dataclass
class DigitData:
    """One modality's digits by split part. written: uint8 [N, S, S] grayscale; spoken: float32 clips [T] at
    the judge's rate, of any length. labels: int64 [N]."""

    kind: str
    inputs: dict[str, Any]
    labels: dict[str, np.ndarray]
    source: str

    def counts(self) -> dict[str, int]:
        return {part: len(self.labels[part]) for part in SPLITS}


def _check_parts(data: DigitData, where: str) -> DigitData:
    empty = [part for part in SPLITS if len(data.labels[part]) == 0]
    if empty:
        raise DataError(f"{where}: no {data.kind} digits fall in the {'/'.join(empty)} part(s) of the split; " + (
            "give more pictures (the split is by a hash of the index)" if data.kind == "written"
            else f"the clips need speaker {HELDOUT_SPEAKER} (test), and takes 0-4 (val) and 5+ (train) of others"
        ))  # fmt: skip
    return data


def _labels(values: np.ndarray, classes: int, where: str) -> np.ndarray:
    bad = values[(values < 0) | (values >= classes)]
    if len(bad):
        raise DataError(f"{where}: labels must be 0-{classes - 1} (digits), found {int(bad[0])}")
    return values.astype(np.int64)


def read_written(images: str, labels: str, cfg: JudgeConfig = PRESETS["written"]) -> DigitData:
    """MNIST IDX files (read by the importer's IDX reader) -> grayscale pictures at the judge's size, by part."""
    pix, lab = read_idx(images, "an IDX images"), read_idx(labels, "an IDX labels")
    if pix.ndim != 3 or pix.dtype != np.uint8 or lab.ndim != 1 or len(lab) != len(pix) or not len(pix):
        raise DataError(
            f"{images}, {labels}: expected uint8 pictures N x H x W and N labels, got {pix.dtype} {pix.shape} "
            f"and {lab.dtype} {lab.shape}"
        )
    y = _labels(lab, cfg.classes, labels)
    raw = Judge(cfg).prepare(pix)
    part = np.array([split_of_mnist(i) for i in range(len(pix))])
    src = f"{os.path.basename(images)} + {os.path.basename(labels)}"
    data = DigitData("written", {p: raw[part == p] for p in SPLITS}, {p: y[part == p] for p in SPLITS}, src)
    return _check_parts(data, images)


def read_spoken(folder: str, cfg: JudgeConfig = PRESETS["spoken"]) -> DigitData:
    """A folder of FSDD-named clips ``{label}_{speaker}_{index}.wav`` (read as ``data import-labelled-audio``
    reads them) -> mono clips at the judge's rate, by part."""
    _, items = labelled_audio_items(folder, FSDD_PATTERN, text="")
    inputs: dict[str, list[np.ndarray]] = {p: [] for p in SPLITS}
    labels: dict[str, list[int]] = {p: [] for p in SPLITS}
    for item in items:
        meta = item.record["meta"]
        label = meta["label"]
        if not isinstance(label, int) or not 0 <= label < cfg.classes:
            raise DataError(f"{meta['source']}: the label in its name must be a digit 0-{cfg.classes - 1}")
        part = split_of_recording(meta)
        inputs[part].append(load_audio(meta["source"], cfg.sample_rate)[0])
        labels[part].append(label)
    y = {p: np.array(labels[p], np.int64) for p in SPLITS}
    return _check_parts(DigitData("spoken", inputs, y, os.path.basename(os.path.normpath(folder))), folder)


# ---------------------------------------------------------------------------------------------- augmentation
def augment_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """float32 [B, 1, S, S] in [0, 1] -> the same, each picture rotated (+-12 deg), scaled (+-12 %), sheared and
    shifted (+-2 px at 28), a quarter of them blurred and a quarter given noise: handwriting varies so, and a
    tokenizer's reconstructions are softer and noisier than scans."""
    b = len(x)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    angle, scale, shear = u(-0.21, 0.21), u(0.88, 1.12), u(-0.15, 0.15)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, u(-0.15, 0.15)], 1), torch.stack([sin, cos, u(-0.15, 0.15)], 1)], 1
    )
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    blur = (torch.rand(b, 1, 1, 1, generator=gen) < 0.25) * torch.rand(b, 1, 1, 1, generator=gen)
    x = x + blur * (F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x)
    noise = (torch.rand(b, 1, 1, 1, generator=gen) < 0.25) * 0.08 * torch.rand(b, 1, 1, 1, generator=gen)
    return (x + noise * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


def augment_clip(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """One clip [T] -> float32 [length]: speed +-10 % (pitch moves with it, as between speakers), gain -12..+6 dB,
    a random place in the window, and (80 % of clips) white noise 10-40 dB below the speech."""
    speed = rng.uniform(0.9, 1.1)
    wave = np.interp(np.arange(0.0, len(wave) - 1, speed), np.arange(len(wave)), wave).astype(np.float32)
    wave *= np.float32(10 ** (rng.uniform(-12.0, 6.0) / 20))
    x = place_clip(wave, length, int(rng.integers(0, max(length - len(wave), 0) + 1)))
    if rng.random() < 0.8:
        power = float(np.mean(wave.astype(np.float64) ** 2)) + 1e-12
        x += rng.standard_normal(length).astype(np.float32) * np.float32(
            math.sqrt(power / 10 ** (rng.uniform(10, 40) / 10))
        )
    return x


def random_eq(b: int, n_mels: int, gen: torch.Generator) -> torch.Tensor:
    """A random microphone per clip, in log-mel units [b, n_mels]: a tilt of up to +-12 dB across the band plus
    three smooth bumps of up to +-4 dB each (speakers' recordings differ so: FSDD's speakers by 15 dB below 250 Hz)."""
    pos = torch.linspace(-1.0, 1.0, n_mels)
    tilt = (torch.rand(b, 1, generator=gen) * 2 - 1) * 12.0 * pos
    k = torch.arange(1, 4, dtype=torch.float32).view(1, 3, 1)
    phase = torch.rand(b, 3, 1, generator=gen) * 2 * math.pi
    bumps = ((torch.rand(b, 3, 1, generator=gen) * 2 - 1) * 4.0 * torch.cos(k * math.pi * pos + phase)).sum(1)
    return (tilt + bumps) * (math.log(10) / 10)  # dB of power -> natural log


def mask_spectrograms(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """log-mel [B, 1, M, F] -> one band of up to 6 mels and one span of up to 10 frames per clip set to the floor."""
    b, _, m, f = x.shape
    rows, cols = torch.arange(m).view(1, m, 1), torch.arange(f).view(1, 1, f)
    fw, tw = torch.randint(0, 7, (b, 1, 1), generator=gen), torch.randint(0, 11, (b, 1, 1), generator=gen)
    f0 = (torch.rand(b, 1, 1, generator=gen) * (m - fw)).long()
    t0 = (torch.rand(b, 1, 1, generator=gen) * (f - tw)).long()
    hide = ((rows >= f0) & (rows < f0 + fw)) | ((cols >= t0) & (cols < t0 + tw))
    return x.masked_fill(hide[:, None], LOG_FLOOR)


def _training_batch(judge: Judge, data: DigitData, idx: np.ndarray, rng: np.random.Generator, gen: torch.Generator):
    if data.kind == "written":
        return augment_images(judge.images_input(data.inputs["train"][idx]), gen)
    clips = [augment_clip(data.inputs["train"][i], judge.config.samples, rng) for i in idx]
    eq = random_eq(len(idx), judge.config.n_mels, gen)
    return mask_spectrograms(judge.waves_input(np.stack(clips), eq), gen)


def _eval_inputs(judge: Judge, data: DigitData, part: str) -> np.ndarray:
    if data.kind == "written":
        return data.inputs[part]
    return np.stack([place_clip(c, judge.config.samples) for c in data.inputs[part]])


@torch.no_grad()
def accuracy(judge: Judge, raw: np.ndarray, labels: np.ndarray, batch: int = 512) -> tuple[float, np.ndarray]:
    """(accuracy, confusion int64 [classes, classes]: rows the true digit, columns the judge's reading) of the
    judge on prepared inputs (:meth:`Judge.prepare`)."""
    judge.model.eval()
    pred = torch.cat(
        [judge.model(judge.network_input(raw[i : i + batch])).argmax(-1) for i in range(0, len(raw), batch)]
    )
    k = judge.config.classes
    conf = np.bincount(labels * k + pred.numpy(), minlength=k * k).reshape(k, k)
    return float(np.trace(conf) / max(len(labels), 1)), conf


# ---------------------------------------------------------------------------------------------- training
def train_judge(
    data: DigitData, tcfg: TrainJudgeConfig | None = None, log: Callable[[str], None] = print
) -> tuple[Judge, dict[str, Any]]:
    """Train the ``data.kind`` judge on the train part, keep the epoch best on val, measure on test.
    Returns the judge and its record (the JSON shipped beside the weights)."""
    cfg, tcfg = PRESETS[data.kind], tcfg or TRAIN_PRESETS[data.kind]
    torch.manual_seed(tcfg.seed)
    rng, gen = np.random.default_rng(tcfg.seed), torch.Generator().manual_seed(tcfg.seed)
    judge = Judge(cfg, DigitCNN(cfg))
    model = judge.model
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    y_train = data.labels["train"]
    n, per_epoch = len(y_train), math.ceil(len(y_train) / tcfg.batch)
    total, warmup = tcfg.epochs * per_epoch, round(tcfg.warmup_epochs * per_epoch)
    val_raw = _eval_inputs(judge, data, "val")
    best, best_acc, best_epoch, step, t0 = None, -1.0, 0, 0, time.perf_counter()
    for epoch in range(1, tcfg.epochs + 1):
        model.train()
        perm, losses = rng.permutation(n), []
        for b in range(per_epoch):
            idx = perm[b * tcfg.batch : (b + 1) * tcfg.batch]
            x = _training_batch(judge, data, idx, rng, gen)
            loss = F.cross_entropy(model(x), torch.from_numpy(y_train[idx]), label_smoothing=tcfg.label_smoothing)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr=tcfg.lr, warmup=warmup, total=total, min_lr_ratio=0.01)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        val_acc, _ = accuracy(judge, val_raw, data.labels["val"])
        if val_acc > best_acc:
            best, best_acc, best_epoch = copy.deepcopy(model.state_dict()), val_acc, epoch
        log(
            f"{data.kind} judge: epoch {epoch}/{tcfg.epochs} loss {np.mean(losses):.3f} val {100 * val_acc:.2f} % "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    model.load_state_dict(best)
    seconds = time.perf_counter() - t0
    test_acc, conf = accuracy(judge, _eval_inputs(judge, data, "test"), data.labels["test"])
    log(
        f"{data.kind} judge: held-out accuracy {100 * test_acc:.2f} % on {len(data.labels['test'])} ({HELDOUT_WHAT[data.kind]})"
    )
    record = {
        "format": RECORD_FORMAT,
        "kind": data.kind,
        "note": "a learned judge: a small CNN whose readings are right at the held-out accuracy below, not always",
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "split": describe_splits()[data.kind],
        "data": {"source": data.source, "counts": data.counts()},
        "train": {
            **dataclasses.asdict(tcfg),
            "best_epoch": best_epoch,
            "val_accuracy": best_acc,
            "seconds": round(seconds, 1),
            "machine": describe_machine(),
            "torch": torch.__version__,
        },
        "heldout": {
            "what": HELDOUT_WHAT[data.kind],
            "n": int(conf.sum()),
            "accuracy": test_acc,
            "confusion": conf.tolist(),
        },
    }
    judge.record = record
    return judge, record


def plot_confusion(conf: np.ndarray, title: str, path: str) -> None:
    """Draw a confusion matrix (rows: true digit, columns: reading) as a PNG at ``path`` (written atomically)."""
    import matplotlib  # lazy: 0.3 s to import, and its Agg backend is chosen only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    k = len(conf)
    share = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), layout="constrained")
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if conf[i, j]:
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("judge's reading")
    ax.set_ylabel("true digit")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true digit")
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=90, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)


def save_judge(judge: Judge, out: str) -> tuple[str, str, str]:
    """Write ``{kind}_digits.safetensors``, ``{kind}_digits.json`` and ``{kind}_confusion.png`` into ``out``."""
    weights, meta = judge_paths(out, judge.kind)
    with atomic_path(weights, ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in judge.model.state_dict().items()}, tmp)
    write_json_atomic(meta, judge.record)
    held = judge.record["heldout"]
    png = os.path.join(out, f"{judge.kind}_confusion.png")
    title = f"{judge.kind} digit judge (learned): {100 * held['accuracy']:.2f} % on {held['n']} held-out\n"
    plot_confusion(np.array(held["confusion"]), title + held["what"].split(",")[0], png)
    return weights, meta, png


def prepare_out(out: str) -> None:
    """Refuse an --out that is neither new, empty nor an earlier judges folder, before any work; then make it."""
    check_output_dir(out, JUDGES_FOLDER)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
