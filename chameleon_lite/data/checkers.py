"""Deterministic judges of procedural pictures and clips: read a PNG/WAV (or an array) back into attributes.

No learned model: pictures are read by color projection and template matching against the renderer's own
coverage maps (:func:`chameleon_lite.data.procedural.coverage_maps`); clips by energy segmentation, a spectral
peak per note and the harmonic structure. On clean corpus samples the reading is exact; on blurred, noisy,
JPEG-compressed, resampled, VQ/codec-reconstructed or generated inputs it is a best guess, and it never fails
on content (an empty picture reads as zero shapes, silence as zero notes). Only inputs that are not pictures or
clips at all (unreadable file, wrong array rank) raise :class:`~chameleon_lite.errors.DataError`.

Pictures (:func:`check_image`)
    1. Every pixel is projected onto each segment background -> palette color; the fitted mix ``alpha`` and its
       residual tell how much of which color it holds (anti-aliased edges read as fractional coverage).
    2. In each 3x3 cell the color holding the most coverage (over pixels at least :data:`SOLID` covered) wins;
       a cell holds a shape when that coverage reaches :data:`PRESENCE` of the smallest shape's area.
    3. The cell's coverage map is fitted (least squares) by every (kind, size) template, each blurred by
       each of :data:`BLURS`, shifted by up to :data:`MAX_SHIFT` pixels, and optionally faded (:data:`GAIN`),
       so soft, misplaced or faded reconstructions still match their own outline; the best fit names the
       kind and size.
Clips (:func:`check_audio`)
    1. Resample to :data:`ANALYSIS_RATE` with soxr; 20 ms RMS frames; a note is a run above a threshold
       derived from the peak and the noise floor; a run whose pitch changes part-way is split there.
    2. Pitch: the strongest spectral peak between C4 and C6 (Hann window, zero padding, parabolic
       interpolation), rounded to the nearest semitone of :data:`~chameleon_lite.data.procedural.PITCHES`.
    3. Timbre: amplitudes of harmonics 2 and 3 relative to the fundamental, averaged over notes weighted by
       length, nearest of sine (0, 0), square (0, 1/3) and sawtooth (1/2, 1/3).

Comparisons (:func:`compare_image`, :func:`compare_audio`) return a :class:`Match`: ``exact`` and one flag per
attribute. Caption parsers (:func:`parse_image_caption`, :func:`parse_audio_caption`) read the corpus's own
caption/prompt wording, so a generated caption can be judged with the same comparisons.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections import Counter
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, UnidentifiedImageError

from chameleon_lite.data.procedural import (
    BACKGROUND,
    COLOR_NAMES,
    COLORS,
    MIDI_C4,
    PITCHES,
    POSITIONS,
    SHAPE_KINDS,
    SIZE_NAMES,
    TIMBRES,
    AudioSpec,
    ImageSpec,
    Shape,
    cell_box,
    coverage_maps,
    midi_to_pitch,
    pitch_frequency,
)
from chameleon_lite.errors import DataError

MAX_SHIFT = 2  # pixels a template may move when matched
# Gaussian blurs (pixels, at a 64-pixel side) of the template sets: a soft reconstruction is matched against a
# soft template, so a blurred small cross does not read as a diamond.
BLURS = (0.0, 0.75, 1.5, 2.5)
GAIN = (0.5, 1.0)  # template gains tried for faded shapes ...
SWITCH = 0.3  # ... and taken only when they leave less than this fraction of the plain fit's error
SOLID = 0.35  # only pixels at least this covered count as votes for a shape (keeps noise from adding up)
PRESENCE = 0.4  # a cell holds a shape when its color covers this fraction of the smallest template's area
MIN_SIDE = 32  # smaller inputs are upscaled first, so the 3x3 grid still has pixels to look at
MAX_SIDE = 128  # larger inputs are averaged down first (templates cost memory in the square of the side)

ANALYSIS_RATE = 16000
FRAME = 320  # 20 ms RMS frames ...
HOP = 80  # ... every 5 ms
SILENCE = 1e-3  # RMS below this everywhere: no notes
MIN_NOTE = 0.03  # seconds; shorter active runs are clicks, not notes
MERGE_GAP = 0.015  # seconds; shorter dips do not split a note
TRACK_WINDOW = 1024  # 64 ms windows for the within-note pitch track
TRACK_HOP = 256
TRACK_MIN_RUN = 4  # windows a new pitch must last before a note is split there
TONAL = 0.25  # a note holds at least this fraction of its power in harmonics 1-3 (white noise holds a few %)
_BAND = (pitch_frequency(PITCHES[0]) * 2 ** (-1 / 24), pitch_frequency(PITCHES[-1]) * 2 ** (1 / 24))
_TIMBRE_PROTOTYPES = {"sine": (0.0, 0.0), "square": (0.0, 1 / 3), "sawtooth": (0.5, 1 / 3)}


# ---------------------------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class ShapeReading:
    """One shape as read from a picture. ``score`` is the soft IoU with the best template (1 = perfect)."""

    kind: str
    color: str
    size: str
    position: str
    score: float = 1.0

    def as_shape(self) -> Shape:
        return Shape(kind=self.kind, color=self.color, size=self.size, position=self.position)


@dataclasses.dataclass(frozen=True)
class ImageAttributes:
    """What a picture shows, shapes in grid order (row-major)."""

    shapes: tuple[ShapeReading, ...]

    def to_spec(self) -> ImageSpec:
        return ImageSpec(tuple(s.as_shape() for s in self.shapes))


@dataclasses.dataclass(frozen=True)
class AudioAttributes:
    """What a clip plays: notes in order (with onsets/durations in seconds and measured Hz) and one timbre.

    ``timbre`` is None when there are no notes.
    """

    notes: tuple[str, ...]
    timbre: str | None
    onsets: tuple[float, ...] = ()
    durations: tuple[float, ...] = ()
    frequencies: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Match:
    """Result of comparing a reading with the truth: all attributes, and each one."""

    exact: bool
    attributes: dict[str, bool]


# ---------------------------------------------------------------------------------------------- images
def _load_image(image: Any) -> np.ndarray:
    """Path / PIL image / array -> float32 [H, W, 3] in [0, 255]."""

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"{os.fspath(image)}: cannot read image ({e})") from None
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # [C, H, W] -> [H, W, C]
    if arr.ndim == 2:
        arr = arr[..., None]
    if (
        arr.ndim != 3
        or arr.shape[-1] not in (1, 3, 4)
        or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool)
    ):
        raise DataError(
            f"expected an image array [H, W], [H, W, 1|3|4] or [3, H, W], got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr[..., :3] if arr.shape[-1] != 1 else np.repeat(arr, 3, axis=-1)
    out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if not np.issubdtype(arr.dtype, np.integer) and out.size and out.max() <= 1.0:
        out = out * 255.0  # float pictures in [0, 1]
    return np.clip(out, 0.0, 255.0)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] matrix applying a Gaussian blur of ``sigma`` pixels along one axis (zero outside; identity for 0)."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    i = np.arange(n)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _CellTemplates:
    windows: np.ndarray  # [B, K, S, 2m+1, 2m+1, h, w]: every blurred, shifted template cropped to the cell box
    energy: np.ndarray  # [B, K, S, 2m+1, 2m+1]: sum of squares of each window
    presence: float  # minimum vote mass for a shape


@functools.lru_cache(maxsize=4)
def _templates(height: int, width: int) -> tuple[_CellTemplates, ...]:
    """Per grid cell: the coverage maps zero-padded by MAX_SHIFT, blurred by each of BLURS, as shifted windows."""
    maps = coverage_maps(height, width)
    m = MAX_SHIFT
    padded = np.pad(maps, ((0, 0), (0, 0), (0, 0), (m, m), (m, m)))
    scale = min(height, width) / 64.0
    blurred = np.stack(
        [_blur_matrix(height + 2 * m, b * scale) @ padded @ _blur_matrix(width + 2 * m, b * scale).T for b in BLURS]
    )  # [B, K, S, 9, H+2m, W+2m]
    min_area = maps.sum(axis=(-2, -1)).min(axis=(0, 1))  # [9]
    cells = []
    for cell in range(len(POSITIONS)):
        r0, r1, c0, c1 = cell_box(cell, height, width)
        t = np.ascontiguousarray(blurred[:, :, :, cell, r0 : r1 + 2 * m, c0 : c1 + 2 * m])
        windows = np.lib.stride_tricks.sliding_window_view(t, (r1 - r0, c1 - c0), axis=(-2, -1))
        energy = np.einsum("...hw,...hw->...", windows, windows)
        cells.append(_CellTemplates(windows=windows, energy=energy, presence=PRESENCE * float(min_area[cell])))
    return tuple(cells)


def _color_coverage(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the best-fitting palette color [H, W] and its coverage in [0, 1] [H, W] (0 = background)."""
    bg = np.asarray(BACKGROUND, np.float32)
    d = np.asarray([COLORS[c] for c in COLOR_NAMES], np.float32) - bg  # [C, 3]
    x = img - bg  # [H, W, 3]
    alpha = np.clip(x @ d.T / (d * d).sum(axis=1), 0.0, 1.0)  # [H, W, C]
    resid = np.linalg.norm(x[..., None, :] - alpha[..., None] * d, axis=-1)  # [H, W, C]
    best = resid.argmin(axis=-1)
    a = np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]
    r = np.take_along_axis(resid, best[..., None], axis=-1)[..., 0]
    # A pixel far off the whole bg -> color segment is not that color at all (noise, a foreign hue).
    a = np.where(r < 0.5 * np.linalg.norm(d, axis=1)[best], a, 0.0)
    return best, a.astype(np.float32)


