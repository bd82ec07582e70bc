"""What a media path given by a user must be before any reader opens it: an existing, non-empty regular file.

Every reader of user media (the image and audio loaders, manifest checks, ``generate --image/--audio``) asks
:func:`check_media_path` first, so a folder, a device or a pipe is named as such in one line instead of
"file not found", a decoder error, or a read that never ends (``/dev/zero``) or never starts (a FIFO).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

from chameleon_lite.errors import DataError

_NOT_REGULAR = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _article(kind: str) -> str:
    return "an" if kind[:1] in "aeiou" else "a"


def check_media_path(path: str | os.PathLike, kind: str) -> None:
    """Raise :class:`DataError` naming ``path`` unless it is an existing regular file holding at least one byte.

    kind: "image" or "audio" (used in the message). Only ``stat`` is called: nothing is opened, so a FIFO cannot
    block and a device cannot be read.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path}: {kind} file not found") from None
    except OSError as e:  # permission denied on a parent folder, a name too long, a symlink loop
        raise DataError(f"{path}: cannot access the {kind} file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a directory, not {_article(kind)} {kind} file")
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "a special file")
        raise DataError(f"{path}: is {what}, not {_article(kind)} {kind} file")
    if st.st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes), expected {_article(kind)} {kind} file")


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch: one can only exist once torch is imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)
