"""Reading pictures a user gives (files, PIL images, arrays): every PIL mode scaled to 8-bit RGB, EXIF orientation
applied, alpha composited, size bounded from the header, and every failure one :class:`DataError` naming the file.
The image tokenizer, the manifest checks and ``generate --image`` all read pictures through here."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chameleon_lite.data.media import check_media_path, is_tensor
from chameleon_lite.errors import DataError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


# Alpha is composited over this colour: the background of the procedural corpus and the neutral choice for codes.
ALPHA_BACKGROUND = (0, 0, 0)
# 8-bit modes PIL converts to RGB itself (CMYK naively, without colour management)
_DIRECT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# one channel wider than 8 bits, read as full-range 16-bit (mode I: 32-bit integers, e.g. 16-bit PNM files)
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
SUPPORTED_MODES = tuple(sorted(_DIRECT_MODES | _ALPHA_MODES | _WIDE_GRAY_MODES | {"F"}))


def _name(item: Any, i: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"image #{i}"


def _reason(e: BaseException) -> str:
    """The first line of an exception's message: the CLI prints errors as one line."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def _too_large(path: str, e: Exception, max_pixels: int) -> DataError:
    """PIL's own refusal of a picture over twice Image.MAX_IMAGE_PIXELS, worded as the max_pixels refusal."""

    found = re.search(r"\((\d+) pixels\)", str(e))
    limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else max_pixels
    return DataError(f"{path}: {found.group(1) + ' pixels' if found else 'image'} exceeds the limit of {limit} pixels")


