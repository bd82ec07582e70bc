"""Checker accuracy: how often the picture/clip checkers read procedural samples exactly, per attribute.

"clean" encodes each sample exactly as the corpus stores it (PNG; 16-bit PCM WAV) and reads the file bytes back;
the other conditions degrade the sample first (pictures: blur, noise, JPEG, rescaling, fading, shifting; clips:
noise, resampling, 8-bit, coarse STFT magnitudes, low-pass) to show how the checkers behave on reconstructions
and generations. Also measures corpus generation speed (documents/s) and checker speed (ms/sample).

    python bench/checker_accuracy.py --n 2000          # JSON in bench/results/, PNG beside it
    python bench/checker_accuracy.py --quick
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402

from chameleon_lite.data import procedural as P  # noqa: E402
from chameleon_lite.data.checkers import check_audio, check_image, compare_audio, compare_image  # noqa: E402


def _png(img: np.ndarray) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


def _jpeg(img: np.ndarray, quality: int) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf)


def _down_up(img: np.ndarray, factor: int) -> Image.Image:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((w // factor, h // factor), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR)


def _wav(wave: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    buf = io.BytesIO()
    sf.write(buf, P.to_pcm16(wave), sr, subtype="PCM_16", format="WAV")
    buf.seek(0)
    data, rate = sf.read(buf, dtype="float32")
    return data, rate


def _stft_degrade(wave: np.ndarray, sr: int, db_step: float = 0.0, cutoff_hz: float | None = None) -> np.ndarray:
    """Codec-like damage: STFT magnitudes rounded to db_step dB and/or zeroed above cutoff_hz, phase kept."""
    import torch

    x = torch.tensor(np.asarray(wave, np.float32))
    window = torch.hann_window(512)
    spec = torch.stft(x, 512, 128, window=window, return_complex=True)
    mag = spec.abs()
    phase = spec / (mag + 1e-9)
    if db_step:
        mag = 10 ** (torch.round(20 * torch.log10(mag + 1e-6) / db_step) * db_step / 20)
    if cutoff_hz is not None:
        mag[torch.fft.rfftfreq(512, 1 / sr) > cutoff_hz] = 0
    return torch.istft(mag * phase, 512, 128, window=window, length=len(wave)).numpy()


def _image_conditions(rng: np.random.Generator) -> dict[str, Callable]:
    return {
        "clean": _png,
        "blur 1px": lambda x: Image.fromarray(x).filter(ImageFilter.GaussianBlur(1)),
        "noise sd 20": lambda x: np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8),
        "jpeg q75": lambda x: _jpeg(x, 75),
        "down x2 + up": lambda x: _down_up(x, 2),
        "down x4 + up": lambda x: _down_up(x, 4),
        "faded to 70%": lambda x: (x * 0.7).astype(np.uint8),
        "shift 2px": lambda x: np.roll(x, (2, -2), axis=(0, 1)),
    }


def _audio_conditions(rng: np.random.Generator) -> dict[str, Callable]:
    return {
        "clean": _wav,
        "noise sd 0.05": lambda w, sr: (w + rng.normal(0, 0.05, w.shape).astype(np.float32), sr),
        "resampled 8 kHz": lambda w, sr: (soxr.resample(w, sr, 8000), 8000),
        "8-bit": lambda w, sr: (np.round(w * 127) / 127, sr),
        "STFT magnitudes in 6 dB steps": lambda w, sr: (_stft_degrade(w, sr, db_step=6.0), sr),
        "low-pass 4 kHz": lambda w, sr: (_stft_degrade(w, sr, cutoff_hz=4000.0), sr),
    }


def _row(modality: str, condition: str, n: int, exact: int, attrs: Counter, seconds: float) -> dict:
    row = {"modality": modality, "condition": condition, "n": n, "exact": exact / n}
    row.update({k: v / n for k, v in sorted(attrs.items())})
    row["ms/sample"] = 1000 * seconds / n
    return row


def bench_images(n: int, seed: int, size: int) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    specs = [P.sample_image_spec(rng) for _ in range(n)]
    images = [P.render_image(s, size) for s in specs]
    rows, failures = [], []
    for name, degrade in _image_conditions(np.random.default_rng(seed + 1)).items():
        exact, attrs, seconds = 0, Counter(), 0.0
        for spec, img in zip(specs, images):
            x = degrade(img)
            t0 = time.perf_counter()
            reading = check_image(x)
            seconds += time.perf_counter() - t0
            m = compare_image(reading, spec)
            exact += m.exact
            attrs.update({k: int(v) for k, v in m.attributes.items()})
            if name == "clean" and not m.exact and len(failures) < 20:
                failures.append({"truth": spec.to_meta(size, size), "read": [vars(s) for s in reading.shapes]})
        rows.append(_row("image", name, n, exact, attrs, seconds))
    return rows, failures


def bench_audio(n: int, seed: int, sample_rate: int) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    specs = [P.sample_audio_spec(rng) for _ in range(n)]
    waves = [P.synthesize_audio(s, sample_rate) for s in specs]
    rows, failures = [], []
    for name, degrade in _audio_conditions(np.random.default_rng(seed + 1)).items():
        exact, attrs, seconds = 0, Counter(), 0.0
        for spec, wave in zip(specs, waves):
            x, sr = degrade(wave, sample_rate)
            t0 = time.perf_counter()
            reading = check_audio(x, sr)
            seconds += time.perf_counter() - t0
            m = compare_audio(reading, spec)
            exact += m.exact
            attrs.update({k: int(v) for k, v in m.attributes.items()})
            if name == "clean" and not m.exact and len(failures) < 20:
                failures.append(
                    {
                        "truth": spec.to_meta(sample_rate),
                        "read": {"notes": reading.notes, "timbre": reading.timbre, "frequencies": reading.frequencies},
                    }
                )
        rows.append(_row("audio", name, n, exact, attrs, seconds))
    return rows, failures


def bench_corpus_speed(n: int, seed: int) -> list[dict]:
    """Wall time of write_corpus with 1 and 2 worker processes (same bytes either way)."""
    P.coverage_maps(64, 64)  # build the shared templates outside the timed region, as a long run amortises them
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            P.write_corpus(d, n=n, seed=seed, progress=False, workers=workers)
            seconds = time.perf_counter() - t0
            media = sum(len(files) for _, _, files in os.walk(d)) - 2  # minus manifest.jsonl and corpus.json
        rows.append(
            {"workers": workers, "documents": n, "media files": media, "seconds": seconds, "documents/s": n / seconds}
        )
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, modality in zip(axes, ("image", "audio")):
        sub = [r for r in rows if r["modality"] == modality]
        ax.bar([r["condition"] for r in sub], [100 * r["exact"] for r in sub], color="tab:blue")
        ax.axhline(99.5, color="tab:red", lw=1, ls="--", label="99.5% target (clean)")
        ax.set_title(f"{modality} checker, exact readings (n={sub[0]['n']})")
        ax.set_ylim(0, 101)
        ax.tick_params(axis="x", rotation=30)
        for i, r in enumerate(sub):
            ax.text(i, 100 * r["exact"] + 0.5, f"{100 * r['exact']:.1f}", ha="center", fontsize=8)
    axes[0].set_ylabel("% exact")
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples per modality and condition (default 2000)")
    ap.add_argument("--seed", type=int, default=20260)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--quick", action="store_true", help="200 samples")
    ap.add_argument("--out", default="bench/results/checker_accuracy.json")
    args = ap.parse_args()
    n = 200 if args.quick else args.n
    image_rows, image_failures = bench_images(n, args.seed, args.image_size)
    audio_rows, audio_failures = bench_audio(n, args.seed, args.sample_rate)
    rows = image_rows + audio_rows
    columns = [
        "modality",
        "condition",
        "n",
        "exact",
        "count",
        "kind",
        "color",
        "size",
        "position",
        "notes",
        "pitch_set",
        "timbre",
        "ms/sample",
    ]
    shown = [
        {k: (f"{100 * v:.2f}%" if k not in ("n", "ms/sample") and isinstance(v, float) else v) for k, v in r.items()}
        for r in rows
    ]
    table = print_table(shown, columns)
    speed = bench_corpus_speed(min(n, 2000), args.seed)
    speed_table = print_table(speed, list(speed[0]))
    png = os.path.splitext(args.out)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(rows, png)
    payload = {
        "bench": "checker_accuracy",
        "n": n,
        "seed": args.seed,
        "rows": rows,
        "table": table,
        "corpus_speed": speed,
        "corpus_speed_table": speed_table,
        "clean_failures": {"image": image_failures, "audio": audio_failures},
        "plot": png,
    }
    print("wrote", write_json(args.out, payload), "and", png)


if __name__ == "__main__":
    main()
