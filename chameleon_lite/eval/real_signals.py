"""How faithfully the tokenizers carry real signals: written digits (MNIST) through the image tokenizer, spoken digits
(FSDD) through the audio codec, measured on a held-out part of :mod:`chameleon_lite.data.splits`.

Pictures: PSNR (over all pixels, and the mean of per-picture values) and the written-digit judge's accuracy on the
reconstructions next to its accuracy on the originals. Clips: SI-SNR, STOI (short-time objective intelligibility,
Taal et al. 2011, from the ``pystoi`` package: the mean over clips long enough for its 384 ms analysis windows,
and over all clips joined end to end), and the spoken-digit judge's accuracy on reconstructions next to
originals. The judges are learned classifiers (chameleon_lite/eval/judges.py) whose own held-out accuracy is in their
records; a judge not shipped yet is reported as such and its numbers are left out. Throughput: pictures and clips
encoded + decoded per second, with the CPU's ISA.

Writes into ``out``: real_signals.json, written_grid.png (originals, top, vs reconstructions, bottom) and
clips/original_K.wav + clips/recon_K.wav for a few clips.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import numpy as np
import torch
from pystoi import stoi
from tqdm import tqdm

from chameleon_lite.bundle import AUDIO_CONFIG, IMAGE_CONFIG
from chameleon_lite.data.audio_files import load_audio
from chameleon_lite.data.image_files import load_images
from chameleon_lite.data.manifest import iter_documents
from chameleon_lite.data.splits import describe_splits
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.eval.judges import load_judge
from chameleon_lite.files import write_json_atomic
from chameleon_lite.tokenizers.audio import AudioTokenizer
from chameleon_lite.tokenizers.audio_train import si_snr, write_wav
from chameleon_lite.tokenizers.image import ImageTokenizer
from chameleon_lite.tokenizers.image_train import save_grid
from chameleon_lite.tokenizers.loader import load_image_tokenizer
from chameleon_lite.tokenizers.train_data import check_split, split_of

RESULT_FILE = "real_signals.json"
GRID_FILE = "written_grid.png"


def labelled_media(manifest: str, kind: str, split: str = "test", limit: int = 0) -> list[tuple[str, int | None]]:
    """(path, meta label or None) of the first ``kind`` ("image"/"audio") segment of each document of ``split``
    ("" = every document), at most ``limit`` (0 = all)."""
    check_split(split)
    out: list[tuple[str, int | None]] = []
    for doc in iter_documents(manifest):
        seg = next((s for s in doc.segments if s.kind == kind), None)
        meta = doc.meta or {}
        if seg is None or (split and split_of(meta, kind, f"{manifest}: {doc.id}") != split):
            continue
        label = meta.get("label")
        out.append((seg.path, label if isinstance(label, int) and not isinstance(label, bool) else None))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{manifest}: no {kind} segments{f' in split {split!r}' if split else ''} to measure")
    return out


def psnr_db(mse: float) -> float:
    """PSNR in dB of a mean squared error on the [0, 1] scale."""
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _judge(kind: str) -> tuple[Any, str | None]:
    """(judge, None), or (None, why not) when the package ships no usable ``kind`` judge."""
    try:
        return load_judge(kind), None
    except ConfigError as e:
        return None, str(e)


def _accuracy(pred: np.ndarray, labels: list[int | None]) -> float | None:
    known = [(p, y) for p, y in zip(pred.tolist(), labels) if y is not None]
    return round(sum(p == y for p, y in known) / len(known), 5) if known else None


def _judged(kind: str, originals: Any, recons: Any, labels: list[int | None], **kw: Any) -> dict[str, Any]:
    """The ``kind`` judge's accuracy on originals and reconstructions, and how often it reads both alike."""
    judge, why = _judge(kind)
    if judge is None:
        return {"judge": None, "judge_missing": why}
    a, b = judge.predict(originals, **kw)[0], judge.predict(recons, **kw)[0]
    heldout = judge.record.get("heldout") or {}
    return {
        "judge": f"{kind}_digits (learned; its own held-out accuracy {heldout.get('accuracy')} on {heldout.get('n')})",
        "judge_accuracy_original": _accuracy(a, labels),
        "judge_accuracy_reconstruction": _accuracy(b, labels),
        "judge_agreement": round(float((a == b).mean()), 5),
    }


