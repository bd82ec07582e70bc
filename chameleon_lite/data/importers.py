"""Importers: data as people have it -> a folder holding a JSONL manifest (:mod:`~chameleon_lite.data.manifest`).

Four sources, each a generator of :class:`Item` (one document and the media files it needs written):

* :func:`mnist_items`: MNIST-style IDX files (images + labels, gzip or raw) -> one PNG per picture, kept grayscale;
* :func:`labelled_audio_items`: a folder of clips whose label is in the file name (a pattern such as FSDD's
  ``{label}_{speaker}_{index}.wav``); the clips are used where they lie;
* :func:`caption_items`: a folder of pictures or clips with a captions/transcripts file (JSONL, CSV or TSV);
* :func:`webdataset_items`: WebDataset ``.tar`` shards, read with the ``webdataset`` library; their media are
  written out as files.

:func:`write_import` writes the items into a new folder beside ``out`` and moves it into place at the end, so
``out`` is either untouched or the whole import. Every media file is decoded by the readers the tokenizers use
before its document is written, so the manifest passes ``data validate``; a bad file is one :class:`DataError`
naming it (or, with ``skip_bad``, left out and counted). Media the importer writes are under ``images/`` and
``audio/`` (paths relative to the manifest); a user's own files are referred to by absolute path.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import json
import lzma
import os
import re
import shutil
import string
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from chameleon_lite.errors import ConfigError, DataError, UserError
from chameleon_lite.files import OutputKind, check_output_dir, png_info, replace_dir, write_json_atomic

# numpy, PIL, tqdm and the media readers are imported where used: the CLI imports this module to build --help
if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff", "pgm", "ppm", "pbm", "pnm"})
AUDIO_EXTENSIONS = frozenset({"wav", "flac", "ogg", "oga", "opus", "mp3", "aif", "aiff", "aifc", "au", "w64", "rf64"})
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ORDERS = ("text-first", "media-first")
# default caption templates of the labelled sources ({word}: the label as a word, "seven" for 7)
MNIST_TEXT = "a handwritten {word} ({label})"
LABELLED_AUDIO_TEXT = "a spoken {word} ({label})"
FSDD_PATTERN = "{label}_{speaker}_{index}.wav"

_MEDIA_FOLDER = OutputKind("imported media", "chameleon-lite data import-*", None, ("*",))
IMPORTED = OutputKind(
    "an imported data set",
    "chameleon-lite data import-*",
    "import.json",
    ("import.json", "manifest.jsonl"),
    (("images", _MEDIA_FOLDER), ("audio", _MEDIA_FOLDER)),
)


@dataclasses.dataclass
class Item:
    """One document an importer produced.

    record: the manifest line (``id``, ``segments``, ``meta``); media paths are relative to the output folder for
    files in ``files``, absolute for a user's own files. where: names the source in errors ("labels.idx: item 12",
    "captions.csv:5"). files: media the import writes, path relative to the output folder -> bytes. trusted: the
    media were made by the importer (decoding them again is skipped). problem: why the source cannot become a
    document (a sample without media): an error, or with ``skip_bad`` a skipped item.
    """

    record: dict[str, Any]
    where: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    trusted: bool = False
    problem: str | None = None


@dataclasses.dataclass
class ImportSummary:
    manifest: str
    documents: int
    segments: dict[str, int]
    skipped: int
    skipped_examples: list[str]
    seconds: float

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.segments.items())
        lines = [f"imported {self.documents} documents (segments: {kinds}) in {self.seconds:.1f} s -> {self.manifest}"]
        if self.skipped:
            lines.append(f"skipped {self.skipped} unusable item(s), e.g.:")
            lines += [f"  {e}" for e in self.skipped_examples]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- documents
def media_kind(path: str) -> str | None:
    """The kind of a file by its extension: "image", "audio", or None for any other."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    return "image" if ext in IMAGE_EXTENSIONS else "audio" if ext in AUDIO_EXTENSIONS else None


def label_word(label: Any, names: Sequence[str] | None = None) -> str:
    """The word a caption uses for a label: ``names[label]`` when given, a number word for 0-9, else the label with
    underscores as spaces."""
    if isinstance(label, int) and names is not None:
        if not 0 <= label < len(names):
            raise DataError(f"label {label} has no name: --label-names lists {len(names)}")
        return names[label]
    if isinstance(label, int) and 0 <= label < len(NUMBER_WORDS):
        return NUMBER_WORDS[label]
    return str(label).replace("_", " ")


