"""Reliability of every reader of user media (issue 31): each bad input gets one clear line, never a traceback,
a hang or silent corruption; ``data validate`` and ``data tokenize`` judge every file alike."""

import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from toy import small_image_tokenizer

from chameleon_lite.cli import main
from chameleon_lite.data import audio_files as audio_mod
from chameleon_lite.data.audio_files import load_audio, read_audio_file
from chameleon_lite.data.image_files import fit_square, load_images, read_image_file
from chameleon_lite.data.manifest import check_audio_file, check_image_file, iter_documents, validate_manifest
from chameleon_lite.errors import DataError
from chameleon_lite.pretokenize import pretokenize
from chameleon_lite.tokenizers.audio import AudioCodecModel, AudioTokenizer, preset
from chameleon_lite.tokenizers.loader import Tokenizers
from chameleon_lite.tokenizers.text import TextTokenizer
from chameleon_lite.vocab import UnifiedVocab

GRAY = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit level once


@pytest.fixture
def no_hang():
    """Turns a read that never ends (a FIFO, /dev/zero) into a test failure instead of a stuck run."""

    def fail(*_):
        raise TimeoutError("the reader hung")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def rgb_of(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def img16(values: np.ndarray) -> Image.Image:
    """A 16-bit grayscale (I;16) PIL image of uint16 [H, W]."""
    return Image.frombytes("I;16", values.shape[::-1], values.astype("<u2").tobytes())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(path, w, h, color_type=0) -> str:
    """A PNG whose header claims w x h pixels and holds no pixel data."""
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )
    return str(path)


# ---------------------------------------------------------------------------------------------- image modes
def _save(tmp_path, im: Image.Image, ext: str, **kw) -> str:
    p = str(tmp_path / f"img.{ext}")
    im.save(p, **kw)
    return p


def _alpha_ramp() -> np.ndarray:
    return np.tile(np.array([255, 128, 0, 64], np.uint8), (16, 4))  # alpha by column