def check_image(image: Any) -> ImageAttributes:
    """Read the shapes of a picture.

    image: a path (PNG or anything PIL reads), a PIL image, or an array uint8 [H, W, 3] (also [H, W], [H, W, 4],
    [3, H, W]; float arrays in [0, 1]). Any size; the 3x3 grid is laid over the whole picture.
    Returns the shapes found, one per occupied cell, in grid order.
    """
    img = _load_image(image)
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        return ImageAttributes(())
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        # Upscale tiny pictures so the grid has pixels; average big ones down (coverage stays coverage) so the
        # template cache stays small.
        scale = min(max(MIN_SIDE / min(h, w), 1.0), MAX_SIDE / max(h, w))
        size = (max(round(w * scale), 1), max(round(h * scale), 1))
        resample = Image.BILINEAR if scale > 1 else Image.BOX
        img = np.asarray(Image.fromarray(np.rint(img).astype(np.uint8)).resize(size, resample), np.float32)
        h, w = img.shape[:2]
        if min(h, w) < 3:  # a sliver: no 3x3 grid to read
            return ImageAttributes(())
    best, cov = _color_coverage(img)
    templates = _templates(h, w)
    shapes = []
    for cell in range(len(POSITIONS)):
        r0, r1, c0, c1 = cell_box(cell, h, w)
        cb, cc = best[r0:r1, c0:c1], cov[r0:r1, c0:c1]
        votes = np.bincount(
            cb.reshape(-1), weights=np.where(cc >= SOLID, cc, 0.0).reshape(-1), minlength=len(COLOR_NAMES)
        )
        color = int(votes.argmax())
        tc = templates[cell]
        if votes[color] < max(tc.presence, 1.0):  # at least one pixel's worth, even on degenerate grids
            continue
        a = np.where(cb == color, cc, 0.0).astype(np.float32)  # [h, w] coverage by the winning color
        # Two fits of every blurred, shifted template T to a: as is (sum of squared differences), and scaled by
        # the least-squares gain g in GAIN. The scaled fit is taken only when it explains the cell much better
        # (SWITCH), so a faded shape still matches its own outline, while a small template is not inflated to
        # fit a blurred blob when the plain fit is about as good.
        dot = np.einsum("...hw,hw->...", tc.windows, a)  # [B, K, S, 2m+1, 2m+1]
        a2 = float((a * a).sum())
        plain = tc.energy - 2.0 * dot + a2
        g = np.clip(dot / np.maximum(tc.energy, 1e-9), *GAIN)
        scaled = g * g * tc.energy - 2.0 * g * dot + a2
        i_plain, i_scaled = int(plain.argmin()), int(scaled.argmin())
        choice = i_scaled if scaled.flat[i_scaled] < SWITCH * plain.flat[i_plain] else i_plain
        b, k, s, dy, dx = np.unravel_index(choice, plain.shape)
        tw = tc.windows[b, k, s, dy, dx]
        score = float(np.minimum(tw, a).sum() / max(np.maximum(tw, a).sum(), 1e-6))
        shapes.append(
            ShapeReading(
                kind=SHAPE_KINDS[k], color=COLOR_NAMES[color], size=SIZE_NAMES[s], position=POSITIONS[cell], score=score
            )
        )
    return ImageAttributes(tuple(shapes))


