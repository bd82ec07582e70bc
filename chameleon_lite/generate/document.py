"""Generated documents: routing a unified id stream into text/image/audio spans, detokenizing each span, and
writing the output folder of ARCHITECTURE §7 (document.md, document.html, document.json, image_###.png,
audio_###.wav as 16-bit PCM).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import shutil
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from chameleon_lite.errors import UserError
from chameleon_lite.files import DOCUMENT, check_output_dir, read_json, replace_dir, write_bytes_atomic
from chameleon_lite.vocab import UnifiedVocab


@dataclasses.dataclass
class Span:
    """One routed span. ids are unified ids without the <boi>/<eoi>/<boa>/<eoa> markers."""

    kind: str  # "text" | "image" | "audio"
    ids: list[int]
    text: str | None = None
    image: np.ndarray | None = None  # uint8 [H, W, 3]
    audio: np.ndarray | None = None  # float32 [samples]
    sample_rate: int | None = None
    complete: bool = True  # False for a span cut off by the token budget (not decoded)
    from_prompt: bool = False
    role: str | None = None  # "user" | "assistant" inside a conversation's turn, else None


def turn_roles(vocab: UnifiedVocab) -> dict[int, str | None]:
    """Turn marker id -> the role of the spans after it (``<eot>``: none); {} for a vocabulary without turns."""
    if not vocab.conversation_ready:
        return {}
    return {vocab.user: "user", vocab.assistant: "assistant", vocab.eot: None}


def split_spans(ids: list[int], vocab: UnifiedVocab, role: str | None = None) -> list[Span]:
    """Split a unified id stream into spans. <bos>/<pad> are dropped; <eos> ends the stream. Turn markers
    (<user>, <assistant>, <eot>) end a text span and set the ``role`` of the spans after them (``role``: the
    role the stream starts in)."""
    spans: list[Span] = []
    text: list[int] = []
    i, n = 0, len(ids)
    turns = turn_roles(vocab)

    def flush_text() -> None:
        if text:
            spans.append(Span("text", list(text), role=role))
            text.clear()

    while i < n:
        t = ids[i]
        if t == vocab.eos:
            break
        if t in turns:
            flush_text()
            role = turns[t]
            i += 1
            continue
        if t in (vocab.boi, vocab.boa):
            flush_text()
            end_tok = vocab.eoi if t == vocab.boi else vocab.eoa
            j = i + 1
            while j < n and ids[j] != end_tok and ids[j] != vocab.eos:
                j += 1
            complete = j < n and ids[j] == end_tok
            kind = "image" if t == vocab.boi else "audio"
            spans.append(Span(kind, list(ids[i + 1 : j]), complete=complete, role=role))
            i = j + 1
            continue
        if vocab.text_offset <= t < vocab.image_offset:
            text.append(t)
        i += 1
    flush_text()
    return spans


def detokenize(spans: list[Span], tokenizers: Any) -> list[Span]:
    """Fill each span's text/image/audio with its detokenizer (tokenizers: a tokenizers.loader.Tokenizers bundle)."""

    vocab = tokenizers.vocab
    for s in spans:
        if s.kind == "text":
            s.text = tokenizers.text.decode(vocab.unified_to_text(s.ids).tolist())
        elif s.kind == "image":
            tok = tokenizers.image
            if tok is None or not s.complete or len(s.ids) != tok.tokens_per_image:
                s.complete = False
                continue
            h, w = tok.grid
            codes = vocab.unified_to_image(torch.tensor(s.ids)).reshape(1, h, w)
            s.image = np.asarray(tok.decode(codes)[0])
        else:
            tok = tokenizers.audio
            whole = len(s.ids) - len(s.ids) % vocab.audio_levels
            if tok is None or whole == 0:
                s.complete = False
                continue
            codes = vocab.unified_to_audio(torch.tensor(s.ids[:whole]))
            s.audio = np.asarray(tok.decode(codes), dtype=np.float32).reshape(-1)
            s.sample_rate = tok.sample_rate
    return spans