def document(
    doc_id: str, text: str | None, media: Sequence[tuple[str, str]], meta: dict[str, Any], order: str = "text-first"
) -> dict[str, Any]:
    """A manifest record: ``text`` then the media (``text-first``: the model learns to make the media from the
    text), or the media as a bidirectional input span then the text (``media-first``: captioning, transcription).
    media: (kind, path) pairs; no text segment when ``text`` is None or empty."""
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    first = order == "media-first" and bool(text)
    segs = [{kind: path, "attend": "bidirectional"} if first else {kind: path} for kind, path in media]
    if text:
        segs = segs + [{"text": text}] if first else [{"text": text}, *segs]
    return {"id": doc_id, "segments": segs, "meta": meta}


def _template_fields(template: str, flag: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{flag} {template!r}: {e} (write a literal brace as {{{{ or }}}})") from None


def check_text_template(template: str, fields: Iterable[str], flag: str = "--text") -> None:
    """Refuse a caption template that uses a field other than ``fields`` (or an empty one: ``{}``)."""
    allowed = sorted(set(fields))
    for f in _template_fields(template, flag):
        if f not in allowed:
            raise ConfigError(f"{flag} {template!r} uses {{{f}}}; the fields are {', '.join(allowed)}")


def _int_or_str(value: str) -> int | str:
    return int(value) if value.isdigit() else value


# ---------------------------------------------------------------------------------------------- MNIST IDX
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_BYTES = 1 << 33  # what one IDX file may hold decoded; a header claiming more is damaged or not IDX


def _open_maybe_gzip(path: str, what: str):
    if not os.path.exists(path):
        raise DataError(f"{path}: {what} file not found")
    if not os.path.isfile(path):
        raise DataError(f"{path}: is not a regular file, expected {what} file")
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")
    f.seek(0)
    return f


def read_idx(path: str, what: str = "an IDX") -> np.ndarray:
    """Read an IDX file (the MNIST format, raw or gzip): magic ``00 00 TYPE NDIM``, NDIM big-endian uint32 sizes,
    then the values -> an array of those sizes (uint8 for MNIST). Refused with one line naming the file: a missing
    file, a header that is not IDX, a corrupt gzip stream, fewer or more bytes than the header promises."""
    import numpy as np  # lazy: --help imports this module

    with _open_maybe_gzip(path, what) as f:
        try:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES or head[3] == 0:
                raise DataError(f"{path}: not an IDX file (its first bytes are {head.hex() or 'missing'})")
            dtype = np.dtype(IDX_TYPES[head[2]])
            raw = f.read(4 * head[3])
            if len(raw) < 4 * head[3]:
                raise DataError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(raw, ">u4"))
            need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if need > MAX_IDX_BYTES:
                raise DataError(f"{path}: IDX header claims {dims} values ({need} bytes): damaged or not IDX")
            data = f.read(need + 1)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: corrupt gzip stream ({e})") from None
    if len(data) < need:
        raise DataError(f"{path}: truncated: its header promises {dims} values ({need} bytes), it holds {len(data)}")
    if len(data) > need:
        raise DataError(f"{path}: holds more data than its header {dims} describes: damaged or not IDX")
    return np.frombuffer(data, dtype).reshape(dims)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image  # lazy: --help imports this module

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", pnginfo=png_info())
    return buf.getvalue()


def _split_hint(path: str) -> str | None:
    """The split an MNIST-style file name says it belongs to (``t10k-...``: test, ``train-...``: train)."""
    name = os.path.basename(path).lower()
    return "test" if name.startswith(("t10k", "test")) else "train" if name.startswith("train") else None