def measure_images(tok: ImageTokenizer, items: list[tuple[str, int | None]], out: str, progress: bool = True):
    """PSNR, judge accuracies and throughput of ``tok`` on the pictures of ``items``; writes the PNG grid."""
    orig = np.concatenate(
        [
            load_images([p for p, _ in items[i : i + 256]], tok.image_size)
            for i in tqdm(range(0, len(items), 256), desc="pictures", disable=not progress)
        ]
    )
    t0 = time.perf_counter()
    recon = tok.decode(tok.encode_rgb(orig))
    seconds = time.perf_counter() - t0
    err = (orig.astype(np.float64) - recon.astype(np.float64)) / 255.0
    mse = (err**2).reshape(len(orig), -1).mean(axis=1)
    save_grid(os.path.join(out, GRID_FILE), orig[:16], recon[:16])
    return {
        "images": len(orig),
        "image_size": tok.image_size,
        "tokens_per_image": tok.tokens_per_image,
        "codebook_size": tok.codebook_size,
        "psnr_db": round(psnr_db(float(mse.mean())), 3),
        "psnr_mean_per_image_db": round(float(np.mean([psnr_db(float(m)) for m in mse])), 3),
        **_judged("written", orig, recon, [y for _, y in items]),
        "images_per_s": round(len(orig) / seconds, 1),
        "grid": GRID_FILE,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _stoi(ref: np.ndarray, est: np.ndarray, sr: int) -> float | None:
    """STOI of ``est`` against ``ref``; None for a clip too short to hold STOI's 30 analysis frames of speech."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(ref.astype(np.float64), est.astype(np.float64), sr, extended=False))
    return None if caught or not math.isfinite(value) else value


def measure_speech(
    tok: AudioTokenizer, items: list[tuple[str, int | None]], out: str, wavs: int = 4, progress: bool = True
):
    """SI-SNR, STOI, judge accuracies and throughput of ``tok`` on the clips of ``items``; writes a few WAVs."""
    sr = tok.sample_rate
    origs, recons, snrs, stois = [], [], [], []
    seconds = audio_seconds = 0.0
    os.makedirs(os.path.join(out, "clips"), exist_ok=True)
    for k, (path, _) in enumerate(tqdm(items, desc="clips", unit="clip", disable=not progress)):
        wave, _ = load_audio(path, sr)
        t0 = time.perf_counter()
        rec = tok.decode(tok.encode_waveform(wave))[: len(wave)]
        seconds += time.perf_counter() - t0
        audio_seconds += len(wave) / sr
        snrs.append(float(si_snr(torch.from_numpy(rec)[None], torch.from_numpy(wave)[None])))
        stois.append(_stoi(wave, rec, sr))
        origs.append(wave)
        recons.append(rec)
        if k < wavs:
            write_wav(os.path.join(out, "clips", f"original_{k}.wav"), wave, sr)
            write_wav(os.path.join(out, "clips", f"recon_{k}.wav"), rec, sr)
    scored = [s for s in stois if s is not None]
    return {
        "clips": len(items),
        "sample_rate": sr,
        "frame_rate": tok.frame_rate,
        "num_levels": tok.num_levels,
        "codebook_size": tok.codebook_size,
        "si_snr_db": round(float(np.mean(snrs)), 3),
        "stoi": round(float(np.mean(scored)), 4) if scored else None,
        "stoi_clips": len(scored),
        "stoi_concatenated": _round(_stoi(np.concatenate(origs), np.concatenate(recons), sr), 4),
        **_judged("spoken", origs, recons, [y for _, y in items], sample_rate=sr),
        "clips_per_s": round(len(items) / seconds, 1),
        "audio_seconds_per_s": round(audio_seconds / seconds, 1),
        "wavs": min(wavs, len(items)),
    }


def evaluate_real(
    tokenizers: str,
    out: str,
    images: str | None = None,
    audio: str | None = None,
    split: str = "test",
    n_images: int = 0,
    n_clips: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the image tokenizer and/or audio codec in folder ``tokenizers`` on the ``split`` part of the
    ``images`` / ``audio`` manifests (at most ``n_images`` / ``n_clips``; 0 = all); write ``out``/real_signals.json
    (returned), the grid and the WAVs."""
    if not images and not audio:
        raise ConfigError("give --images MANIFEST, --audio MANIFEST or both")
    for manifest in (images, audio):
        if manifest and not os.path.isfile(manifest):
            raise DataError(f"{manifest}: manifest not found")
    for manifest, config in ((images, IMAGE_CONFIG), (audio, AUDIO_CONFIG)):
        if manifest and not os.path.isfile(os.path.join(tokenizers, config)):
            raise ConfigError(f"{tokenizers}: holds no {config}; give --tokenizers a folder with the trained tokenizer")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "tokenizers": os.path.abspath(tokenizers),
        "split": split or "all",
        "splits": describe_splits(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if images:
        items = labelled_media(images, "image", split, n_images)
        result["written"] = measure_images(load_image_tokenizer(tokenizers), items, out, progress)
    if audio:
        items = labelled_media(audio, "audio", split, n_clips)
        result["spoken"] = measure_speech(AudioTokenizer.load(tokenizers), items, out, progress=progress)
    write_json_atomic(os.path.join(out, RESULT_FILE), result)
    return result