def _over_black(value: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return ((value.astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)


def case_1(tmp_path):
    bits = GRAY % 3 == 0
    return _save(tmp_path, Image.fromarray(bits).convert("1"), "png"), rgb_of(np.where(bits, 255, 0).astype(np.uint8))


def case_L(tmp_path):
    return _save(tmp_path, Image.fromarray(GRAY), "png"), rgb_of(GRAY)


def case_LA(tmp_path):
    a = _alpha_ramp()
    return _save(tmp_path, Image.fromarray(np.stack([GRAY, a], -1), "LA"), "png"), rgb_of(_over_black(GRAY, a))


def case_La(tmp_path):
    a = _alpha_ramp()
    premultiplied = _over_black(GRAY, a)  # La stores colour already multiplied by alpha
    im = Image.fromarray(np.stack([premultiplied, a], -1), "LA")
    im = Image.frombytes("La", im.size, im.tobytes())
    return im, rgb_of(premultiplied)


def case_P(tmp_path):
    im = Image.fromarray(GRAY).convert("P")  # a grayscale palette covers every level exactly
    im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    pal = np.array([(i, 255 - i, i // 2) for i in range(256)], np.uint8)
    return _save(tmp_path, im, "png"), pal[np.asarray(im)]


def case_P_transparent(tmp_path):
    im = Image.fromarray(GRAY).convert("P")
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    expected = rgb_of(np.where(GRAY == 200, 0, GRAY).astype(np.uint8))  # index 200 is transparent
    return _save(tmp_path, im, "png", transparency=200), expected


def case_PA(tmp_path):
    a = _alpha_ramp()
    im = Image.frombytes("PA", (16, 16), np.stack([GRAY, a], -1).tobytes())  # palette index, alpha
    im.putpalette([v for i in range(256) for v in (255 - i, 255 - i, 255 - i)])
    return _save(tmp_path, im, "tiff"), rgb_of(_over_black(255 - GRAY, a))


def case_RGB(tmp_path):
    rgb = np.stack([GRAY, GRAY.T, 255 - GRAY], -1)
    return _save(tmp_path, Image.fromarray(rgb), "png"), rgb


def case_RGBA(tmp_path):
    rgb, a = np.stack([GRAY, GRAY.T, 255 - GRAY], -1), _alpha_ramp()
    return _save(tmp_path, Image.fromarray(np.dstack([rgb, a]), "RGBA"), "png"), _over_black(rgb, a[..., None])


def case_RGBa(tmp_path):
    rgb, a = np.stack([GRAY, GRAY.T, 255 - GRAY], -1), _alpha_ramp()
    pre = _over_black(rgb, a[..., None])
    return Image.frombytes("RGBa", (16, 16), np.dstack([pre, a]).tobytes()), pre


def case_RGBX(tmp_path):
    rgb = np.stack([GRAY, GRAY.T, 255 - GRAY], -1)
    return Image.frombytes("RGBX", (16, 16), np.dstack([rgb, np.full_like(GRAY, 7)]).tobytes()), rgb


def _ramp16() -> tuple[np.ndarray, np.ndarray]:
    v = np.rint(np.linspace(0, 65535, 256)).astype(np.uint16).reshape(16, 16)
    return v, np.rint(v / 257.0).astype(np.uint8)


def case_I16_png(tmp_path):
    v, g = _ramp16()
    return _save(tmp_path, img16(v), "png"), rgb_of(g)


def case_I16_exact_levels(tmp_path):
    return _save(tmp_path, img16(GRAY.astype(np.uint16) * 257), "png"), rgb_of(GRAY)


def case_I16B_tiff(tmp_path):
    v, g = _ramp16()
    return _save(tmp_path, Image.frombytes("I;16B", (16, 16), v.astype(">u2").tobytes()), "tiff"), rgb_of(g)


def case_I16L(tmp_path):
    v, g = _ramp16()
    return Image.frombytes("I;16L", (16, 16), v.astype("<u2").tobytes()), rgb_of(g)


def case_I16N(tmp_path):
    v, g = _ramp16()
    return Image.frombytes("I;16N", (16, 16), v.tobytes()), rgb_of(g)


def case_I_tiff(tmp_path):
    v, g = _ramp16()
    return _save(tmp_path, Image.fromarray(v.astype(np.int32), "I"), "tiff"), rgb_of(g)


def case_I_pnm16(tmp_path):
    v, g = _ramp16()
    p = tmp_path / "img.pgm"  # 16-bit PGM, which PIL opens as mode I
    p.write_bytes(b"P5\n16 16\n65535\n" + v.astype(">u2").tobytes())
    assert Image.open(p).mode == "I"
    return str(p), rgb_of(g)


def case_F_tiff(tmp_path):
    return _save(tmp_path, Image.fromarray(GRAY.astype(np.float32) / 255.0, "F"), "tiff"), rgb_of(GRAY)


def case_CMYK_tiff(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:4, :, 0] = 255  # cyan
    cmyk[4:8, :, 3] = 255  # black
    cmyk[8:12, :, 1] = 255  # magenta
    expected = np.full((16, 16, 3), 255, np.uint8)  # no ink: white
    expected[:4] = (0, 255, 255)
    expected[4:8] = 0
    expected[8:12] = (255, 0, 255)
    return _save(tmp_path, Image.fromarray(cmyk, "CMYK"), "tiff"), expected


def _round_trip(tmp_path, mode, ext):
    """A mildly coloured ramp in ``mode``; expected: PIL's own conversion of it back to RGB, which must also stay
    within a few levels of the ramp (no range or channel mix-up)."""
    rgb = np.stack([GRAY, GRAY * 0.9 + 10, GRAY * 0.8 + 20], -1).astype(np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    back = np.asarray(im.convert("RGB"))
    assert np.abs(back.astype(int) - rgb).mean() < 3
    return (_save(tmp_path, im, ext) if ext else im), back


def case_YCbCr_tiff(tmp_path):
    return _round_trip(tmp_path, "YCbCr", "tiff")


def case_LAB_tiff(tmp_path):
    return _round_trip(tmp_path, "LAB", "tiff")


def case_HSV(tmp_path):
    return _round_trip(tmp_path, "HSV", None)


def case_L_colour_key(tmp_path):
    return _save(tmp_path, Image.fromarray(GRAY), "png", transparency=100), rgb_of(
        np.where(GRAY == 100, 0, GRAY).astype(np.uint8)
    )


def case_I16_colour_key(tmp_path):
    v = GRAY.astype(np.uint16) * 257
    return _save(tmp_path, img16(v), "png", transparency=257 * 100), rgb_of(
        np.where(GRAY == 100, 0, GRAY).astype(np.uint8)
    )


# (case, mode PIL must report, tolerance in 8-bit levels: 0 unless a colour-space round trip through PIL rounds)
MODE_CASES = [
    (case_1, "1", 0),
    (case_L, "L", 0),
    (case_LA, "LA", 0),
    (case_La, "La", 1),
    (case_P, "P", 0),
    (case_P_transparent, "P", 0),
    (case_PA, "PA", 0),
    (case_RGB, "RGB", 0),
    (case_RGBA, "RGBA", 0),
    (case_RGBa, "RGBa", 2),
    (case_RGBX, "RGBX", 0),
    (case_I16_png, "I;16", 0),
    (case_I16_exact_levels, "I;16", 0),
    (case_I16B_tiff, "I;16B", 0),
    (case_I16L, "I;16L", 0),
    (case_I16N, "I;16N", 0),
    (case_I_tiff, "I", 0),
    (case_I_pnm16, "I", 0),
    (case_F_tiff, "F", 0),
    (case_CMYK_tiff, "CMYK", 0),
    (case_YCbCr_tiff, "YCbCr", 0),
    (case_LAB_tiff, "LAB", 0),
    (case_HSV, "HSV", 0),
    (case_L_colour_key, "L", 0),
    (case_I16_colour_key, "I;16", 0),
]


@pytest.mark.parametrize("case, mode, tol", MODE_CASES, ids=[c.__name__[5:] for c, _, _ in MODE_CASES])
def test_every_image_mode_loads_with_its_values_scaled_to_8_bits(tmp_path, case, mode, tol):
    src, expected = case(tmp_path)
    im = Image.open(src) if isinstance(src, str) else src
    assert im.mode == mode  # the case really exercises that mode
    out = load_images(src, 16)[0].astype(int)
    assert np.abs(out - expected).max() <= tol, f"{mode}: {out[..., 0].ravel()[:12]} vs {expected[..., 0].ravel()[:12]}"
    if isinstance(src, str):  # validate reads files exactly as tokenizing does
        assert check_image_file(src) == (16, 16)
        np.testing.assert_array_equal(read_image_file(src), load_images(src, 16)[0])


def test_a_16_bit_grayscale_non_square_picture_is_not_white(tmp_path):
    v = (np.linspace(0, 65535, 40)[None, :] * np.linspace(0.2, 1, 24)[:, None]).astype(np.uint16)  # 40 x 24
    p = tmp_path / "gray16.png"
    img16(v).save(p)
    eight = np.rint(v / 257.0).astype(np.uint8)
    out = load_images(str(p), 16)
    np.testing.assert_array_equal(out, load_images(eight, 16))
    assert out.mean() < 100  # the 8-bit version of this ramp is dark on average


@pytest.mark.parametrize(
    "values, match",
    [
        (np.array([[0, 70000]], np.int32), r"mode I\) has values in \[0, 70000\].*16-bit range"),
        (np.array([[-5, 100]], np.int32), r"mode I\) has values in \[-5, 100\]"),
    ],
)
def test_mode_i_outside_the_16_bit_range_is_refused(tmp_path, values, match):
    p = tmp_path / "wide.tif"
    Image.fromarray(values, "I").save(p)
    with pytest.raises(DataError, match=match) as e:
        load_images(str(p), 16)
    assert one_line(e).startswith(str(p))


@pytest.mark.parametrize(
    "values, match",
    [
        (np.array([[0.0, 2.5]], np.float32), r"float image \(mode F\) has values in \[0, 2.5\], expected \[0, 1\]"),
        (np.array([[-0.5, 0.5]], np.float32), r"values in \[-0.5, 0.5\]"),
        (np.array([[np.nan, 0.5]], np.float32), "NaN"),
    ],
)
def test_mode_f_outside_0_1_is_refused(tmp_path, values, match):
    p = tmp_path / "float.tif"
    Image.fromarray(values, "F").save(p)
    with pytest.raises(DataError, match=match) as e:
        load_images(str(p), 16)
    one_line(e)
    assert not validate_manifest(_manifest(tmp_path, [{"image": str(p)}])).ok


def test_an_unknown_mode_is_refused_by_name(monkeypatch):
    im = Image.new("L", (4, 4))
    monkeypatch.setattr(type(im), "mode", property(lambda self: "XYZ;9"))
    with pytest.raises(DataError, match=r"image #0: image mode XYZ;9 is not supported \(supported: .*I;16.*\)"):
        load_images(im, 16)


def test_exif_orientation_is_applied_to_files(tmp_path):
    a = np.zeros((8, 16), np.uint8)
    a[:, :8] = 255  # left half white, stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    p = tmp_path / "sideways.png"
    Image.fromarray(a).save(p, exif=exif)
    rgb = read_image_file(str(p))
    assert rgb.shape == (16, 8, 3)  # upright: taller than wide
    assert rgb[:8].min() == 255 and rgb[8:].max() == 0  # the white half is now on top


def test_damaged_metadata_is_no_python_warning(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "bad_exif.jpg"
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(p, exif=exif)
    data = bytearray(p.read_bytes())
    at = data.find(b"Exif")
    data[at + 10 : at + 30] = b"\xff" * 20  # the EXIF directory is garbage now
    p.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image_file(str(p)).shape in ((8, 16, 3), (16, 8, 3))


def test_a_png_text_bomb_is_one_line(tmp_path):
    p = tmp_path / "ztxt.png"
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
        + png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * (64 << 20)))
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 20))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(DataError, match="ztxt.png: cannot read image header") as e:
        check_image_file(str(p))
    one_line(e)


# ---------------------------------------------------------------------------------------------- image files
@pytest.mark.parametrize("kind", ["image", "audio"])
def test_a_directory_is_named_as_such(tmp_path, kind):
    read = (lambda p: load_images(p, 16)) if kind == "image" else (lambda p: load_audio(p, 16000))
    with pytest.raises(DataError, match=rf"{tmp_path}: is a directory, not an? {kind} file") as e:
        read(str(tmp_path))
    one_line(e)


@pytest.mark.parametrize("kind", ["image", "audio"])
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "fifo"])
def test_devices_and_pipes_are_refused_without_reading(tmp_path, kind, device, no_hang):
    if device == "fifo":
        device = str(tmp_path / "pipe")
        os.mkfifo(device)
    elif not os.path.exists(device):
        pytest.skip(f"{device} not available")
    read = (lambda p: load_images(p, 16)) if kind == "image" else (lambda p: load_audio(p, 16000))
    check = check_image_file if kind == "image" else check_audio_file
    for f in (read, check):
        with pytest.raises(
            DataError, match=rf"{device}: is a (character device|FIFO \(named pipe\)), not an? {kind} file"
        ) as e:
            f(device)
        one_line(e)


def test_pil_bomb_warning_becomes_the_projects_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1000 pixels and refuses above 2000
    ok, big = tmp_path / "ok.png", tmp_path / "big.png"
    Image.fromarray(np.full((40, 40), 9, np.uint8)).save(ok)  # 1600 pixels: PIL would warn
    Image.fromarray(np.full((50, 50), 9, np.uint8)).save(big)  # 2500 pixels: PIL would raise
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert load_images(str(ok), 16).max() == 9  # within max_pixels: accepted, silently
        with pytest.raises(DataError, match="big.png: 2500 pixels exceeds the limit of 2000 pixels") as e:
            load_images(str(big), 16, max_pixels=10_000)
        one_line(e)
        with pytest.raises(DataError, match="ok.png: 40x40 = 1600 pixels exceeds the limit of 1500 pixels"):
            load_images(str(ok), 16, max_pixels=1500)


def test_a_bomb_header_is_refused_from_the_header_with_one_line(tmp_path):
    p = png_header_only(tmp_path / "bomb.png", 10000, 9000)  # 90 M pixels: over PIL's warning threshold too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in (lambda: load_images(p, 16), lambda: check_image_file(p)):
            with pytest.raises(
                DataError, match="bomb.png: 10000x9000 = 90000000 pixels exceeds the limit of 67108864"
            ) as e:
                f()
            one_line(e)


def test_extreme_aspect_ratio_resizes_only_the_crop(monkeypatch):
    sizes = []
    resize = Image.Image.resize

    def spy(self, size, *a, **kw):
        assert size[0] * size[1] <= 4 * 48 * 48, f"resize to {size} for a 48 x 48 crop"
        sizes.append(size)
        return resize(self, size, *a, **kw)

    monkeypatch.setattr(Image.Image, "resize", spy)
    strip = np.tile(np.arange(60000, dtype=np.uint32) % 251, (1, 1)).astype(np.uint8)  # 1 x 60000
    out = load_images(strip, 48)
    assert out.shape == (1, 48, 48, 3) and sizes
    tall = np.zeros((60000, 2, 3), np.uint8)
    tall[29990:30010] = 255  # the centre rows are what the crop keeps
    assert load_images(tall, 48).mean() > 0


def test_fit_square_resamples_like_resize_then_crop():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(30, 70, 3)), 0), 1)
    img = np.clip((smooth - smooth.min()) / np.ptp(smooth) * 255, 0, 255).astype(np.uint8)
    full = np.asarray(Image.fromarray(img).resize((112, 48), Image.BICUBIC))[:, 32:80]
    assert np.abs(fit_square(img, 48).astype(int) - full).max() <= 1


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"empty file \(0 bytes\), expected an image file"),
        (b"just some text, renamed\n", "not an image PIL can read"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "cannot read image header|not an image PIL can read"),
    ],
)
def test_bad_image_files_give_one_line(tmp_path, content, match):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    for f in (lambda: load_images(str(p), 16), lambda: check_image_file(str(p))):
        with pytest.raises(DataError, match=match) as e:
            f()
        assert one_line(e).startswith(str(p))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_truncated_images_give_one_line(tmp_path, fmt):
    p = tmp_path / f"cut.{fmt.lower()}"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p, format=fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        load_images(str(p), 16)
    assert one_line(e).startswith(str(p))


