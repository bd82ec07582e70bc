"""Files on disk: atomic writes, JSON reading with errors that name the file, and the output folders this tool
owns (bottom layer: imports nothing of the package but its errors).

No command deletes or overwrites what it did not write. Every folder a command writes has a kind
(:class:`OutputKind`): a file that only this tool puts there (its signature) and the names it may hold. A command
may write into, or replace, a folder that does not exist, is empty, or is of its kind and holds nothing else;
anything else is refused with one line before any work starts (:func:`check_output_dir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from chameleon_lite.errors import ConfigError, UserError


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A temp path beside ``path`` for a writer that needs a file name (matplotlib, soundfile, the BPE library):
    renamed onto ``path`` when the block ends, removed when it raises, so ``path`` is either the old file or
    the whole new one. ``suffix`` keeps the extension a writer picks its format from (".png")."""
    tmp = f"{path}.tmp.{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` (created by open(), so with the permissions the umask gives any
    new file), fsync it, then rename it into place."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2).encode())


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def read_json(path: str, what: str) -> dict[str, Any]:
    """Read a JSON object from path, with errors that name the file."""
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError):
        parent = os.path.dirname(path)
        hint = f" ({parent} is not a folder)" if parent and os.path.exists(parent) and not os.path.isdir(parent) else ""
        raise ConfigError(f"{path}: {what} not found{hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: {what} expected, found a folder") from None
    except OSError as e:
        raise ConfigError(f"{path}: {what} cannot be read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object")
    return d


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """A kind of output folder. ``signature``: a file only this tool writes there (None: the folder is recognised by
    its names alone, for folders of sub-folders); ``names``: fnmatch patterns of every file it may hold;
    ``folders``: pattern -> kind of the sub-folders it may hold. Patterns are fnmatch patterns, the signature too."""

    what: str
    command: str
    signature: str | None
    names: tuple[str, ...]
    folders: tuple[tuple[str, OutputKind], ...] = ()
    strict: bool = True  # False: a working folder where other files may sit beside ours (never deleted)

    def owns(self, path: str) -> tuple[bool, str]:
        """(whether ``path``, an existing folder, is one of ours and holds nothing else, the first entry that is not)."""
        try:
            entries = sorted(os.listdir(path))
        except OSError as e:
            return False, f"cannot be listed ({e.strerror})"
        if self.signature is not None and entries and not any(fnmatch.fnmatchcase(e, self.signature) for e in entries):
            return False, f"has no {self.signature}"
        if not self.strict:
            return True, ""
        for name in entries:
            full = os.path.join(path, name)
            mode = os.lstat(full).st_mode
            if stat.S_ISDIR(mode):
                sub = next((k for pat, k in self.folders if fnmatch.fnmatchcase(name, pat)), None)
                if sub is None:
                    return False, f"holds the folder {name}/"
                ok, why = sub.owns(full)
                if not ok:
                    return False, f"{name}/ {why}"
            elif not (stat.S_ISREG(mode) and any(fnmatch.fnmatchcase(name, p) for p in self.names)):
                return False, f"holds {name}"
        return True, ""


def check_output_dir(path: str, kind: OutputKind, flag: str = "--out") -> None:
    """Refuse ``path`` as the output folder of ``kind`` unless it does not exist, is an empty folder, or is a folder
    of that kind holding nothing else (then the command may replace what it wrote before)."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise UserError(f"{path}: exists and is not a folder; give {flag} a new or empty folder")
    ok, why = kind.owns(path)
    if not ok:
        raise UserError(
            f"{path}: exists and is not {kind.what} written by `{kind.command}` (it {why}); nothing was "
            f"changed; give {flag} a new or empty folder, or move this one away"
        )


@contextlib.contextmanager
def building_dir(out: str, kind: OutputKind) -> Iterator[str]:
    """A new temp folder beside ``out`` to assemble an output of ``kind`` in: moved onto ``out`` when the block ends
    (:func:`replace_dir`: only an earlier output of that kind is replaced), removed whatever happens."""
    out = os.path.abspath(out)
    check_output_dir(out, kind)
    tmp = f"{out}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        replace_dir(tmp, out, kind)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: str, final: str, kind: OutputKind) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an earlier output of ``kind`` there (checked again
    now: the folder may have changed while the command ran)."""
    check_output_dir(final, kind)
    old = f"{final}.old.{os.getpid()}"
    if os.path.lexists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


PNG_SOFTWARE = "chameleon-lite"  # the PNG text chunk "Software" of every picture a command saves at a given path


def _is_our_png(path: str) -> bool:
    from PIL import Image, UnidentifiedImageError  # lazy: `chameleon-lite --help` imports this module

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == PNG_SOFTWARE
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def png_info():
    """PIL's PngInfo carrying ``Software: chameleon-lite`` (pass as ``pnginfo=`` to ``Image.save``)."""
    from PIL.PngImagePlugin import PngInfo  # lazy: `chameleon-lite --help` imports this module

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    return info


JSON_MARK = "written_by"  # key of every JSON result a command writes at a path the user names