# ---------------------------------------------------------------------------------------------- audio
def _load_audio(audio: Any, sample_rate: int | None) -> np.ndarray:
    """Path / array -> float64 mono [T] at ANALYSIS_RATE."""
    if isinstance(audio, (str, os.PathLike)):
        try:
            data, sample_rate = sf.read(os.fspath(audio), dtype="float64", always_2d=True)
        except (RuntimeError, OSError, ValueError) as e:  # soundfile raises LibsndfileError (a RuntimeError)
            raise DataError(f"{os.fspath(audio)}: cannot read audio ({e})") from None
        x = data.mean(axis=1)
    else:
        arr = np.asarray(audio)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or arr.ndim not in (1, 2):
            raise DataError(f"expected a waveform [T], [T, C] or [C, T], got shape {arr.shape} dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.integer):
            x = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max + 1)
        else:
            x = arr.astype(np.float64)
        if x.ndim == 2:
            x = x.mean(axis=1) if x.shape[1] <= x.shape[0] else x.mean(axis=0)
        if sample_rate is None:
            sample_rate = ANALYSIS_RATE
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise DataError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if sample_rate != ANALYSIS_RATE and x.size:
        x = soxr.resample(x, int(sample_rate), ANALYSIS_RATE)
    return np.asarray(x, np.float64)