# ---------------------------------------------------------------------------------------------- audio
def tone(n=1600, sr=16000, amp=0.4):
    return (amp * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32)


def wav_bytes(channels=1, sr=16000, bits=16, frames=160, fmt=1, riff=None, data_size=None, data=None) -> bytes:
    block = channels * bits // 8
    pcm = data if data is not None else b"\0" * (frames * block)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, fmt, channels, sr, sr * block, block, bits)
        + b"data"
        + struct.pack("<I", len(pcm) if data_size is None else data_size)
        + pcm
    )
    return b"RIFF" + struct.pack("<I", len(body) if riff is None else riff) + body


@pytest.mark.parametrize(
    "subtype, fmt, tol",
    [
        ("PCM_U8", "WAV", 1 / 64),
        ("PCM_16", "WAV", 1e-4),
        ("PCM_24", "WAV", 1e-6),
        ("PCM_32", "WAV", 1e-6),
        ("FLOAT", "WAV", 0),
        ("DOUBLE", "WAV", 1e-7),
        ("PCM_16", "FLAC", 1e-4),
        ("VORBIS", "OGG", 0.05),
    ],
)
def test_audio_sample_formats_read_as_the_same_wave(tmp_path, subtype, fmt, tol):
    x = tone()
    p = str(tmp_path / f"a.{fmt.lower()}")
    sf.write(p, x, 16000, subtype=subtype, format=fmt)
    wave, info = load_audio(p, 16000)
    assert len(wave) == len(x) and not info.resampled
    assert np.abs(wave - x).max() <= tol + 1e-7
    assert check_audio_file(p) == (len(x), 16000, 1)