def check_json_output(path: str, flag: str = "--json") -> None:
    """Refuse a JSON output path that is a folder or an existing file this tool did not write (a JSON result it
    wrote holds ``"written_by": "chameleon-lite"``)."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; give {flag} a file path")
    if not os.path.lexists(path):
        return
    try:
        ours = read_json(path, "JSON result").get(JSON_MARK) == PNG_SOFTWARE
    except UserError:
        ours = False
    if not ours or os.path.islink(path):
        raise UserError(
            f"{path}: exists and was not written by chameleon-lite; nothing was changed; give {flag} "
            f"another path or move this file away"
        )


def write_json_result(path: str, obj: dict[str, Any]) -> None:
    """A command's JSON result at a user-named path, marked as this tool's (see :func:`check_json_output`)."""
    write_json_atomic(path, {JSON_MARK: PNG_SOFTWARE, **obj})


def _is_our_wav(path: str) -> bool:
    import soundfile as sf  # lazy: `chameleon-lite --help` imports this module

    try:
        with sf.SoundFile(path) as f:
            software = f.software or ""  # libsndfile appends " (libsndfile-VERSION)" to what was written
            return f.format == "WAV" and (
                software == PNG_SOFTWARE or software.startswith(PNG_SOFTWARE + " (libsndfile")
            )
    except (OSError, RuntimeError, sf.LibsndfileError):
        return False


def check_wav_output(path: str, flag: str = "--out") -> None:
    """Refuse to replace a file at ``path`` unless it is a WAV this tool wrote (its INFO chunk's software field)."""
    if os.path.lexists(path) and not (os.path.isfile(path) and not os.path.islink(path) and _is_our_wav(path)):
        raise UserError(
            f"{path}: exists and was not written by chameleon-lite; nothing was changed; give {flag} "
            f"another folder or move this file away"
        )


def check_png_output(path: str, flag: str = "--out") -> None:
    """Refuse a PNG output path that is a folder, lacks the .png suffix, lies in a missing folder, or is an existing
    file this tool did not write (a PNG it wrote carries ``Software: chameleon-lite``)."""
    if not path.lower().endswith(".png"):
        raise UserError(f"{path}: {flag} must end with .png")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; give {flag} a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: the folder {parent} does not exist")
    if os.path.lexists(path) and not (os.path.isfile(path) and not os.path.islink(path) and _is_our_png(path)):
        raise UserError(
            f"{path}: exists and was not written by chameleon-lite; nothing was changed; give {flag} "
            f"another path or move this file away"
        )


# The kinds of folder the commands write.
MODEL_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "image_vq.safetensors",
    "image_vq.json",
    "audio_codec.safetensors",
    "audio_codec.json",
    "vocab.json",
    "generation.json",
    "RECIPE.json",
    "convert.json",  # a folder converted from another format: its provenance and id map
)
MODEL = OutputKind("an exported model folder", "chameleon-lite export", "config.json", MODEL_FILES)
SHARDS = OutputKind(
    "a shard folder",
    "chameleon-lite data tokenize",
    "meta.json",
    ("meta.json", "tokens_*.bin", "docs_*.npy", "spans_*.npy"),
)
SHARD_SET = OutputKind(
    "a shard set", "chameleon-lite data tokenize", None, ("tokenize.json",), (("train", SHARDS), ("val", SHARDS))
)
DOCUMENT = OutputKind(
    "a generated document",
    "chameleon-lite generate",
    "document.json",
    ("document.json", "document.md", "document.html", "image_[0-9][0-9][0-9].png", "audio_[0-9][0-9][0-9].wav"),
)
DOCUMENTS = OutputKind(
    "a folder of generated samples",
    "chameleon-lite generate --batch",
    None,
    (),
    (("sample_[0-9][0-9][0-9]", DOCUMENT),),
)
CHAT = OutputKind("a chat transcript", "chameleon-lite chat", None, (), (("turn_[0-9][0-9][0-9]", DOCUMENT),))
SERVE = OutputKind(
    "a server's output folder",
    "chameleon-lite serve",
    None,
    (),
    (
        # turn numbers have 6 digits, more past turn 999999 (serve/app.py: TURN_DIR, UPLOAD)
        *(("turn_" + "[0-9]" * n, DOCUMENT) for n in range(6, 10)),
        (
            "uploads",
            OutputKind("uploaded media", "chameleon-lite serve", None, tuple("[0-9]" * n + "_*" for n in range(6, 10))),
        ),
    ),
)
CORPUS = OutputKind(
    "a procedural corpus",
    "chameleon-lite data procedural",
    "corpus.json",
    ("corpus.json", "manifest.jsonl"),
    (
        ("images", OutputKind("corpus pictures", "chameleon-lite data procedural", None, ("*.png",))),
        ("audio", OutputKind("corpus clips", "chameleon-lite data procedural", None, ("*.wav",))),
    ),
)
EVAL = OutputKind(
    "an evaluation folder",
    "chameleon-lite eval",
    "eval.json",
    ("eval.json", "report.html", "items.jsonl", "*.png"),
    (
        (
            "inputs",
            OutputKind(
                "evaluation inputs",
                "chameleon-lite eval",
                None,
                ("image_[0-9][0-9][0-9][0-9].png", "audio_[0-9][0-9][0-9][0-9].wav"),
            ),
        ),
        ("heldout_media", CORPUS),
    ),
)
EXPLAIN = OutputKind(
    "an attention-map report", "chameleon-lite explain", "explain.json", ("explain.json", "report.html", "*.png")
)
RUN = OutputKind("a training run folder", "train/pretrain.py", "run.json", (), strict=False)
PIPELINE = OutputKind("a quickstart folder", "chameleon-lite quickstart", ".stage-*", (), strict=False)
RUN_FOLDER = OutputKind("a tokenizer training run", "chameleon-lite tokenizer train-*", None, (), strict=False)
TOKENIZERS = OutputKind(
    "a tokenizer or model folder", "chameleon-lite tokenizer train-*", None, MODEL_FILES, (("run", RUN_FOLDER),)
)