def _frame_rms(x: np.ndarray) -> np.ndarray:
    """RMS of FRAME-sample frames every HOP samples: [1 + (T - FRAME) // HOP]."""
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(0, len(x) - FRAME + 1, HOP)
    return np.sqrt(np.maximum(c[starts + FRAME] - c[starts], 0.0) / FRAME)


def _active_runs(env: np.ndarray) -> list[tuple[int, int]]:
    """Half-open frame ranges where the envelope is above the note threshold."""
    peak = float(env.max())
    floor = float(np.percentile(env, 10))
    # Between 12% and 50% of the peak: above a noise floor if there is one, but a clip that never rests still has notes.
    thr = max(min(max(0.12 * peak, 3.0 * floor), 0.5 * peak), SILENCE)
    active = np.concatenate([[False], env > thr, [False]])
    edges = np.flatnonzero(np.diff(active.astype(np.int8)))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    merged: list[tuple[int, int]] = []
    for a, b in runs:
        if merged and (a - merged[-1][1]) * HOP < MERGE_GAP * ANALYSIS_RATE:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return [(a, b) for a, b in merged if (b - a) * HOP + FRAME - HOP >= MIN_NOTE * ANALYSIS_RATE]


def _spectrum(x: np.ndarray, min_fft: int) -> tuple[np.ndarray, float]:
    """Magnitude spectrum of a Hann-windowed, zero-padded chunk, and the bin width in Hz."""
    n = max(min_fft, 1 << int(math.ceil(math.log2(max(len(x), 1) * 4))))
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return mag, ANALYSIS_RATE / n


def _peak_frequency(mag: np.ndarray, bin_hz: float) -> float:
    """Frequency of the strongest peak inside the pitch band, refined by parabolic interpolation on log magnitude."""
    lo, hi = int(_BAND[0] / bin_hz), min(int(math.ceil(_BAND[1] / bin_hz)), len(mag) - 2)
    i = lo + int(mag[lo : hi + 1].argmax())
    if 0 < i < len(mag) - 1:
        a, b, c = np.log(mag[i - 1 : i + 2] + 1e-12)
        denom = a - 2 * b + c
        off = 0.5 * (a - c) / denom if denom < 0 else 0.0
        return (i + float(np.clip(off, -0.5, 0.5))) * bin_hz
    return i * bin_hz


def _to_midi(f: float) -> int:
    m = int(round(69 + 12 * math.log2(max(f, 1e-3) / 440.0)))
    return min(max(m, MIDI_C4), MIDI_C4 + len(PITCHES) - 1)