@dataclasses.dataclass
class Document:
    """A generated (or prompted) interleaved document."""

    spans: list[Span]
    ids: list[int]
    prompt_ids: list[int] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(s.text or "" for s in self.spans if s.kind == "text")

    @property
    def reply(self) -> str:
        """The generated text only (the answer, without the prompt's text)."""
        return "".join(s.text or "" for s in self.spans if s.kind == "text" and not s.from_prompt)

    @property
    def conversation(self) -> list[int]:
        """The unified ids of the whole conversation so far (prompt + answer), what ``--history`` continues."""
        return list(self.prompt_ids) + list(self.ids)

    @property
    def images(self) -> list[np.ndarray]:
        return [s.image for s in self.spans if s.kind == "image" and s.image is not None]

    @property
    def audios(self) -> list[np.ndarray]:
        return [s.audio for s in self.spans if s.kind == "audio" and s.audio is not None]

    def save(self, out_dir: str) -> str:
        return write_document(self, out_dir)


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _wav_bytes(audio: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.nan_to_num(audio), -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _text_after(prev: Span | None, span: Span) -> str:
    """A text span's text, with a space in front where the answer's first word would run into the prompt's last."""
    text = span.text or ""
    joined = prev is not None and prev.kind == "text" and prev.from_prompt != span.from_prompt
    if joined and prev.text and text and not prev.text[-1].isspace() and not text[0].isspace():
        return " " + text
    return text


def write_document(doc: Document, out_dir: str) -> str:
    """Write the output folder; returns its path. Files: document.md, document.html, document.json,
    image_###.png, audio_###.wav (16-bit PCM). The folder is built beside ``out_dir`` and replaces it whole, so no
    file of an earlier, longer document is left behind; a folder this tool did not write is refused."""
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir, DOCUMENT)
    tmp = f"{out_dir.rstrip(os.sep)}.tmp.{os.getpid()}"
    os.makedirs(tmp)
    try:
        _write_files(doc, tmp)
        replace_dir(tmp, out_dir, DOCUMENT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_files(doc: Document, tmp: str) -> None:
    md: list[str] = []
    body: list[str] = []
    seg_json: list[dict[str, Any]] = []
    n_img = n_aud = 0
    prev: Span | None = None
    role: str | None = None
    for s in doc.spans:
        entry: dict[str, Any] = {"kind": s.kind, "ids": s.ids, "complete": s.complete, "from_prompt": s.from_prompt}
        if s.role is not None:
            entry["role"] = s.role
        if s.role != role and s.role is not None:  # a conversation: each turn under its speaker's name
            md.append(f"\n\n**{s.role}:** ")
            body.append(f'<h4 class="role">{s.role}</h4>')
            prev = None
        role = s.role
        if s.kind == "text":
            entry["text"] = s.text
            text = _text_after(prev, s)
            md.append(text)
            body.append(f'<span class="text">{html.escape(text)}</span>'.replace("\n", "<br>"))
        elif s.kind == "image" and s.image is not None:
            name = f"image_{n_img:03d}.png"
            n_img += 1
            png = _png_bytes(s.image)
            write_bytes_atomic(os.path.join(tmp, name), png)
            entry["file"] = name
            md.append(f"\n\n![{name}]({name})\n\n")
            b64 = base64.b64encode(png).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{b64}" alt="{name}" width="256" style="image-rendering:pixelated"><figcaption>{name}</figcaption></figure>'
            )
        elif s.kind == "audio" and s.audio is not None:
            name = f"audio_{n_aud:03d}.wav"
            n_aud += 1
            wav = _wav_bytes(s.audio, int(s.sample_rate or 16000))
            write_bytes_atomic(os.path.join(tmp, name), wav)
            entry["file"] = name
            entry["seconds"] = len(s.audio) / float(s.sample_rate or 16000)
            md.append(f"\n\n[{name}]({name})\n\n")
            b64 = base64.b64encode(wav).decode()
            body.append(
                f'<figure><audio controls src="data:audio/wav;base64,{b64}"></audio><figcaption>{name}</figcaption></figure>'
            )
        else:
            md.append(f"\n\n*(unfinished {s.kind} span: {len(s.ids)} ids)*\n\n")
            body.append(f"<p><em>unfinished {s.kind} span ({len(s.ids)} ids)</em></p>")
        seg_json.append(entry)
        prev = s
    write_bytes_atomic(os.path.join(tmp, "document.md"), "".join(md).strip().encode() + b"\n")
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>chameleon-lite document</title>'
        "<style>body{font-family:sans-serif;max-width:48em;margin:2em auto;line-height:1.5}"
        "figure{margin:1em 0}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    write_bytes_atomic(os.path.join(tmp, "document.html"), page.encode())
    meta = {
        "segments": seg_json,
        "ids": doc.ids,
        "prompt_ids": doc.prompt_ids,
        "settings": doc.settings,
        "timings": doc.timings,
    }
    write_bytes_atomic(os.path.join(tmp, "document.json"), json.dumps(meta, indent=1).encode())


def load_history(path: str, vocab: UnifiedVocab) -> list[int]:
    """The unified ids of a conversation saved by `generate` (its output folder, or the folder's document.json),
    ready to go on with a new user turn: every turn closed by ``<eot>``. Refused with one line when the document
    was not a conversation, was written with another vocabulary, or its last answer did not end its turn."""
    where = os.path.join(path, "document.json") if os.path.isdir(path) else path
    meta = read_json(where, "saved conversation (document.json of a `generate` output folder)")
    settings = meta.get("settings")
    prompt, ids = meta.get("prompt_ids"), meta.get("ids")
    if not isinstance(settings, dict) or not isinstance(prompt, list) or not isinstance(ids, list):
        raise UserError(f"{where}: not a document written by `generate` (settings, prompt_ids, ids missing)")
    if any(isinstance(t, bool) or not isinstance(t, int) for t in prompt + ids):
        raise UserError(f"{where}: prompt_ids and ids must be lists of integers")
    if not settings.get("chat"):
        raise UserError(f"{where}: not a conversation (generated with --plain or by a model without the chat format)")
    if settings.get("vocab_hash") != vocab.hash:
        raise UserError(
            f"{where}: written with vocabulary {settings.get('vocab_hash')!r}, the model has {vocab.hash}; "
            "continue it with the model that wrote it"
        )
    vocab.check_ids(prompt + ids, what=f"{where}:")
    finish = settings.get("finish_reason")
    if finish not in ("eot", "eos", "stop"):
        raise UserError(
            f"{where}: its last answer was cut off (finish_reason {finish!r}); generate it again with a larger "
            "--max-new-tokens before going on"
        )
    return close_turn(prompt + ids, vocab)


def close_turn(ids: list[int], vocab: UnifiedVocab) -> list[int]:
    """A conversation's ids with ``<pad>``/``<eos>`` dropped and its last turn closed by ``<eot>`` (an answer ended by
    ``<eos>`` or a stop string, which ends rows in text only)."""
    conv = [t for t in ids if t not in (vocab.pad, vocab.eos)]
    return conv if conv[-1:] == [vocab.eot] else conv + [vocab.eot]