def test_stereo_is_mixed_down_to_mono(tmp_path):
    left, right = tone(amp=0.6), np.zeros(1600, np.float32)
    p = str(tmp_path / "stereo.wav")
    sf.write(p, np.stack([left, right], 1), 16000, subtype="FLOAT")
    wave, info = load_audio(p, 16000)
    assert info.downmixed and info.channels == 2
    np.testing.assert_allclose(wave, left / 2, atol=1e-7)


def test_samples_beyond_full_scale_are_clipped_with_one_warning(tmp_path, caplog):
    x = tone(amp=1.5)
    p = str(tmp_path / "hot.wav")
    sf.write(p, x, 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="chameleon_lite.tokenizers.audio"):
        wave, _ = load_audio(p, 16000)
    np.testing.assert_allclose(wave, np.clip(x, -1, 1))
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert warned[0].startswith(f"{p}: ") and "clipped to [-1, 1]" in warned[0] and "peak 1.5" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chameleon_lite.tokenizers.audio"):
        wave, _ = load_audio(x, 16000)  # arrays alike
    assert np.abs(wave).max() == 1.0 and len(caplog.records) == 1
    assert check_audio_file(p) == (1600, 16000, 1)  # validate accepts it too (and warns)


def test_clipping_warning_is_one_line_on_the_cli_stderr(tmp_path):
    p = tmp_path / "hot.wav"
    sf.write(p, tone(amp=1.5), 16000, subtype="FLOAT")
    m = _manifest(tmp_path, [{"audio": str(p)}])
    # a process of its own: under pytest the logging plugin, not stderr, would receive the warning
    run = subprocess.run(
        [sys.executable, "-m", "chameleon_lite.cli", "data", "validate", m, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    over = int((np.abs(tone(amp=1.5)) > 1).sum())
    assert run.stderr.splitlines() == [f"{p}: {over} samples beyond [-1, 1] (peak 1.5) clipped to [-1, 1]"]


def cut_aiff() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(), 16000, format="AIFF", subtype="PCM_16")
    return buf.getvalue()[:1000]


AUDIO_BAD = {
    "zero_bytes.wav": (b"", "empty file \\(0 bytes\\), expected an audio file"),
    "text.wav": (b"this is not audio at all\n", "not a readable audio file"),
    "zero_channels.wav": (wav_bytes(channels=0), "not a readable audio file \\(.*[Cc]hannel"),
    "many_channels.wav": (wav_bytes(channels=100, frames=2), "100 channels is more than 64"),
    "huge_channels.wav": (wav_bytes(channels=5000, frames=1), "not a readable audio file"),
    "rate_500.wav": (wav_bytes(sr=500, frames=500), "sample rate 500 Hz is outside \\[1000, 768000\\]"),
    "rate_0.wav": (wav_bytes(sr=0), "not a readable audio file"),
    "riff_cut.wav": (wav_bytes(frames=1000, riff=5000), "truncated audio file"),
    "data_cut.wav": (wav_bytes(frames=100, data_size=20000), "truncated audio file"),
    "no_samples.wav": (wav_bytes(frames=0), "empty audio file \\(no samples\\)"),
    "one_sample_44k.wav": (wav_bytes(sr=44100, frames=1), "shorter than the minimum"),
    "cut.aiff": (cut_aiff(), "truncated audio file \\(shorter than its header says\\)"),
    "junk.mp3": (
        np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "not a readable audio file \\((format not recognised|Format not recognised)",
    ),
    "nan.wav": (wav_bytes(bits=32, fmt=3, data=np.array([0.1, np.nan] * 40, "<f4").tobytes()), "NaN or infinite"),
}


@pytest.mark.parametrize("name", sorted(AUDIO_BAD))
def test_bad_audio_files_give_one_line_in_tokenize_and_validate(tmp_path, name, capfd):
    content, match = AUDIO_BAD[name]
    p = tmp_path / name
    p.write_bytes(content)
    for f in (lambda: load_audio(str(p), 16000), lambda: check_audio_file(str(p))):
        with pytest.raises(DataError, match=match) as e:
            f()
        assert one_line(e).startswith(str(p))
    assert capfd.readouterr().err == ""  # nothing else on stderr (no decoder notes)


@pytest.mark.parametrize("fmt", ["WAV", "RF64", "W64", "AIFF", "AU", "CAF", "FLAC", "OGG"])
def test_audio_files_cut_short_are_refused(tmp_path, fmt, capfd):
    full, cut = tmp_path / f"full.{fmt.lower()}", tmp_path / f"cut.{fmt.lower()}"
    sf.write(full, np.tile(tone(), 10), 16000, format=fmt, subtype="VORBIS" if fmt == "OGG" else "PCM_16")
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert load_audio(str(full), 16000)[0].shape == (16000,)
    for f in (lambda: load_audio(str(cut), 16000), lambda: check_audio_file(str(cut))):
        with pytest.raises(DataError, match="truncated|malformed|lost sync") as e:
            f()
        assert one_line(e).startswith(str(cut))
    assert capfd.readouterr().err == ""


def test_over_the_length_limit_is_refused_from_the_header(tmp_path, monkeypatch):
    p = tmp_path / "long.wav"
    p.write_bytes(wav_bytes(sr=1000, bits=8, frames=3601 * 1000))  # 3601 s at 1 kHz: over the default hour
    monkeypatch.setattr(sf, "read", lambda *a, **k: pytest.fail("decoded a clip the header already refuses"))
    for f in (lambda: load_audio(str(p), 16000), lambda: check_audio_file(str(p)), lambda: read_audio_file(str(p))):
        with pytest.raises(DataError, match="3601 s of audio is longer than the limit of 3600 s"):
            f()


def test_decoded_size_is_bounded_from_the_header(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_mod, "MAX_DECODED_SAMPLES", 1000)
    p = tmp_path / "wide.wav"
    p.write_bytes(wav_bytes(channels=8, frames=200))
    with pytest.raises(DataError, match="200 frames x 8 channels is more than 1000 decoded samples"):
        check_audio_file(str(p))


def test_a_damaged_mp3_is_one_line_without_decoder_notes(tmp_path, capfd):
    p = tmp_path / "cut.mp3"
    try:
        sf.write(p, tone(16000), 16000, format="MP3", subtype="MPEG_LAYER_III")
    except (sf.LibsndfileError, TypeError, ValueError):
        pytest.skip("this libsndfile writes no MP3")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.mp3: truncated audio file") as e:
        load_audio(str(p), 16000)
    one_line(e)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="junk.mp3"):
        load_audio(str(junk), 16000)
    assert capfd.readouterr().err == ""