def mnist_items(
    images: str,
    labels: str,
    text: str = MNIST_TEXT,
    label_names: Sequence[str] | None = None,
    order: str = "text-first",
    limit: int | None = None,
) -> tuple[int, Iterator[Item]]:
    """MNIST IDX files -> (number of documents, their items): per picture a PNG ``images/NNNNN.png`` (grayscale
    uint8 as stored) and a caption from ``text`` (fields ``{label}``, ``{word}``, ``{index}``; empty: no text).

    images: IDX of uint8 [N, H, W]; labels: IDX of integers [N]. meta: label, index (position in the files),
    source (the images file), split (from the file name: "test" for t10k-*, "train" for train-*, when it says).
    """
    import numpy as np  # lazy: --help imports this module

    check_text_template(text, ("label", "word", "index"))
    pix = read_idx(images, "an IDX images")
    if pix.ndim != 3 or pix.dtype != np.uint8:
        raise DataError(
            f"{images}: expected IDX images (unsigned bytes, 3 dimensions N x H x W), got {pix.dtype} {pix.shape}"
        )
    lab = read_idx(labels, "an IDX labels")
    if lab.ndim != 1 or lab.dtype.kind not in "iu":
        raise DataError(f"{labels}: expected IDX labels (integers, 1 dimension), got {lab.dtype} {lab.shape}")
    if len(lab) != len(pix):
        raise DataError(f"{images} holds {len(pix)} images but {labels} holds {len(lab)} labels")
    if len(pix) == 0:
        raise DataError(f"{images}: holds no images")
    n = len(pix) if limit is None else min(limit, len(pix))
    source, split = os.path.abspath(images), _split_hint(images)
    for v in np.unique(lab[:n]):  # a label without a name fails before any work
        label_word(int(v), label_names)

    def items() -> Iterator[Item]:
        for i in range(n):
            label = int(lab[i])
            rel = f"images/{i:05d}.png"
            caption = text.format(label=label, word=label_word(label, label_names), index=i)
            meta = {"source": source, "index": i, "label": label, **({"split": split} if split else {})}
            yield Item(
                document(f"mnist-{i:05d}", caption, [("image", rel)], meta, order),
                where=f"{images}: image {i}",
                files={rel: _png_bytes(pix[i])},
                trusted=True,
            )

    return n, items()


