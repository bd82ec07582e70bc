"""Reading clips a user gives (files or arrays): the container checked against truncation from its header, the
length bounded before decoding, several channels averaged, another rate converted with soxr, and every failure
one :class:`DataError` naming the file. The audio codec, the manifest checks and ``generate --audio`` all read
clips through here."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from chameleon_lite.data.media import check_media_path, is_tensor
from chameleon_lite.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 3600.0  # the longest clip a reader accepts unless told otherwise (AudioCodecConfig.max_seconds)
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 1000, 768000
MAX_CHANNELS = 64
# One sample at 16 kHz: a shorter clip could resample to no sample at all (soxr rounds; model rates are >= 8 kHz).
MIN_SECONDS = 1 / 16000
# Decoded samples (frames x channels) one clip may hold, 2 GiB as float32 (an hour of 48 kHz stereo fits): bounds
# what a small compressed file (an hour of FLAC silence at 768 kHz) can make the reader allocate.
MAX_DECODED_SAMPLES = 1 << 29
_UNKNOWN_SIZE = (0, 0xFFFFFFFF)  # what streaming writers put in a size field they cannot know yet
# (container id, form types, id of the chunk holding the samples, byte order of sizes): WAV, RF64, AIFF
_CONTAINERS = (
    (b"RIFF", (b"WAVE",), b"data", "little"),
    (b"RF64", (b"WAVE",), b"data", "little"),
    (b"FORM", (b"AIFF", b"AIFC"), b"SSND", "big"),
)
_MAX_CHUNKS = 64  # the samples follow a format chunk and a few metadata chunks; do not walk a hostile chain forever


@dataclasses.dataclass
class AudioInfo:
    """What :func:`load_audio` did to a clip: its source rate and channels, and whether it was converted."""

    source: str
    sample_rate: int
    channels: int
    seconds: float
    resampled: bool
    downmixed: bool

    def describe(self) -> str:
        steps = []
        if self.downmixed:
            steps.append(f"{self.channels} channels averaged to mono")
        if self.resampled:
            steps.append(f"resampled from {self.sample_rate} Hz")
        return f"{self.source}: " + (", ".join(steps) if steps else "used as is")


def _name(value: Any) -> str:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else f"<{type(value).__name__}>"


def _reason(e: BaseException) -> str:
    """The first line of an exception's message: the CLI prints errors as one line."""
    return (str(e).splitlines() or [type(e).__name__])[0]


@contextlib.contextmanager
def _quiet_decoder() -> Iterator[None]:
    """Silence file descriptor 2 around a libsndfile call: its MP3 decoder (mpg123) prints notes about a damaged
    stream straight to it, while the damage is reported as the one-line DataError raised here."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _container_truncated(path: str) -> bool:
    """True when a WAV, RF64, W64, AIFF or AU file is shorter than its header says: its container size or the
    chunk holding its samples runs past the end of the file (libsndfile would quietly read what is there)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(40)
        if len(head) < 12:
            return False
        if head[:4] == b".snd":  # AU: the header holds the data offset and size
            n = int.from_bytes(head[8:12], "big")
            return n != 0xFFFFFFFF and int.from_bytes(head[4:8], "big") + n > size
        if head[:4] == b"riff" and head[24:28] == b"wave":  # Sony Wave64: GUID ids, 64-bit sizes
            return int.from_bytes(head[16:24], "little") > size or _w64_samples_end(f) > size
        form = next((c for c in _CONTAINERS if head[:4] == c[0] and head[8:12] in c[1]), None)
        if form is None:
            return False
        declared = int.from_bytes(head[4:8], form[3])
        if declared not in _UNKNOWN_SIZE and declared + 8 > size:
            return True
        return _samples_end(f, form[2], form[3]) > size


def _w64_samples_end(f: Any) -> int:
    """Where a Wave64 data chunk says it ends (0: not found). Chunk sizes count the 24-byte chunk header; chunks
    are aligned to 8 bytes."""
    pos = 40
    for _ in range(_MAX_CHUNKS):
        f.seek(pos)
        chunk = f.read(24)
        if len(chunk) < 24:
            return 0
        n = int.from_bytes(chunk[16:24], "little")
        if chunk[:4] == b"data":
            return pos + n
        if n < 24:  # a size short of its own header: malformed, left to libsndfile to refuse
            return 0
        pos += (n + 7) & ~7
    return 0