def test_the_shortest_clip_still_resamples_to_a_sample():
    for sr in (16000, 22050, 44100, 48000, 96000, 768000):
        n = -(-sr // 16000)
        wave, _ = load_audio(np.full(n, 0.1, np.float32), 8000, sample_rate=sr)
        assert len(wave) >= 1
    with pytest.raises(DataError, match="1 sample\\(s\\) at 44100 Hz is shorter than the minimum"):
        load_audio(np.full(1, 0.1, np.float32), 16000, sample_rate=44100)


# ---------------------------------------------------------------------------------------------- one judge
def _manifest(folder, segments_per_doc, name="m.jsonl") -> str:
    path = folder / name
    docs = segments_per_doc if isinstance(segments_per_doc[0], list) else [segments_per_doc]
    path.write_text("".join(json.dumps({"segments": [{"text": "x"}] + segs}) + "\n" for segs in docs))
    return str(path)


@pytest.fixture(scope="module")
def tokenizers():
    torch.manual_seed(0)
    codec = AudioCodecModel(
        preset(
            "tiny",
            strides=(4, 4, 4),
            channels=(4, 8, 8),
            dec_channels=(4, 8, 8),
            out_channels=4,
            res_blocks=1,
            latent_dim=8,
            codebook_dim=8,
            num_levels=2,
            codebook_size=16,
            kmeans_iters=2,
        )
    ).train()
    with torch.no_grad():
        codec(torch.randn(4, 1, 64 * 32) * 0.3)
    text = TextTokenizer.train(iter(["a picture and a sound"] * 20), vocab_size=280, progress=False)
    vocab = UnifiedVocab(text_size=text.vocab_size, image_codebook=16, audio_levels=2, audio_codebook=16)
    return Tokenizers(vocab=vocab, text=text, image=small_image_tokenizer(), audio=AudioTokenizer(codec.eval()))


def _media_battery(d) -> dict[str, tuple[str, str]]:
    """name -> (kind, path) of bad and borderline media files."""
    out: dict[str, tuple[str, str]] = {}

    def put(name, kind, writer):
        p = d / name
        writer(p)
        out[name] = (kind, str(p))

    rng = np.random.default_rng(0)
    put("good.png", "image", lambda p: Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(p))
    put("gray16.png", "image", lambda p: img16(_ramp16()[0]).save(p))
    put("one_pixel.png", "image", lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p))
    put("strip.png", "image", lambda p: Image.new("L", (5000, 1), 50).save(p))
    put("float_ok.tif", "image", lambda p: Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(p))
    put("float_hdr.tif", "image", lambda p: Image.fromarray(np.full((8, 8), 4.0, np.float32), "F").save(p))
    put("int_wide.tif", "image", lambda p: Image.fromarray(np.full((8, 8), 1 << 20, np.int32), "I").save(p))
    put("bomb.png", "image", lambda p: png_header_only(p, 10000, 9000))
    put("zero.png", "image", lambda p: p.write_bytes(b""))
    put("text.png", "image", lambda p: p.write_text("not a picture"))
    put("cut.png", "image", lambda p: p.write_bytes(_png_bytes(rng)[:200]))
    put("dir_img", "image", lambda p: p.mkdir())
    out["dev_null_img"] = ("image", "/dev/null")
    put("good.wav", "audio", lambda p: sf.write(p, tone(), 16000, subtype="PCM_16"))
    put("stereo24.wav", "audio", lambda p: sf.write(p, np.stack([tone(), tone()], 1), 44100, subtype="PCM_24"))
    put("u8.wav", "audio", lambda p: sf.write(p, tone(), 8000, subtype="PCM_U8"))
    put("hot.wav", "audio", lambda p: sf.write(p, tone(amp=1.5), 16000, subtype="FLOAT"))
    put("a.flac", "audio", lambda p: sf.write(p, tone(), 16000, format="FLAC"))
    put("a.ogg", "audio", lambda p: sf.write(p, tone(), 16000, format="OGG", subtype="VORBIS"))
    put("shortest_48k.wav", "audio", lambda p: p.write_bytes(wav_bytes(sr=48000, frames=3)))
    put("one_sample_16k.wav", "audio", lambda p: p.write_bytes(wav_bytes(frames=1)))
    put("rate_1000.wav", "audio", lambda p: p.write_bytes(wav_bytes(sr=1000, frames=100)))
    put("long.wav", "audio", lambda p: p.write_bytes(wav_bytes(sr=1000, bits=8, frames=3601 * 1000)))
    put("dir_wav", "audio", lambda p: p.mkdir())
    out["dev_zero_wav"] = ("audio", "/dev/zero")
    out["missing.wav"] = ("audio", str(d / "missing.wav"))
    for name, (content, _) in AUDIO_BAD.items():
        put(name, "audio", lambda p, c=content: p.write_bytes(c))
    return out