# ---------------------------------------------------------------------------------------------- labelled clips
_FIELD = re.compile(r"\{([^{}]*)\}")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A file-name pattern -> a regex matched against each file's path relative to the folder ("/" separated).

    Either a template whose ``{name}`` fields each match one or more characters other than "/"
    (``{label}_{speaker}_{index}.wav``: FSDD), or a regex with named groups (any pattern holding ``(?P<``).
    The field ``label`` is required."""
    if "(?P<" in pattern:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"--pattern {pattern!r}: not a valid regex ({e})") from None
    else:
        parts, last, seen = [], 0, set()
        for m in _FIELD.finditer(pattern):
            name = m.group(1)
            if not name.isidentifier() or name in seen:
                raise ConfigError(
                    f"--pattern {pattern!r}: field {{{name}}} must be a name used once, like {{label}} or {{speaker}}"
                )
            seen.add(name)
            parts += [re.escape(pattern[last : m.start()]), f"(?P<{name}>[^/]+?)"]
            last = m.end()
        tail = pattern[last:]
        if "{" in tail or "}" in tail or any("{" in p or "}" in p for p in parts[::2]):
            raise ConfigError(f"--pattern {pattern!r}: unbalanced brace")
        rx = re.compile("".join(parts) + re.escape(tail))
    if "label" not in rx.groupindex:
        raise ConfigError(f"--pattern {pattern!r} has no {{label}} field (a regex: no (?P<label>...) group)")
    return rx


def _media_files(folder: str, kind: str) -> list[str]:
    """The files of ``kind`` (by extension) under ``folder``, relative, "/"-separated, sorted; hidden ones left out."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: " + ("folder not found" if not os.path.exists(folder) else "is not a folder"))
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_root = os.path.relpath(root, folder)
        for name in files:
            if not name.startswith(".") and media_kind(name) == kind:
                found.append(name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/"))
    return sorted(found)


def labelled_audio_items(
    folder: str,
    pattern: str = FSDD_PATTERN,
    text: str = LABELLED_AUDIO_TEXT,
    order: str = "text-first",
    skip_unmatched: bool = False,
    limit: int | None = None,
) -> tuple[int, Iterator[Item]]:
    """A folder of clips named after their label -> (number of documents, their items).

    Every audio file under ``folder`` (by extension: wav, flac, ogg, mp3, ...; other files are ignored) must match
    ``pattern`` (see :func:`compile_pattern`), or is refused (``skip_unmatched``: left out). The fields of the
    pattern go into meta (digits as integers: label 7, index 10) with the clip's absolute path as ``source``; the
    caption is ``text`` formatted with those fields and ``{word}`` (empty: no text). Clips are used where they lie.
    """
    rx = compile_pattern(pattern)
    check_text_template(text, [*rx.groupindex, "word"])
    files = _media_files(folder, "audio")
    if not files:
        raise DataError(f"{folder}: holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    matched = [(rel, m) for rel in files if (m := rx.fullmatch(rel)) is not None]
    if not matched:
        raise DataError(
            f"{folder}: none of its {len(files)} audio files matches --pattern {pattern!r} (e.g. {files[0]})"
        )
    if len(matched) < len(files) and not skip_unmatched:
        bad = next(rel for rel in files if rx.fullmatch(rel) is None)
        raise DataError(
            f"{os.path.join(folder, bad)}: does not match --pattern {pattern!r} "
            f"({len(files) - len(matched)} such file(s); --skip-unmatched leaves them out)"
        )
    matched = matched[:limit]
    root = os.path.abspath(folder)

    def items() -> Iterator[Item]:
        for rel, m in matched:
            fields = {k: _int_or_str(v) for k, v in m.groupdict().items() if v is not None}
            caption = text.format(**fields, word=label_word(fields["label"]))
            path = os.path.join(root, *rel.split("/"))
            meta = {**fields, "source": path}
            yield Item(document(rel, caption, [("audio", path)], meta, order), where=path)

    return len(matched), items()


# ---------------------------------------------------------------------------------------------- captions files
FILE_COLUMNS = ("file", "path", "filename", "image", "audio", "clip")
TEXT_COLUMNS = ("text", "caption", "transcript", "transcription", "sentence")


@dataclasses.dataclass
class CaptionRow:
    line: int
    file: str
    text: str
    extra: dict[str, Any]


def _pick_column(names: Sequence[str], given: str | None, defaults: Sequence[str], flag: str, where: str) -> str:
    if given is not None:
        if given not in names:
            raise DataError(f"{where}: has no {flag} {given!r} (it has {', '.join(map(str, names)) or 'none'})")
        return given
    found = next((c for c in defaults if c in names), None)
    if found is None:
        raise DataError(
            f"{where}: none of {', '.join(defaults)} among its columns ({', '.join(map(str, names)) or 'none'}); "
            f"name the column with {flag}"
        )
    return found


def _check_row(where: str, file: Any, text: Any, file_col: str, text_col: str) -> None:
    if not isinstance(file, str) or not file.strip():
        raise DataError(f"{where}: {file_col!r} must be a non-empty file path, got {file!r}")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: {text_col!r} must be non-empty text, got {text!r}")


def read_captions(path: str, file_column: str | None = None, text_column: str | None = None) -> list[CaptionRow]:
    """A captions/transcripts file -> its rows. ``.jsonl``: one JSON object per line; ``.csv`` / ``.tsv``: a header
    row naming the columns. The file column defaults to the first of FILE_COLUMNS present, the text column to the
    first of TEXT_COLUMNS; other columns/keys are kept as meta. Every bad line is one DataError naming file:line."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if ext not in ("jsonl", "csv", "tsv"):
        raise DataError(f"{path}: a captions file must be .jsonl, .csv or .tsv")
    if not os.path.isfile(path):
        raise DataError(f"{path}: captions file " + ("not found" if not os.path.exists(path) else "is not a file"))
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            raw = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if ext == "jsonl":
        rows = _read_jsonl(path, raw, file_column, text_column)
    else:
        rows = _read_csv(path, raw, "\t" if ext == "tsv" else ",", file_column, text_column)
    if not rows:
        raise DataError(f"{path}: holds no captions")
    return rows


def _read_jsonl(path: str, raw: str, file_column: str | None, text_column: str | None) -> list[CaptionRow]:
    rows = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        fc = _pick_column(list(obj), file_column, FILE_COLUMNS, "--file-column", where)
        tc = _pick_column(list(obj), text_column, TEXT_COLUMNS, "--text-column", where)
        _check_row(where, obj[fc], obj[tc], fc, tc)
        extra = {k: v for k, v in obj.items() if k not in (fc, tc)}
        rows.append(CaptionRow(lineno, obj[fc], obj[tc].strip(), extra))
    return rows


def _read_csv(
    path: str, raw: str, delimiter: str, file_column: str | None, text_column: str | None
) -> list[CaptionRow]:
    lines = raw.splitlines(keepends=True)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return []
        fc = _pick_column(header, file_column, FILE_COLUMNS, "--file-column", f"{path}:1")
        tc = _pick_column(header, text_column, TEXT_COLUMNS, "--text-column", f"{path}:1")
        rows = []
        for values in reader:
            where = f"{path}:{reader.line_num}"
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(f"{where}: {len(values)} field(s), the header names {len(header)}")
            row = dict(zip(header, values))
            _check_row(where, row[fc], row[tc], fc, tc)
            extra = {k: v for k, v in row.items() if k not in (fc, tc)}
            rows.append(CaptionRow(reader.line_num, row[fc], row[tc].strip(), extra))
    except csv.Error as e:
        raise DataError(
            f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})"
        ) from None
    return rows


def caption_items(
    captions: str,
    media: str | None = None,
    file_column: str | None = None,
    text_column: str | None = None,
    order: str = "text-first",
    limit: int | None = None,
) -> tuple[int, Iterator[Item]]:
    """Pictures or clips + a captions/transcripts file (:func:`read_captions`) -> (number of documents, items).

    File paths in it are relative to ``media`` (default: the captions file's folder) unless absolute; each file's
    kind (image or audio) comes from its extension, so one file may list both. The files are used where they lie;
    a missing or undecodable one is refused naming the captions line. meta: the row's other columns, the file's
    absolute path as ``source``, and ``line``. Several captions of one file make several documents.
    """
    rows = read_captions(captions, file_column, text_column)[:limit]
    base = os.path.abspath(media if media is not None else os.path.dirname(captions) or ".")
    if media is not None and not os.path.isdir(media):
        raise DataError(f"{media}: media folder " + ("not found" if not os.path.exists(media) else "is not a folder"))
    for row in rows:
        if media_kind(row.file) is None:
            raise DataError(
                f"{captions}:{row.line}: {row.file}: cannot tell an image from a clip by its extension "
                f"(images: {', '.join(sorted(IMAGE_EXTENSIONS))}; audio: {', '.join(sorted(AUDIO_EXTENSIONS))})"
            )

    def items() -> Iterator[Item]:
        seen: dict[str, int] = {}
        for row in rows:
            path = os.path.normpath(os.path.join(base, row.file))
            seen[row.file] = seen.get(row.file, 0) + 1
            doc_id = row.file if seen[row.file] == 1 else f"{row.file}#{seen[row.file]}"
            meta = {**row.extra, "source": path, "line": row.line}
            rec = document(doc_id, row.text, [(media_kind(row.file), path)], meta, order)
            yield Item(rec, where=f"{captions}:{row.line}")

    return len(rows), items()


# ---------------------------------------------------------------------------------------------- WebDataset shards
WDS_TEXT_KEYS = ("txt", "text", "caption", "transcript")


def shard_paths(specs: Sequence[str]) -> list[str]:
    """Shard arguments -> tar files: a file, a folder (its ``*.tar`` files, sorted) or a brace pattern as WebDataset
    sets are named (``shard-{000000..000009}.tar``, expanded by the library). Every named shard must exist."""
    from webdataset.shardlists import expand_urls  # lazy: webdataset imports torch

    out = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.endswith(".tar"))
            if not found:
                raise DataError(f"{spec}: folder holds no .tar shards")
            out += found
            continue
        names = [spec] if os.path.exists(spec) or "{" not in spec else expand_urls(spec)
        for name in names:
            if not os.path.isfile(name):
                raise DataError(f"{name}: shard " + ("not found" if not os.path.exists(name) else "is not a file"))
            out.append(name)
    return out


def _sample_text(sample: dict[str, Any], text_key: str | None, where: str) -> str | None:
    """A sample's caption: its ``text_key`` part, else the first of WDS_TEXT_KEYS, else a "caption"/"text" field
    of its .json part (a list: its first string)."""
    for key in [text_key] if text_key else WDS_TEXT_KEYS:
        if key in sample:
            try:
                return sample[key].decode("utf-8").strip() or None
            except UnicodeDecodeError:
                raise DataError(f"{where}: .{key} is not UTF-8 text") from None
    info = sample.get("json")
    if text_key is None and isinstance(info, dict):
        value = info.get("caption", info.get("text"))
        value = next((v for v in value if isinstance(v, str)), None) if isinstance(value, list) else value
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _parse_json_part(sample: dict[str, Any], where: str) -> None:
    if "json" in sample:
        try:
            sample["json"] = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: .json part is not valid JSON ({e})") from None


_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)
_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


class _TailReader:
    """A read-only stream that remembers how many bytes went through it and the last 1024 of them."""

    def __init__(self, raw) -> None:
        self.raw, self.size, self.tail = raw, 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.size += len(data)
        self.tail = data[-1024:] if len(data) >= 1024 else (self.tail + data)[-1024:]
        return data


def _shard_samples(path: str) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard as WebDataset groups them (files sharing a key up to the first dot), read
    with the library's tar iterators from a file we open ourselves (never a URL: ``pipe:`` would run a command).

    A shard that is cut short or corrupt is an error, also where the tar reader would stop quietly: it takes a
    header cut short for the end of the archive, so a shard truncated at a member boundary would import its first
    members and say nothing. We decompress the shard ourselves (the decompressor raises on a stream cut short),
    hand the tar reader the plain archive, read what it leaves (the end blocks' padding) and require that the
    archive ends with two zero blocks, all in one pass."""
    from webdataset import tariterators  # lazy: webdataset imports torch

    with open(path, "rb") as f:
        magic = f.read(6)
    opener = next((op for m, op in _COMPRESSED if magic.startswith(m)), open)
    try:
        with opener(path, "rb") as raw:
            stream = _TailReader(raw)
            files = tariterators.tar_file_expander([{"url": path, "stream": stream}])
            yield from tariterators.group_by_keys(files)
            while stream.read(1 << 20):
                pass
    except _TAR_ERRORS as e:  # a corrupt .tar.xz raises lzma.LZMAError, which is not an OSError
        reason = str(e.args[0]) if e.args else type(e).__name__
        raise DataError(f"{path}: truncated or corrupt tar shard ({reason.split(' @ ')[0]})") from None
    if stream.size % 512 or len(stream.tail) < 1024 or stream.tail.count(0) != len(stream.tail):
        raise DataError(f"{path}: truncated tar shard (it does not end with the end-of-archive blocks)")


def webdataset_items(
    shards: Sequence[str],
    text_key: str | None = None,
    order: str = "text-first",
    require_text: bool = True,
    limit: int | None = None,
) -> tuple[None, Iterator[Item]]:
    """WebDataset tar shards -> (None: the count is known only at the end, items).

    Each sample (files sharing a key) becomes a document: its text (``text_key``, else txt / text / caption /
    transcript, else the "caption" or "text" field of its .json) and every image or audio part (by extension),
    written to ``images/`` or ``audio/`` as ``NNNNNNN.ext``. meta: key, shard, cls (a .cls part), json (a .json
    part). A sample without media, or without text when ``require_text``, is a bad item.
    """
    paths = shard_paths(shards)

    def items() -> Iterator[Item]:
        n = 0
        for shard in paths:
            for sample in _shard_samples(shard):
                if limit is not None and n >= limit:
                    return
                key = sample["__key__"]
                where = f"{shard}: sample {key}"
                _parse_json_part(sample, where)
                text = _sample_text(sample, text_key, where)
                files, media = {}, []
                for ext in sorted(k for k in sample if not k.startswith("__")):
                    kind = media_kind(f"x.{ext}")
                    if kind is not None:
                        rel = f"{'images' if kind == 'image' else 'audio'}/{n:07d}.{ext.rsplit('.', 1)[-1]}"
                        files[rel] = sample[ext]
                        media.append((kind, rel))
                meta: dict[str, Any] = {"key": key, "shard": os.path.abspath(shard)}
                if "cls" in sample:
                    meta["cls"] = _int_or_str(sample["cls"].decode("utf-8", "replace").strip())
                if isinstance(sample.get("json"), (dict, list)):
                    meta["json"] = sample["json"]
                problem = None
                if not media:
                    parts = ", ".join(sorted(k for k in sample if not k.startswith("__")))
                    problem = f"no image or audio part (it has {parts})"
                elif require_text and text is None:
                    problem = f"no text part ({'.' + text_key if text_key else 'txt, text, caption, transcript'})"
                yield Item(document(key, text, media, meta, order), where=where, files=files, problem=problem)
                n += 1

    return None, items()


# ---------------------------------------------------------------------------------------------- writing
def _check_media(item: Item, tmp: str, out: str) -> None:
    """Check the media of an item: a user's file must not lie in ``out`` (the import replaces that folder), and
    unless the item is trusted every file is decoded with the tokenizers' readers. Errors name the source, not the
    temp folder."""
    for seg in item.record["segments"]:
        kind = next((k for k in ("image", "audio") if k in seg), None)
        if kind is None:
            continue
        ours = not os.path.isabs(seg[kind])
        path = os.path.join(tmp, seg[kind]) if ours else seg[kind]
        if not ours and os.path.commonpath([out, os.path.abspath(path)]) == out:
            raise DataError(f"{item.where}: {path} lies in --out {out}, which the import replaces; give another --out")
        if item.trusted:
            continue
        try:
            from chameleon_lite.data.manifest import check_audio_file, check_image_file  # lazy: numpy, PIL; --help

            (check_image_file if kind == "image" else check_audio_file)(path)
        except DataError as e:
            raise DataError(f"{item.where}: {str(e).replace(path, seg[kind]) if ours else e}") from None


def write_import(
    out: str,
    items: Iterable[Item],
    *,
    command: str,
    params: dict[str, Any],
    total: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> ImportSummary:
    """Write ``items`` as ``out/manifest.jsonl`` (+ the media they carry, + ``import.json`` recording ``command``,
    ``params`` and the counts).

    ``out`` must be new, empty or an earlier import (:data:`IMPORTED`), checked before any work. The import is
    assembled in a new folder beside ``out`` and replaces it only when complete; on an error that folder is removed
    and ``out`` is left as it was. skip_bad: leave out items whose media cannot be decoded (or that have a
    ``problem``) and count them, instead of stopping at the first. Zero documents is an error.
    """
    from tqdm import tqdm  # lazy: --help imports this module

    t0 = time.perf_counter()
    out = os.path.abspath(out)
    check_output_dir(out, IMPORTED)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.import-", dir=parent)
    except OSError as e:
        raise UserError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    counts = {"text": 0, "image": 0, "audio": 0}
    documents, skipped, examples = 0, 0, []
    try:
        for sub in ("images", "audio"):
            os.makedirs(os.path.join(tmp, sub))
        bar = tqdm(total=total, desc=command.split()[-1], unit="doc", disable=not progress)
        with bar, open(os.path.join(tmp, "manifest.jsonl"), "w", encoding="utf-8") as f:
            for item in items:
                bar.update(1)
                try:
                    if item.problem is not None:
                        raise DataError(f"{item.where}: {item.problem}")
                    for rel, data in item.files.items():
                        with open(os.path.join(tmp, rel), "wb") as mf:
                            mf.write(data)
                    _check_media(item, tmp, out)
                except DataError as e:
                    if not skip_bad:
                        raise
                    for rel in item.files:
                        if os.path.exists(os.path.join(tmp, rel)):
                            os.remove(os.path.join(tmp, rel))
                    skipped += 1
                    if len(examples) < 5:
                        examples.append(str(e))
                    continue
                f.write(json.dumps(item.record, ensure_ascii=False) + "\n")
                documents += 1
                for seg in item.record["segments"]:
                    counts[next(k for k in counts if k in seg)] += 1
        if documents == 0:
            raise DataError(f"nothing imported: all {skipped} item(s) were unusable, e.g. {examples[0]}")
        for sub in ("images", "audio"):
            if not os.listdir(os.path.join(tmp, sub)):
                os.rmdir(os.path.join(tmp, sub))
        summary = {"documents": documents, "segments": counts, "skipped": skipped, "skipped_examples": examples}
        write_json_atomic(os.path.join(tmp, "import.json"), {"command": command, "params": params, **summary})
        replace_dir(tmp, out, IMPORTED)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    manifest = os.path.join(out, "manifest.jsonl")
    return ImportSummary(manifest, documents, counts, skipped, examples, time.perf_counter() - t0)