def _split_by_pitch(x: np.ndarray) -> list[tuple[int, int]]:
    """Split one active run (samples) where its pitch changes and stays changed; half-open sample ranges."""
    n = len(x)
    if n < TRACK_WINDOW + TRACK_MIN_RUN * TRACK_HOP:
        return [(0, n)]
    starts = np.arange(0, n - TRACK_WINDOW + 1, TRACK_HOP)
    track = np.array([_to_midi(_peak_frequency(*_spectrum(x[s : s + TRACK_WINDOW], 4096))) for s in starts])
    pad = np.pad(track, 2, mode="edge")
    track = np.median(np.lib.stride_tricks.sliding_window_view(pad, 5), axis=1).astype(int)
    runs: list[list[int]] = []  # [first window, last window, midi]
    for i, m in enumerate(track):
        if runs and runs[-1][2] == m:
            runs[-1][1] = i
        else:
            runs.append([i, i, int(m)])
    kept: list[list[int]] = []
    for r in runs:  # a short excursion belongs to the note before it
        if kept and (r[1] - r[0] + 1 < TRACK_MIN_RUN or kept[-1][2] == r[2]):
            kept[-1][1] = r[1]
        else:
            kept.append(r)
    if len(kept) > 1 and kept[0][1] - kept[0][0] + 1 < TRACK_MIN_RUN:
        kept[1][0] = kept[0][0]
        kept.pop(0)
    bounds = [0] + [int(starts[r[0]]) + TRACK_WINDOW // 2 for r in kept[1:]] + [n]
    return list(zip(bounds[:-1], bounds[1:]))


def _harmonic(mag: np.ndarray, bin_hz: float, f: float) -> float:
    """Largest magnitude within 2% (at least 2 bins) of frequency f; 0 above the analysis band."""
    if f >= 0.48 * ANALYSIS_RATE:
        return 0.0
    half = max(0.02 * f / bin_hz, 2.0)
    lo, hi = int(max(f / bin_hz - half, 0)), int(min(f / bin_hz + half, len(mag) - 1))
    return float(mag[lo : hi + 1].max())


def _tonality(mag: np.ndarray, bin_hz: float, f0: float, length: int) -> float:
    """Fraction of a chunk's power within harmonics 1-3 of f0 (Hann main lobe or 3%, whichever is wider)."""
    power = mag.astype(np.float64) ** 2
    total = float(power.sum())
    if total <= 1e-18:
        return 0.0
    lobe = 3.0 * ANALYSIS_RATE / max(length, 1)  # Hz: the Hann main lobe is 2 bins of the unpadded chunk wide
    harmonic = 0.0
    for k in (1, 2, 3):
        half = max(0.03 * k * f0, lobe)
        lo, hi = int(max(k * f0 - half, 0) / bin_hz), int(min(k * f0 + half, 0.5 * ANALYSIS_RATE) / bin_hz)
        harmonic += float(power[lo : hi + 1].sum())
    return harmonic / total


def check_audio(audio: Any, sample_rate: int | None = None) -> AudioAttributes:
    """Read the notes and timbre of a clip.

    audio: a path (WAV/FLAC/... via soundfile; its own rate is used) or a waveform [T] (also [T, C] or [C, T],
    averaged to mono; floats in [-1, 1] or integer PCM) at ``sample_rate`` Hz (default 16000). Other rates are
    resampled to 16 kHz with soxr. Returns notes in time order; silence gives zero notes and timbre None.
    """
    x = _load_audio(audio, sample_rate)
    x = x - x.mean() if len(x) else x  # a DC offset is not sound
    if len(x) < FRAME:
        return AudioAttributes((), None)
    env = _frame_rms(x)
    if float(env.max()) < SILENCE:
        return AudioAttributes((), None)
    notes, onsets, durations, freqs, ratios, weights = [], [], [], [], [], []
    for a, b in _active_runs(env):
        s0, s1 = a * HOP, min((b - 1) * HOP + FRAME, len(x))
        for p0, p1 in _split_by_pitch(x[s0:s1]):
            seg = x[s0 + p0 : s0 + p1]
            trim = len(seg) // 10  # skip attack and release
            core = seg[trim : len(seg) - trim] if len(seg) - 2 * trim >= 64 else seg
            core = core - core.mean()
            mag, bin_hz = _spectrum(core, 16384)
            f0 = _peak_frequency(mag, bin_hz)
            if _tonality(mag, bin_hz, f0, len(core)) < TONAL:
                continue  # noise or a click, not a note
            a1 = max(_harmonic(mag, bin_hz, f0), 1e-12)
            ratios.append((_harmonic(mag, bin_hz, 2 * f0) / a1, _harmonic(mag, bin_hz, 3 * f0) / a1))
            weights.append(len(seg))
            notes.append(midi_to_pitch(_to_midi(f0)))
            onsets.append((s0 + p0) / ANALYSIS_RATE)
            durations.append((p1 - p0) / ANALYSIS_RATE)
            freqs.append(f0)
    if not notes:
        return AudioAttributes((), None)
    r2, r3 = np.average(np.asarray(ratios), axis=0, weights=np.asarray(weights, np.float64))
    timbre = min(TIMBRES, key=lambda t: (r2 - _TIMBRE_PROTOTYPES[t][0]) ** 2 + (r3 - _TIMBRE_PROTOTYPES[t][1]) ** 2)
    return AudioAttributes(tuple(notes), timbre, tuple(onsets), tuple(durations), tuple(freqs))


# ---------------------------------------------------------------------------------------------- comparison
def _as_shapes(x: ImageAttributes | ImageSpec | dict[str, Any]) -> list[Shape]:
    if isinstance(x, dict):
        x = ImageSpec.from_meta(x)
    if isinstance(x, ImageAttributes):
        return [s.as_shape() for s in x.shapes]
    if isinstance(x, ImageSpec):
        return list(x.shapes)
    raise DataError(f"expected ImageAttributes, ImageSpec or an image meta dict, got {type(x).__name__}")


def compare_image(reading: ImageAttributes | ImageSpec | dict[str, Any], truth: ImageSpec | dict[str, Any]) -> Match:
    """Compare a picture reading with the truth (a spec or its manifest ``meta`` record).

    ``exact``: the same set of shapes. Per attribute (``count``, ``kind``, ``color``, ``size``, ``position``):
    the multiset of that attribute's values agrees, so "right colors in the wrong places" still scores color.
    """
    got, want = _as_shapes(reading), _as_shapes(truth)
    attrs = {"count": len(got) == len(want)}
    for field in ("kind", "color", "size", "position"):
        attrs[field] = Counter(getattr(s, field) for s in got) == Counter(getattr(s, field) for s in want)
    return Match(exact=Counter(got) == Counter(want), attributes=attrs)


def _as_notes(x: AudioAttributes | AudioSpec | dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    if isinstance(x, dict):
        x = AudioSpec.from_meta(x)
    if isinstance(x, (AudioAttributes, AudioSpec)):
        return tuple(x.notes), x.timbre
    raise DataError(f"expected AudioAttributes, AudioSpec or an audio meta dict, got {type(x).__name__}")


def compare_audio(reading: AudioAttributes | AudioSpec | dict[str, Any], truth: AudioSpec | dict[str, Any]) -> Match:
    """Compare a clip reading with the truth (a spec or its manifest ``meta`` record).

    ``exact``: same notes in the same order and same timbre. Per attribute: ``count`` (number of notes),
    ``notes`` (the sequence), ``pitch_set`` (the notes ignoring order and repeats), ``timbre``, and
    ``first_note`` (the first note alone: a writer that finds the first note but loses its place in a melody is
    right on it and wrong on ``notes``).
    """
    (got, gt), (want, wt) = _as_notes(reading), _as_notes(truth)
    attrs = {
        "count": len(got) == len(want),
        "notes": got == want,
        "pitch_set": set(got) == set(want),
        "timbre": gt == wt,
        "first_note": got[:1] == want[:1],
    }
    return Match(exact=attrs["notes"] and attrs["timbre"], attributes=attrs)


# ---------------------------------------------------------------------------------------------- captions
def _alternation(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_SHAPE_PHRASE = re.compile(
    rf"\b({_alternation(SIZE_NAMES)})\s+({_alternation(COLOR_NAMES)})\s+({_alternation(SHAPE_KINDS)})"
    rf"\s+(?:at|in)\s+the\s+({_alternation(POSITIONS)})\b",
    re.IGNORECASE,
)
_PITCH_WORD = re.compile(r"(?<![\w#])([A-G]#?[0-9])(?![\w#])")
_TIMBRE_WORD = re.compile(rf"\b({_alternation(TIMBRES)})\b", re.IGNORECASE)


def parse_image_caption(text: str) -> ImageAttributes:
    """Shapes named in a caption/prompt worded like the corpus ("a large red circle at the top left"), in text order.

    Text that names no shape gives zero shapes; phrases outside the corpus wording are not understood.
    """
    shapes = tuple(
        ShapeReading(kind=k.lower(), color=c.lower(), size=s.lower(), position=" ".join(p.lower().split()))
        for s, c, k, p in _SHAPE_PHRASE.findall(text)
    )
    return ImageAttributes(shapes)


def parse_audio_caption(text: str) -> AudioAttributes:
    """Notes (``C#4`` style, in text order, only those in PITCHES) and the first timbre word of a caption/prompt."""
    notes = tuple(n for n in _PITCH_WORD.findall(text) if n in PITCHES)
    m = _TIMBRE_WORD.search(text)
    return AudioAttributes(notes, m.group(1).lower() if m else None)