def _png_bytes(rng) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_validate_passes_exactly_what_tokenize_accepts(tmp_path, tokenizers, no_hang):
    battery = _media_battery(tmp_path)
    verdicts = {}
    for name, (kind, path) in battery.items():
        m = _manifest(tmp_path, [{kind: path}], name=f"{name}.jsonl")
        validated = validate_manifest(m).ok
        try:
            pretokenize(m, tokenizers, str(tmp_path / f"out_{name}"), progress=False)
            tokenized = True
        except DataError as e:
            assert "\n" not in str(e)
            tokenized = False
        verdicts[name] = (validated, tokenized)
    disagree = {n: v for n, v in verdicts.items() if v[0] != v[1]}
    assert not disagree, f"validate vs tokenize disagree on {disagree}"
    good = {n for n, (v, _) in verdicts.items() if v}
    assert good == {
        "good.png",
        "gray16.png",
        "one_pixel.png",
        "strip.png",
        "float_ok.tif",
        "good.wav",
        "stereo24.wav",
        "u8.wav",
        "hot.wav",
        "a.flac",
        "a.ogg",
        "shortest_48k.wav",
        "one_sample_16k.wav",
        "rate_1000.wav",
    }


def test_skip_bad_leaves_out_the_documents_validate_rejects(tmp_path, tokenizers, no_hang):
    battery = _media_battery(tmp_path)
    names = sorted(battery)
    m = _manifest(tmp_path, [[{battery[n][0]: battery[n][1]}] for n in names])
    report = validate_manifest(m)
    rejected = {names[int(e.split(":")[1]) - 1] for e in report.errors}
    summary = pretokenize(m, tokenizers, str(tmp_path / "out"), on_error="skip", progress=False)
    assert summary["skipped"] == len(rejected) and summary["train"]["documents"] == len(names) - len(rejected)