@contextlib.contextmanager
def _quiet_pil() -> Iterator[None]:
    """Hush PIL's warnings about a user's file, which would print as multi-line Python warnings: the bomb warning
    (max_pixels, checked from the header before decoding, is the judge; PIL's would repeat it or contradict a limit
    raised in the tokenizer config) and notes on damaged metadata such as a corrupt EXIF block (the picture is
    used as decoded). Failures to decode still raise."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _open_file(path: str, max_pixels: int):
    """Open and decode an image file, refusing from its header alone a picture of more than ``max_pixels``."""

    check_media_path(path, "image")
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image PIL can read") from None
    except Image.DecompressionBombError as e:
        raise _too_large(path, e, max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"{path}: cannot read image header ({_reason(e)})") from None
    w, h = im.size
    if w == 0 or h == 0 or w * h > max_pixels:
        im.close()
        raise DataError(
            f"{path}: zero-size image ({w}x{h})"
            if w * h == 0
            else f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels"
        )
    try:
        im.load()
    except Image.DecompressionBombError as e:
        im.close()
        raise _too_large(path, e, max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        im.close()
        raise DataError(f"{path}: truncated or corrupt image data ({_reason(e)})") from None
    return im


def _apply_orientation(im) -> None:
    """Turn a loaded picture upright as its EXIF orientation tag says (cameras store portraits sideways)."""

    try:
        ImageOps.exif_transpose(im, in_place=True)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # an unreadable EXIF block is metadata only: the picture is used as stored


def _composite(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] -> uint8 [H, W, 3]: colour over ALPHA_BACKGROUND by alpha, rounded."""
    a = rgba[..., 3:].astype(np.uint32)
    bg = np.asarray(ALPHA_BACKGROUND, dtype=np.uint32)
    return ((rgba[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def _wide_gray_to_uint8(values: np.ndarray, mode: str, name: str) -> np.ndarray:
    """16-bit (or mode I) gray -> uint8 by the full-range convention: round(v / 257), so 65535 -> 255."""
    if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(
            f"{name}: 32-bit integer image (mode I) has values in [{values.min()}, {values.max()}]; "
            "only the 16-bit range [0, 65535] is supported: convert it to 8- or 16-bit"
        )
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Float gray in [0, 1] -> uint8 (x 255, rounded). Other ranges are refused: a float picture states no range,
    and guessing one (min-max) would change what it shows."""
    if not np.isfinite(values).all():
        raise DataError(f"{name}: float image (mode F) holds NaN or infinite values")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{name}: float image (mode F) has values in [{lo:.4g}, {hi:.4g}], expected [0, 1]: "
            "convert it to 8- or 16-bit"
        )
    return np.rint(values * 255.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray, transparent: np.ndarray | None = None) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if transparent is not None:
        rgb[transparent] = ALPHA_BACKGROUND
    return rgb


def _pil_to_rgb(im, name: str = "image") -> np.ndarray:
    """A PIL image of any mode PIL opens -> uint8 [H, W, 3] RGB, its values scaled to 8 bits.

    - 8-bit modes 1, L, P, RGB, RGBX, CMYK (no colour management), YCbCr, LAB, HSV: PIL's conversion.
    - alpha (RGBA, RGBa, LA, La, PA, a palette or colour key with transparency): composited over
      ALPHA_BACKGROUND (black).
    - 16-bit gray (I;16, I;16L, I;16B, I;16N): full range, round(v / 257). Mode I (32-bit integers, as PIL reads
      16-bit PNM and integer TIFF) is taken as 16-bit the same way; a value outside [0, 65535] is refused.
    - float gray (F): values in [0, 1] are scaled by 255; any other range, NaN or inf is refused.
    Any other mode is refused by name (DataError).
    """
    mode = im.mode
    if mode in _WIDE_GRAY_MODES:
        values = np.asarray(im)
        key = im.info.get("transparency")
        return _gray_to_rgb(_wide_gray_to_uint8(values, mode, name), values == key if isinstance(key, int) else None)
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(im), name))
    if mode not in _DIRECT_MODES and mode not in _ALPHA_MODES:
        raise DataError(f"{name}: image mode {mode} is not supported (supported: {', '.join(SUPPORTED_MODES)})")
    if mode == "La":
        im = im.convert("LA")  # PIL un-premultiplies La only into LA
    if mode in _ALPHA_MODES or mode == "P" or "transparency" in im.info:
        return _composite(np.asarray(im.convert("RGBA"), dtype=np.uint8))
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file -> uint8 [H, W, 3] RGB, turned upright by its EXIF orientation (modes: :func:`_pil_to_rgb`).

    The one judge of image files: tokenizing, ``generate --image`` and ``data validate`` all read files through
    it, so validation passes exactly what tokenizing accepts. Raises DataError naming the file.
    """
    with _quiet_pil(), _open_file(path, max_pixels) as im:
        _apply_orientation(im)
        return _pil_to_rgb(im, path)


def _array_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise DataError(f"{name}: expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise DataError(f"{name}: expected an image array [H, W] or [H, W, 1|3|4], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name}: zero-size image ({arr.shape[1]}x{arr.shape[0]})")
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        return _composite(arr)
    return arr


def fit_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: resize the shorter side to ``size`` (bicubic, antialiased), crop the centre.

    Only the source box that becomes the centre square is resampled (PIL reads the filter's support around it),
    so a picture of extreme aspect ratio (1 x 60000) never becomes a resized copy thousands of times the crop.
    """
    h, w = rgb.shape[:2]
    if h == size and w == size:
        return rgb
    if min(h, w) == size:
        top, left = (h - size) // 2, (w - size) // 2
        return rgb[top : top + size, left : left + size]

    s = size / min(h, w)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    top, left = (nh - size) // 2, (nw - size) // 2
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    out = Image.fromarray(rgb).resize((size, size), Image.BICUBIC, box=box, reducing_gap=None if s > 0.5 else 2.0)
    return np.asarray(out)


def load_images(images: Any, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bring pictures into the model's input form.

    images: a path, PIL image or uint8 array [H, W(, C)], a uint8 array/tensor [B, H, W, 3] (or [B, H, W, 4|1]),
    or a sequence of any of these. Returns uint8 [B, size, size, 3] (RGB, shorter side resized, centre crop).
    Raises DataError naming the file (or ``image #i``) for anything that is not a usable picture.
    """

    if is_tensor(images):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence[Any] = list(images)
    elif isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
        items = [images]
    elif isinstance(images, Iterable):
        items = list(images)
    else:
        raise DataError(f"expected image paths, PIL images or uint8 arrays, got {type(images).__name__}")
    if not items:
        raise DataError("no images given")
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        name = _name(item, i)
        if is_tensor(item):
            item = item.detach().cpu().numpy()
        if isinstance(item, (str, os.PathLike)):
            rgb = read_image_file(os.fspath(item), max_pixels)
        elif isinstance(item, Image.Image):
            if item.size[0] == 0 or item.size[1] == 0:
                raise DataError(f"{name}: zero-size image ({item.size[0]}x{item.size[1]})")
            rgb = _pil_to_rgb(item, name)
        elif isinstance(item, np.ndarray):
            rgb = _array_to_rgb(item, name)
        else:
            raise DataError(f"{name}: expected a path, PIL image or uint8 array, got {type(item).__name__}")
        out[i] = fit_square(rgb, size)
    return out
