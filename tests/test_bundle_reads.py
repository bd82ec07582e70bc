"""Loading a model folder reads each of its files once.

The kernel counts the opens (inotify), so reads by compiled code (safetensors, the BPE library) count as well as
Python's. A safetensors file may be opened more than once by one ``load_file``; each file's count is compared with
what one read of that file takes, measured in the same test.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import shutil
import struct
import sys

import pytest

from chameleon_lite.bundle import demo_model_dir

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10
IN_NONBLOCK = 0o4000


class _Opens:
    """Counts the opens of each file in one folder while in a ``with`` block."""

    def __init__(self, folder: str) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.folder = folder
        self.counts: collections.Counter[str] = collections.Counter()

    def __enter__(self) -> _Opens:
        self.fd = self.libc.inotify_init1(IN_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        # the kernel merges an event into an identical one still unread just before it: watching the closes too
        # keeps two reads of one file (open, close, open, close) from counting as one
        assert self.libc.inotify_add_watch(self.fd, self.folder.encode(), IN_OPEN | IN_CLOSE_NOWRITE) >= 0
        return self

    def __exit__(self, *exc) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            i = 0
            while i < len(data):
                _, mask, _, n = struct.unpack_from("iIII", data, i)
                name = data[i + 16 : i + 16 + n].rstrip(b"\0").decode()
                if mask & IN_OPEN and name:
                    self.counts[name] += 1
                i += 16 + n
        os.close(self.fd)


def _one_read(path: str) -> None:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        load_file(path)
    else:
        with open(path, "rb") as f:
            f.read()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "model"
    shutil.copytree(demo_model_dir(), out)
    return str(out)


def test_a_model_load_reads_each_file_once(model_dir):
    from chameleon_lite.generate import Generator

    one = {}
    for name in sorted(os.listdir(model_dir)):
        with _Opens(model_dir) as o:
            _one_read(os.path.join(model_dir, name))
        one[name] = o.counts[name]
    assert one["tokenizer.json"] == 1 and one["model.safetensors"] >= 1
    with _Opens(model_dir) as o:
        Generator.from_dir(model_dir)
    read = {name: o.counts[name] for name in one}
    expected = {name: 0 if name == "RECIPE.json" else one[name] for name in one}  # provenance only: never loaded
    assert read == expected, f"opens per file during one model load: {read}; one read of each takes {one}"


def test_the_counter_sees_reads_by_compiled_code(model_dir):
    """Guard for the test above: the BPE library and safetensors open files from Rust, which inotify still sees."""
    from tokenizers import Tokenizer

    with _Opens(model_dir) as o:
        Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        _one_read(os.path.join(model_dir, "image_vq.safetensors"))
    assert o.counts["tokenizer.json"] == 2 and o.counts["image_vq.safetensors"] >= 1