def test_manifest_paths_that_are_not_files_are_named(tmp_path):
    (tmp_path / "sub").mkdir()
    m = _manifest(tmp_path, [{"image": "sub"}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: segment 1: .*sub: is a directory, not an image file"):
        list(iter_documents(m))
    assert "is a directory, not an image file" in validate_manifest(m).errors[0]
    m = _manifest(tmp_path, [{"audio": "/dev/zero"}])
    assert "/dev/zero: is a character device, not an audio file" in validate_manifest(m).errors[0]


def test_cli_validate_reports_what_tokenize_would_refuse(tmp_path, capsys):
    (tmp_path / "low.wav").write_bytes(wav_bytes(sr=500, frames=500))
    img16(_ramp16()[0]).save(tmp_path / "gray16.png")
    m = _manifest(tmp_path, [[{"audio": "low.wav"}], [{"image": "gray16.png"}]])
    assert main(["data", "validate", m, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "1 valid document(s)" in out and "m.jsonl:1: segment 1: " in out and "sample rate 500 Hz" in out


def test_generate_names_a_media_path_that_is_not_a_file_before_loading_a_model(tmp_path, capsys):
    rc = main(
        [
            "generate",
            "--prompt",
            "hi",
            "--image",
            str(tmp_path),
            "--model",
            str(tmp_path / "no_model"),
            "--out",
            str(tmp_path / "gen"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and f"{tmp_path}: is a directory, not an image file" in err and len(err.strip().splitlines()) == 1
    rc = main(
        [
            "generate",
            "--prompt",
            "hi",
            "--audio",
            "/dev/zero",
            "--model",
            str(tmp_path / "no_model"),
            "--out",
            str(tmp_path / "gen"),
            "--quiet",
        ]
    )
    assert rc == 1 and "/dev/zero: is a character device, not an audio file" in capsys.readouterr().err