def _samples_end(f: Any, samples_id: bytes, order: str) -> int:
    """Where the chunk holding the samples says it ends (0: not found, or its size left unknown). RF64 keeps the
    size of a data chunk over 4 GiB in its ds64 chunk."""
    pos, ds64_data = 12, None
    for _ in range(_MAX_CHUNKS):
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8:
            return 0
        n = int.from_bytes(chunk[4:8], order)
        if chunk[:4] == b"ds64":
            ds64 = f.read(16)
            ds64_data = int.from_bytes(ds64[8:16], "little") if len(ds64) == 16 else None
        if chunk[:4] == samples_id:
            n = ds64_data if n == 0xFFFFFFFF and ds64_data is not None else n
            return 0 if n in _UNKNOWN_SIZE else pos + 8 + n
        pos += 8 + n + (n & 1)  # chunks are padded to an even length
    return 0


def _sf_reason(e: BaseException, path: str) -> str:
    """libsndfile's message without the path it repeats. Its 'not a regular file' is wrong here (check_media_path
    ran first): it is what an unrecognised MP3-like stream gets."""
    reason = _reason(e).removeprefix(f"Error opening {path!r}: ")
    return "format not recognised" if reason.startswith("File does not exist or is not a regular file") else reason


def _check_clip(name: str, frames: int, sr: int, channels: int, max_seconds: float) -> None:
    """The limits of a clip's shape: from a file's header before decoding it, or from an array's shape."""
    if channels > MAX_CHANNELS:
        raise DataError(f"{name}: {channels} channels is more than {MAX_CHANNELS}")
    if not MIN_SOURCE_RATE <= sr <= MAX_SOURCE_RATE:
        raise DataError(f"{name}: sample rate {sr} Hz is outside [{MIN_SOURCE_RATE}, {MAX_SOURCE_RATE}]")
    if frames > max_seconds * sr:
        raise DataError(
            f"{name}: {frames / sr:.4g} s of audio is longer than the limit of {max_seconds:.4g} s "
            "(AudioCodecConfig.max_seconds)"
        )
    if frames * channels > MAX_DECODED_SAMPLES:
        raise DataError(
            f"{name}: {frames} frames x {channels} channels is more than {MAX_DECODED_SAMPLES} decoded "
            "samples; cut it into shorter clips"
        )


def _checked_samples(data: np.ndarray, sr: int, name: str) -> np.ndarray:
    """float32 [T, C] -> the same, checked: no clip without samples, NaN/inf or shorter than MIN_SECONDS.

    Samples beyond [-1, 1] (float files and arrays can hold them) are clipped to [-1, 1] with a one-line warning
    on stderr: the codec represents only that range, and a peak a little over full scale is common in float
    masters, too common to refuse them.
    """
    if data.size == 0:
        raise DataError(f"{name}: empty audio clip (no samples)")
    if not np.isfinite(data).all():
        raise DataError(f"{name}: audio holds NaN or infinite samples")
    if len(data) < MIN_SECONDS * sr:
        raise DataError(
            f"{name}: {len(data)} sample(s) at {sr} Hz is shorter than the minimum of "
            f"{MIN_SECONDS * 1000:g} ms (one sample at 16 kHz)"
        )
    peak = float(np.abs(data).max())
    if peak > 1.0:
        over = int(np.count_nonzero(np.abs(data) > 1.0))
        log.warning("%s: %d samples beyond [-1, 1] (peak %.4g) clipped to [-1, 1]", name, over, peak)
        data = np.clip(data, -1.0, 1.0)
    return data


