"""JSONL manifests of user documents (ARCHITECTURE §7).

One document per line::

    {"id": "doc-1", "segments": [{"text": "..."}, {"image": "a.png"}, {"audio": "b.wav", "attend": "bidirectional"}],
     "meta": {...}}

Media paths are relative to the manifest's folder (absolute paths are kept). A segment has exactly one of
``text`` / ``image`` / ``audio`` and optionally ``attend`` ("causal", the default, or "bidirectional": an input
span the model reads in both directions and is not trained to produce). ``id`` and ``meta`` are optional.

Conversations (ARCHITECTURE §4) mark their turns with segments of their own, ``{"turn": "user"}``,
``{"turn": "assistant"}`` and ``{"turn": "end"}``, which the sequence encoder turns into the special ids
``<user>``, ``<assistant>`` and ``<eot>`` (text can never produce them)::

    {"segments": [{"turn": "user"}, {"text": "draw a big red circle"}, {"turn": "end"},
                  {"turn": "assistant"}, {"image": "a.png"}, {"turn": "end"}]}

:func:`iter_documents` is lazy and raises :class:`DataError` at the first bad line; :func:`validate_manifest`
reads everything and collects every problem as ``file:line: reason``. Media files are judged by the readers the
tokenizers use (:mod:`~chameleon_lite.data.image_files`, :mod:`~chameleon_lite.data.audio_files`), so ``data validate`` passes exactly the files
``data tokenize`` accepts with the default limits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from chameleon_lite.data.audio_files import DEFAULT_MAX_SECONDS, read_audio_file
from chameleon_lite.data.image_files import DEFAULT_MAX_PIXELS, read_image_file
from chameleon_lite.data.media import check_media_path
from chameleon_lite.errors import DataError

KINDS = ("text", "image", "audio")
TURNS = ("user", "assistant", "end")
ATTEND = ("causal", "bidirectional")
SEGMENT_KEYS = set(KINDS) | {"attend", "turn"}
DOCUMENT_KEYS = {"id", "segments", "meta"}


@dataclasses.dataclass(frozen=True)
class Segment:
    """One piece of a document. ``path`` is absolute for image/audio; ``text`` is set for text; ``turn`` (one of
    :data:`TURNS`) for a conversation turn marker, whose kind is ``"turn"``."""

    kind: str
    text: str | None = None
    path: str | None = None
    attend: str = "causal"
    turn: str | None = None

    @property
    def bidirectional(self) -> bool:
        return self.attend == "bidirectional"


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    segments: tuple[Segment, ...]
    line: int
    source: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _parse_segment(seg: Any, where: str, base: str, index: int) -> Segment:
    if not isinstance(seg, dict):
        raise DataError(f"{where}: segment {index} must be an object, got {type(seg).__name__}")
    unknown = set(seg) - SEGMENT_KEYS
    if unknown:
        raise DataError(
            f"{where}: segment {index} has unknown key(s) {sorted(unknown)}; allowed: text, image, audio, attend, turn"
        )
    if "turn" in seg:
        if len(seg) != 1 or seg["turn"] not in TURNS:
            raise DataError(f'{where}: segment {index} must be just {{"turn": one of {list(TURNS)}}}, got {seg!r}')
        return Segment(kind="turn", turn=seg["turn"])
    kinds = [k for k in KINDS if k in seg]
    if len(kinds) != 1:
        raise DataError(f"{where}: segment {index} must have exactly one of text/image/audio, has {kinds or 'none'}")
    kind = kinds[0]
    value = seg[kind]
    if not isinstance(value, str):
        raise DataError(f"{where}: segment {index} {kind!r} must be a string, got {type(value).__name__}")
    attend = seg.get("attend", "causal")
    if attend not in ATTEND:
        raise DataError(f"{where}: segment {index} attend must be one of {ATTEND}, got {attend!r}")
    if kind == "text":
        if value == "":
            raise DataError(f"{where}: segment {index} has empty text")
        return Segment(kind="text", text=value, attend=attend)
    if value == "":
        raise DataError(f"{where}: segment {index} has an empty {kind} path")
    path = value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
    return Segment(kind=kind, path=path, attend=attend)


def parse_line(line: str, source: str, lineno: int) -> Document | None:
    """Parse one manifest line; None for a blank line. Raises DataError naming source:line."""
    where = f"{source}:{lineno}"
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a document must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - DOCUMENT_KEYS
    if unknown:
        raise DataError(f"{where}: unknown document key(s) {sorted(unknown)}; allowed: id, segments, meta")
    segs = obj.get("segments")
    if not isinstance(segs, list):
        raise DataError(f"{where}: 'segments' must be a list")
    if not segs:
        raise DataError(f"{where}: empty document (no segments)")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise DataError(f"{where}: 'meta' must be an object")
    base = os.path.dirname(os.path.abspath(source))
    segments = tuple(_parse_segment(s, where, base, i) for i, s in enumerate(segs))
    doc_id = obj.get("id", f"line-{lineno}")
    if not isinstance(doc_id, (str, int)):
        raise DataError(f"{where}: 'id' must be a string")
    return Document(id=str(doc_id), segments=segments, line=lineno, source=source, meta=meta)


def _open_manifest(path: str):
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; give the manifest file (.jsonl) inside it")
    if not os.path.isfile(path):
        raise DataError(f"{path}: manifest not found" if not os.path.exists(path) else f"{path}: not a regular file")
    return open(path, encoding="utf-8", errors="strict")


def iter_documents(path: str | os.PathLike, *, check_files: bool = True) -> Iterator[Document]:
    """Lazily yield the documents of a JSONL manifest; raise DataError (file:line: reason) at the first bad one.

    check_files: also require every media path to be a non-empty regular file (cheap: one ``stat``; decoding is
    checked by validate_manifest).
    """
    path = os.fspath(path)
    with _open_manifest(path) as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason})") from None
            if not line:
                return
            lineno += 1
            doc = parse_line(line, path, lineno)
            if doc is None:
                continue
            if check_files:
                for i, s in enumerate(doc.segments):
                    if s.path is not None:
                        try:
                            check_media_path(s.path, s.kind)
                        except DataError as e:
                            raise DataError(f"{doc.where}: segment {i}: {e}") from None
            yield doc


def check_image_file(path: str, max_pixels: int | None = None) -> tuple[int, int]:
    """Decode an image file as the image tokenizer does; return (width, height). Raises DataError naming the file.

    max_pixels: None for the default of ImageVQConfig (what tokenizing uses unless its config says otherwise).
    """
    rgb = read_image_file(path, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    return rgb.shape[1], rgb.shape[0]


def check_audio_file(path: str, max_seconds: float | None = None) -> tuple[int, int, int]:
    """Decode an audio file as the audio tokenizer does; return (frames, sample_rate, channels). Raises DataError
    naming the file. max_seconds: None for the default of AudioCodecConfig (what tokenizing uses by default)."""
    data, sr = read_audio_file(path, DEFAULT_MAX_SECONDS if max_seconds is None else max_seconds)
    return data.shape[0], sr, data.shape[1]


@dataclasses.dataclass
class ValidationReport:
    path: str
    documents: int = 0
    segments: dict[str, int] = dataclasses.field(default_factory=lambda: {k: 0 for k in KINDS})
    bidirectional: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.documents > 0

    def summary(self, max_errors: int = 50) -> str:
        lines = [
            f"{self.path}: {self.documents} valid document(s); segments: "
            + ", ".join(f"{k} {v}" for k, v in self.segments.items())
            + f" ({self.bidirectional} bidirectional)"
        ]
        if self.documents == 0 and not self.errors:
            lines.append("error: the manifest holds no documents")
        if self.errors:
            lines.append(f"{len(self.errors)} error(s):")
            lines += ["  " + e for e in self.errors[:max_errors]]
            if len(self.errors) > max_errors:
                lines.append(f"  … and {len(self.errors) - max_errors} more")
        else:
            lines.append("no errors" if self.documents else "")
        return "\n".join(x for x in lines if x)


def validate_manifest(
    path: str | os.PathLike,
    *,
    check_media: bool = True,
    progress: bool = False,
    max_pixels: int | None = None,
    max_seconds: float | None = None,
) -> ValidationReport:
    """Check every line of a manifest: JSON, keys, non-empty documents, media paths regular files and (check_media)
    decodable by the tokenizers' own readers, within max_pixels / max_seconds (None: the defaults of ImageVQConfig
    and AudioCodecConfig, which tokenizing uses unless a tokenizer config sets other limits).

    Returns a report listing every problem as ``file:line: reason`` instead of stopping at the first.
    """
    path = os.fspath(path)
    report = ValidationReport(path=path)
    try:
        f = _open_manifest(path)
    except DataError as e:
        report.errors.append(str(e))
        return report

    with f:
        raw = f.buffer.read()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, bline in enumerate(tqdm(lines, desc="validate", unit="doc", disable=not progress), start=1):
        try:
            text = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            report.errors.append(f"{path}:{lineno}: not UTF-8 text ({e.reason})")
            continue
        try:
            doc = parse_line(text, path, lineno)
        except DataError as e:
            report.errors.append(str(e))
            continue
        if doc is None:
            continue
        bad = False
        for i, s in enumerate(doc.segments):
            if s.path is None:
                continue
            try:
                check_media_path(s.path, s.kind)
                if check_media and s.kind == "image":
                    check_image_file(s.path, max_pixels)
                elif check_media:
                    check_audio_file(s.path, max_seconds)
            except DataError as e:
                report.errors.append(f"{doc.where}: segment {i}: {e}")
                bad = True
        if bad:
            continue
        report.documents += 1
        for s in doc.segments:
            report.segments[s.kind] = report.segments.get(s.kind, 0) + 1
            report.bidirectional += s.bidirectional
    return report