def read_audio_file(path: str, max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
    """Decode one audio file -> (float32 [T, C] in [-1, 1], its sample rate), at the file's own rate and channels.

    The one judge of audio files: tokenizing, ``generate --audio`` and ``data validate`` all read files through
    it, so validation passes exactly what tokenizing accepts. Refused with a DataError naming the file: a path
    that is not a non-empty regular file, anything libsndfile cannot read (text, 0 or over 1024 channels), a WAV,
    RF64, W64, AIFF or AU file shorter than its header says, no samples, more than MAX_CHANNELS channels, a rate outside [MIN_SOURCE_RATE,
    MAX_SOURCE_RATE], more than ``max_seconds`` or MAX_DECODED_SAMPLES (all judged from the header, before
    decoding), NaN/inf samples, less than MIN_SECONDS. Samples beyond [-1, 1] are clipped with a warning.
    """

    check_media_path(path, "audio")
    try:
        with _quiet_decoder():
            info = sf.info(path)
    except (RuntimeError, OSError, ValueError, TypeError) as e:  # libsndfile errors are RuntimeError subclasses
        raise DataError(f"{path}: not a readable audio file ({_sf_reason(e, path)})") from None
    if _container_truncated(path):
        raise DataError(f"{path}: truncated audio file (shorter than its header says)")
    if info.frames <= 0:
        raise DataError(f"{path}: empty audio file (no samples)")
    _check_clip(path, info.frames, info.samplerate, info.channels, max_seconds)
    try:
        with _quiet_decoder():
            data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise DataError(f"{path}: cannot decode audio ({_sf_reason(e, path)})") from None
    if len(data) < info.frames:
        raise DataError(f"{path}: truncated audio file (header promises {info.frames} frames, {len(data)} present)")
    return _checked_samples(data, int(sr), path), int(sr)


def _as_array(value: Any) -> np.ndarray:
    if is_tensor(value):
        value = value.detach().cpu().float().numpy()
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.number)) or np.iscomplexobj(arr) or arr.ndim not in (1, 2):
        raise DataError(f"expected a real waveform [T] or [T, C] (or [C, T]), got shape {arr.shape} dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 1:
        return arr[:, None]
    if arr.shape[0] <= MAX_CHANNELS and arr.shape[1] > arr.shape[0]:  # [C, T] -> [T, C]
        arr = arr.T
    return arr


def load_audio(
    value: Any, target_rate: int, sample_rate: int | None = None, max_seconds: float = DEFAULT_MAX_SECONDS
) -> tuple[np.ndarray, AudioInfo]:
    """A path or waveform -> (mono float32 [T] at ``target_rate``, what was done to it).

    Files are read by :func:`read_audio_file` at their own rate. Arrays/tensors are [T], [T, C] or [C, T]
    (C <= 64), floats in [-1, 1] or integer PCM, at ``sample_rate`` (default: ``target_rate``), and meet the same
    limits. Several channels are averaged; another rate is converted with soxr (band-limited, high quality).
    Conversions are logged and returned in the info. Empty or too short clips and NaN/inf samples are refused
    with an error naming the source; samples beyond [-1, 1] are clipped with a warning.
    """
    name = _name(value)
    if isinstance(value, (str, os.PathLike)):
        data, sr = read_audio_file(os.fspath(value), max_seconds)
    else:
        data = _as_array(value)
        sr = target_rate if sample_rate is None else sample_rate
        if not isinstance(sr, (int, np.integer)) or not MIN_SOURCE_RATE <= sr <= MAX_SOURCE_RATE:
            raise DataError(
                f"{name}: sample_rate must be an integer in [{MIN_SOURCE_RATE}, {MAX_SOURCE_RATE}] Hz, got {sr!r}"
            )
        _check_clip(name, len(data), int(sr), data.shape[1], max_seconds)
        data = _checked_samples(data, int(sr), name)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    info = AudioInfo(
        name, int(sr), int(data.shape[1]), len(mono) / float(sr), int(sr) != target_rate, data.shape[1] > 1
    )
    if info.resampled:
        mono = soxr.resample(mono, int(sr), int(target_rate), quality="HQ")
    if info.resampled or info.downmixed:
        log.info(info.describe())
    return np.ascontiguousarray(mono, dtype=np.float32), info


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Any:
    """Triangular filters on the HTK mel scale from 0 Hz to Nyquist: a float32 torch tensor [n_mels, n_fft // 2 + 1]
    (the codec's spectral losses and the spoken-digit judge's front end)."""
    import torch  # lazy: reading audio files needs no torch (the commands' --help imports this module)

    mel = torch.linspace(0.0, 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0), n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10 ** (mel / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up, down = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return torch.minimum(up, down).clamp_min(0.0).float()
