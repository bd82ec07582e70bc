"""The procedural multimodal corpus: seeded shapes pictures, note melodies and their captions.

It writes real files plus a JSONL manifest, so it exercises exactly the path user data takes::

    OUT/manifest.jsonl     one document per line (ARCHITECTURE §7)
    OUT/images/*.png       RGB, ``image_size`` x ``image_size`` (default 48)
    OUT/audio/*.wav        16-bit PCM mono at ``sample_rate`` (default 16 kHz)
    OUT/corpus.json        the CorpusConfig, seed and n that produced the folder

A manifest line looks like::

    {"id": "proc-0-000007",
     "segments": [{"text": "Draw a large red circle at the top left."}, {"image": "images/000007_0.png"}],
     "meta": {"task": "caption_to_image",
              "media": [{"type": "image", "height": 48, "width": 48,
                         "shapes": [{"kind": "circle", "color": "red", "size": "large", "position": "top left"}]}]}}

``meta["media"]`` holds the ground truth of every image/audio segment in segment order (see
:meth:`ImageSpec.to_meta` / :meth:`AudioSpec.to_meta`; ``from_meta`` reads them back), ``meta["task"]`` the task
form. An audio record reads ``{"type": "audio", "sample_rate": 16000, "notes": ["C5", "E5", "G5"],
"timbre": "square", "durations": [0.3, 0.25, 0.31]}``. The input media of ``image_to_caption`` and
``audio_to_caption`` documents carry ``"attend": "bidirectional"`` (unless ``bidirectional_inputs`` is off).

Pure building blocks (also used by the checkers, tests and evaluation): :func:`sample_image_spec`,
:func:`render_image`, :func:`caption_image`, :func:`image_prompt`; :func:`sample_audio_spec`,
:func:`synthesize_audio`, :func:`caption_audio`, :func:`audio_prompt`; :func:`interleaved_text`;
:func:`make_document` (one document, in memory) and :func:`write_corpus` (the folder).

Images
    Plain black background (:data:`BACKGROUND`); 1-2 shapes, each of a kind in :data:`SHAPE_KINDS`, a color in
    :data:`COLORS`, a size in :data:`SIZES` and a cell of the 3x3 grid named in :data:`POSITIONS`. A shape is
    centred in its cell and lies strictly inside it; two shapes never share a cell. Edges are anti-aliased by
    4x4 supersampling; the coverage maps are shared with the checker (:func:`coverage_maps`), which is why it
    can be exact. The default side, 48, is a multiple of 3 * 8: each grid cell is exactly 2x2 patches of the
    image tokenizer (factor 8), so a shape is cut by the patch grid the same way in every cell, and a tokenizer
    that reads the border as background (the tiny preset) gives it the same codes wherever it stands (for 98.75 %
    of the shapes exactly, docs/image_tokenizer_eval.json).
Audio
    1-4 notes from :data:`PITCHES` (C4 ... C6, chromatic, written like ``C#4``), each 0.20-0.40 s, one timbre
    from :data:`TIMBRES` for the whole clip. Notes are band-limited additive syntheses (harmonics below
    0.45 * sample_rate: sine = fundamental only, square = odd harmonics at 1/n, sawtooth = all harmonics at
    1/n), with a raised-cosine attack/release and :data:`NOTE_GAP` seconds of silence between notes; clips last
    0.5-2 s. Durations, gaps and the lead are whole multiples of :data:`TIME_GRID` (20 ms, one frame of the audio
    codec at 16 kHz), so every note starts on a codec frame boundary and a note's frames depend only on its
    pitch, timbre and length, not on where it falls in the clip.
Task forms (:data:`TASKS`)
    ``caption_to_image`` [prompt, image]; ``image_to_caption`` [image, caption]; ``caption_to_audio`` [prompt,
    audio]; ``audio_to_caption`` [audio, caption]; ``interleaved`` [text, media, text, media, ...] with 2-4 media
    items, each introduced by a sentence describing it; ``instruction`` [request, media, media, ...]: one
    free-form request for 1-3 media items in order, the way a user asks for a mixed document
    ("a large red circle in the top left, then play C5 E5 G5 on a square wave"), then the items themselves.
Conversation task forms (:data:`CONVERSATION_TASKS`, weight 0 unless a config names them)
    Documents in turns (``{"turn": "user" | "assistant" | "end"}`` segments, see
    :mod:`~chameleon_lite.data.sequence`), worded by the *train* split of :mod:`~chameleon_lite.data.grammar` and
    free of its reserved attribute combinations. ``chat_media``: a request for 1..``instruction_media`` items,
    answered by an optional short lead and the media; ``chat_caption``: an input picture or clip and a question,
    answered by a caption; ``chat_followup``: a request and its media, then 1-2 follow-up edits ("now make it blue",
    "play it an octave higher", "what did you just play?") each answered from the last output;
    ``chat_out_of_scope``: a request the model cannot serve, answered by a short text saying what it can do.
    ``meta["phrasing"]`` lists the grammar entries used, ``meta["requests"]`` what each user turn asked for.
    With ``unconditional_rate`` a ``chat_media`` document of one item drops its condition (an empty user turn),
    the unconditional spans classifier-free guidance needs. ``exclude_reserved`` keeps the reserved combinations
    out of the template tasks too.

Document i depends only on (seed, i): it draws from ``numpy.random.default_rng([seed, i])``, so the corpus is
byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import os
import wave
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from chameleon_lite.configs import config_from_dict
from chameleon_lite.data import grammar
from chameleon_lite.data.specs import (  # noqa: F401  (re-exported: the corpus vocabulary and specs live there)
    AMPLITUDE,
    ATTACK,
    BACKGROUND,
    COLOR_NAMES,
    COLORS,
    HARMONIC_LIMIT,
    LEAD,
    MAX_NOTES,
    MAX_SHAPES,
    MIDI_C4,
    MIN_CLIP,
    NOTE_DURATIONS,
    NOTE_GAP,
    PITCHES,
    POSITIONS,
    RELEASE,
    SHAPE_KINDS,
    SIZE_NAMES,
    SIZES,
    SUPERSAMPLE,
    TIMBRES,
    TIME_GRID,
    AudioSpec,
    ImageSpec,
    Shape,
    midi_to_pitch,
    pitch_frequency,
    pitch_to_midi,
    sample_audio_spec,
    sample_image_spec,
)
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import CORPUS, atomic_path, check_output_dir, write_json_atomic

TASKS: tuple[str, ...] = (
    "caption_to_image",
    "image_to_caption",
    "caption_to_audio",
    "audio_to_caption",
    "interleaved",
    "instruction",
)

IMAGE_CAPTIONS: tuple[str, ...] = (
    "{shapes}.",
    "An image of {shapes}.",
    "A picture with {shapes}.",
    "There is {shapes}.",
)
IMAGE_PROMPTS: tuple[str, ...] = ("Draw {shapes}.", "Make an image of {shapes}.")
AUDIO_CAPTIONS: tuple[str, ...] = (
    "{notes} on a {timbre} wave.",
    "The {noun} {notes} on a {timbre} wave.",
    "A {timbre} wave playing {notes}.",
)
AUDIO_PROMPTS: tuple[str, ...] = ("Play {notes} on a {timbre} wave.", "Play the {noun} {notes} on a {timbre} wave.")
INTERLEAVED_FIRST: dict[str, str] = {
    "image": "Here is an image of {shapes}.",
    "audio": "Here is {notes} on a {timbre} wave.",
}
INTERLEAVED_NEXT: dict[str, str] = {
    "image": "Next, an image of {shapes}.",
    "audio": "Next, {notes} on a {timbre} wave.",
}
CONVERSATION_TASKS: tuple[str, ...] = ("chat_media", "chat_caption", "chat_followup", "chat_out_of_scope")
ALL_TASKS: tuple[str, ...] = TASKS + CONVERSATION_TASKS
# Items of an ``instruction`` request, joined by ", then "; shapes are placed "at the" or "in the" their cell.
INSTRUCTION_ITEMS: dict[str, tuple[str, ...]] = {
    "image": ("{shapes}", "draw {shapes}", "an image of {shapes}"),
    "audio": ("play {notes} on a {timbre} wave", "{notes} on a {timbre} wave"),
}


# ---------------------------------------------------------------------------------------------- config
_OPTIONAL_FIELDS = {"unconditional_rate": 0.0, "exclude_reserved": False}


def _default_task_weights() -> dict[str, float]:
    return {t: 1.0 for t in TASKS}


@dataclasses.dataclass
class CorpusConfig:
    """How the procedural corpus looks. JSON round trip via :meth:`to_dict` / :meth:`from_dict`."""

    image_size: int = 48
    sample_rate: int = 16000
    task_weights: dict[str, float] = dataclasses.field(default_factory=_default_task_weights)
    interleaved_media: tuple[int, int] = (2, 4)  # inclusive range of media items in an interleaved document
    instruction_media: tuple[int, int] = (1, 3)  # ... and in an instruction document
    # In image_to_caption / audio_to_caption documents the media is an input the model reads, never one it must
    # generate: mark it "attend": "bidirectional" (ARCHITECTURE §5), as generation feeds prompt media.
    bidirectional_inputs: bool = True
    # Fields after this line are left out of to_dict at their defaults, so corpus.json of a config that does not
    # use them stays what it was.
    unconditional_rate: float = 0.0  # fraction of one-item chat_media documents whose user turn is emptied
    exclude_reserved: bool = False  # template tasks too draw no reserved attribute combination (chat tasks never)

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be an integer in [32, 1024], got {self.image_size!r}")
        if not isinstance(self.sample_rate, int) or not 8000 <= self.sample_rate <= 96000:
            raise ConfigError(f"sample_rate must be an integer in [8000, 96000] Hz, got {self.sample_rate!r}")
        unknown = set(self.task_weights) - set(ALL_TASKS)
        if unknown:
            raise ConfigError(f"unknown task(s) {sorted(unknown)} in task_weights; known: {list(ALL_TASKS)}")
        if not isinstance(self.unconditional_rate, (int, float)) or not 0.0 <= self.unconditional_rate <= 1.0:
            raise ConfigError(f"unconditional_rate must be a number in [0, 1], got {self.unconditional_rate!r}")
        weights = list(self.task_weights.values())
        if any(not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"task_weights must be finite, >= 0 and not all 0, got {self.task_weights}")
        for name in ("interleaved_media", "instruction_media"):
            setattr(self, name, tuple(getattr(self, name)))
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= 16:
                raise ConfigError(f"{name} must be (lo, hi) with 1 <= lo <= hi <= 16, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["interleaved_media"] = list(self.interleaved_media)
        d["instruction_media"] = list(self.instruction_media)
        for name, default in _OPTIONAL_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> CorpusConfig:
        return config_from_dict(cls, d, source, "corpus config")


# ---------------------------------------------------------------------------------------------- images
def cell_bounds(cell: int, height: int, width: int) -> tuple[float, float, float, float]:
    """Continuous bounds (top, bottom, left, right) of grid cell ``cell`` in pixel units (pixel i spans [i, i+1))."""
    r, c = divmod(cell, 3)
    return r * height / 3, (r + 1) * height / 3, c * width / 3, (c + 1) * width / 3


def cell_box(cell: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel index box (r0, r1, c0, c1), half-open, of the pixels whose centres lie in grid cell ``cell``."""
    top, bottom, left, right = cell_bounds(cell, height, width)
    return (math.ceil(top - 0.5), math.ceil(bottom - 0.5), math.ceil(left - 0.5), math.ceil(right - 0.5))


def _inside(kind: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Point-in-shape test on coordinates normalised by the half-extent (shape spans [-1, 1]^2, y down)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if kind == "circle":
        return dx * dx + dy * dy <= 1.0
    if kind == "square":
        return (ax <= 1.0) & (ay <= 1.0)
    if kind == "triangle":  # apex up, base at the bottom
        return (dy <= 1.0) & (ax <= (dy + 1.0) / 2.0)
    if kind == "diamond":
        return ax + ay <= 1.0
    if kind == "cross":  # a plus sign with arms one third of the extent wide
        third = 1.0 / 3.0
        return ((ax <= third) & (ay <= 1.0)) | ((ay <= third) & (ax <= 1.0))
    raise DataError(f"unknown shape kind {kind!r}")


def _shape_coverage(kind: str, size: str, cell: int, height: int, width: int) -> np.ndarray:
    """float32 [H, W] in [0, 1]: fraction of each pixel covered by the shape (SUPERSAMPLE^2 samples per pixel)."""
    top, bottom, left, right = cell_bounds(cell, height, width)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    half = SIZES[size] * min(bottom - top, right - left)
    out = np.zeros((height, width), np.float32)
    r0, r1 = max(int(math.floor(cy - half)) - 1, 0), min(int(math.ceil(cy + half)) + 1, height)
    c0, c1 = max(int(math.floor(cx - half)) - 1, 0), min(int(math.ceil(cx + half)) + 1, width)
    offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    ys = (np.arange(r0, r1)[:, None] + offs[None, :]).reshape(-1)
    xs = (np.arange(c0, c1)[:, None] + offs[None, :]).reshape(-1)
    inside = _inside(kind, (xs[None, :] - cx) / half, (ys[:, None] - cy) / half).astype(np.float32)
    cov = inside.reshape(r1 - r0, SUPERSAMPLE, c1 - c0, SUPERSAMPLE).mean(axis=(1, 3))
    out[r0:r1, c0:c1] = cov
    return out


@functools.lru_cache(maxsize=8)
def coverage_maps(height: int, width: int) -> np.ndarray:
    """float32 [len(SHAPE_KINDS), len(SIZES), 9, H, W]: anti-aliased coverage of every (kind, size, cell).

    Shared by the renderer and the checker; cached per image size and read-only.
    """
    maps = np.stack(
        [
            np.stack(
                [np.stack([_shape_coverage(k, s, c, height, width) for c in range(len(POSITIONS))]) for s in SIZE_NAMES]
            )
            for k in SHAPE_KINDS
        ]
    )
    maps.setflags(write=False)
    return maps


def render_image(spec: ImageSpec, size: int = 48) -> np.ndarray:
    """Render ``spec`` on the plain background. Returns uint8 [size, size, 3] (RGB)."""
    maps = coverage_maps(size, size)
    bg = np.asarray(BACKGROUND, np.float32)
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    for s in spec.shapes:
        a = maps[SHAPE_KINDS.index(s.kind), SIZE_NAMES.index(s.size), POSITIONS.index(s.position)][..., None]
        img = img * (1.0 - a) + np.asarray(COLORS[s.color], np.float32) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def caption_image(spec: ImageSpec, template: int = 0) -> str:
    """Caption from ``IMAGE_CAPTIONS[template]``: ``"A picture with a small blue square at the center."``."""
    return _sentence(IMAGE_CAPTIONS[template].format(shapes=spec.phrase()))


def image_prompt(spec: ImageSpec, template: int = 0) -> str:
    """Instruction asking for the picture: ``"Draw a large red circle at the top left."``."""
    return _sentence(IMAGE_PROMPTS[template].format(shapes=spec.phrase()))


# ---------------------------------------------------------------------------------------------- audio
def harmonic_amplitudes(timbre: str, frequency: float, sample_rate: int) -> list[tuple[int, float]]:
    """(harmonic number, amplitude) pairs of a band-limited timbre, all below HARMONIC_LIMIT * sample_rate."""
    top = int(math.ceil(HARMONIC_LIMIT * sample_rate / frequency))
    if timbre == "sine":
        ns = range(1, 2)
    elif timbre == "square":
        ns = range(1, top + 1, 2)
    elif timbre == "sawtooth":
        ns = range(1, top + 1)
    else:
        raise DataError(f"timbre must be one of {list(TIMBRES)}, got {timbre!r}")
    return [(n, 1.0 / n) for n in ns if n * frequency < HARMONIC_LIMIT * sample_rate]


def _envelope(n: int, sample_rate: int) -> np.ndarray:
    env = np.ones(n, np.float64)
    a, r = int(round(ATTACK * sample_rate)), int(round(RELEASE * sample_rate))
    env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    env[n - r :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(r) + 1) / r)
    return env


def synthesize_note(pitch: str, timbre: str, seconds: float, sample_rate: int) -> np.ndarray:
    """One enveloped note, peak AMPLITUDE. Returns float64 [round(seconds * sample_rate)]."""
    n = int(round(seconds * sample_rate))
    f = pitch_frequency(pitch)
    t = np.arange(n) / sample_rate
    wave = np.zeros(n)
    for h, amp in harmonic_amplitudes(timbre, f, sample_rate):
        wave += amp * np.sin(2 * np.pi * h * f * t)
    # Normalise by the note's own peak so every timbre and pitch plays at the same level.
    peak = max(float(np.abs(wave).max()), 1e-9)
    return AMPLITUDE * wave / peak * _envelope(n, sample_rate)


def synthesize_audio(spec: AudioSpec, sample_rate: int = 16000) -> np.ndarray:
    """Render ``spec``: notes at :meth:`AudioSpec.onsets`, silence elsewhere. Returns float32 [T], |x| <= 0.5."""
    out = np.zeros(int(round(spec.clip_seconds() * sample_rate)), np.float64)
    for pitch, onset, d in zip(spec.notes, spec.onsets(), spec.durations):
        note = synthesize_note(pitch, spec.timbre, d, sample_rate)
        i = int(round(onset * sample_rate))
        out[i : i + len(note)] += note[: len(out) - i]
    return out.astype(np.float32)


def _audio_fields(spec: AudioSpec) -> dict[str, str]:
    return {"notes": spec.phrase(), "timbre": spec.timbre, "noun": "note" if len(spec.notes) == 1 else "notes"}


def caption_audio(spec: AudioSpec, template: int = 0) -> str:
    """Caption from ``AUDIO_CAPTIONS[template]``: ``"C5 E5 G5 on a square wave."``."""
    return _sentence(AUDIO_CAPTIONS[template].format(**_audio_fields(spec)))


def audio_prompt(spec: AudioSpec, template: int = 0) -> str:
    """Instruction asking for the clip: ``"Play C5 E5 G5 on a square wave."``."""
    return _sentence(AUDIO_PROMPTS[template].format(**_audio_fields(spec)))


def interleaved_text(spec: ImageSpec | AudioSpec, first: bool) -> str:
    """The sentence that introduces a media item inside an interleaved document."""
    table = INTERLEAVED_FIRST if first else INTERLEAVED_NEXT
    if isinstance(spec, ImageSpec):
        return table["image"].format(shapes=spec.phrase())
    return table["audio"].format(**_audio_fields(spec))


def instruction_text(specs: list[ImageSpec | AudioSpec], rng: np.random.Generator) -> str:
    """A request for ``specs`` in order: ``"a large red circle in the top left, then play C5 E5 G5 on a square wave"``
    (item wording, preposition, capital and final period drawn from ``rng``)."""
    items = []
    for spec in specs:
        templates = INSTRUCTION_ITEMS["image" if isinstance(spec, ImageSpec) else "audio"]
        template = templates[int(rng.integers(len(templates)))]
        if isinstance(spec, ImageSpec):
            items.append(template.format(shapes=spec.phrase("in" if rng.random() < 0.5 else "at")))
        else:
            items.append(template.format(**_audio_fields(spec)))
    text = ", then ".join(items)
    if rng.random() < 0.5:
        text = _sentence(text)
    return text + "." if rng.random() < 0.5 else text


# ---------------------------------------------------------------------------------------------- documents
def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """float [T] in [-1, 1] -> int16 [T] (round to nearest, clipped)."""
    return np.clip(np.rint(np.asarray(wave, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


@dataclasses.dataclass
class GeneratedDocument:
    """A document before it is written: manifest record (relative paths) plus the media it references."""

    record: dict[str, Any]
    images: dict[str, np.ndarray]  # relative path -> uint8 [H, W, 3]
    audio: dict[str, np.ndarray]  # relative path -> int16 [T]


def make_document(index: int, seed: int, config: CorpusConfig) -> GeneratedDocument:
    """Document ``index`` of the corpus with ``seed``; depends only on (seed, index, config)."""
    rng = np.random.default_rng([seed, index])
    tasks = [t for t in ALL_TASKS if config.task_weights.get(t, 0) > 0]
    weights = np.array([config.task_weights[t] for t in tasks], np.float64)
    task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
    stem = f"{index:06d}"
    images: dict[str, np.ndarray] = {}
    audio: dict[str, np.ndarray] = {}
    media_meta: list[dict[str, Any]] = []
    segments: list[dict[str, str]] = []

    def segment(kind: str, path: str, as_input: bool) -> dict[str, str]:
        if as_input and config.bidirectional_inputs:
            return {kind: path, "attend": "bidirectional"}
        return {kind: path}

    def add_image(spec: ImageSpec, as_input: bool = False) -> None:
        path = f"images/{stem}_{len(media_meta)}.png"
        images[path] = render_image(spec, config.image_size)
        media_meta.append(spec.to_meta(config.image_size, config.image_size))
        segments.append(segment("image", path, as_input))

    def add_audio(spec: AudioSpec, as_input: bool = False) -> None:
        path = f"audio/{stem}_{len(media_meta)}.wav"
        audio[path] = to_pcm16(synthesize_audio(spec, config.sample_rate))
        media_meta.append(spec.to_meta(config.sample_rate))
        segments.append(segment("audio", path, as_input))

    sample_image_spec, sample_audio_spec = _samplers(config.exclude_reserved)
    extra: dict[str, Any] = {}
    if task in CONVERSATION_TASKS:
        extra = _conversation(task, rng, config, segments, add_image, add_audio)
    elif task == "caption_to_image":
        spec = sample_image_spec(rng)
        segments.append({"text": image_prompt(spec, int(rng.integers(len(IMAGE_PROMPTS))))})
        add_image(spec)
    elif task == "image_to_caption":
        spec = sample_image_spec(rng)
        add_image(spec, as_input=True)
        segments.append({"text": caption_image(spec, int(rng.integers(len(IMAGE_CAPTIONS))))})
    elif task == "caption_to_audio":
        aspec = sample_audio_spec(rng)
        segments.append({"text": audio_prompt(aspec, int(rng.integers(len(AUDIO_PROMPTS))))})
        add_audio(aspec)
    elif task == "audio_to_caption":
        aspec = sample_audio_spec(rng)
        add_audio(aspec, as_input=True)
        segments.append({"text": caption_audio(aspec, int(rng.integers(len(AUDIO_CAPTIONS))))})
    elif task == "instruction":
        lo, hi = config.instruction_media
        specs = [
            sample_image_spec(rng) if rng.random() < 0.5 else sample_audio_spec(rng)
            for _ in range(int(rng.integers(lo, hi + 1)))
        ]
        segments.append({"text": instruction_text(specs, rng)})
        for s in specs:
            (add_image if isinstance(s, ImageSpec) else add_audio)(s)
    else:
        lo, hi = config.interleaved_media
        for j in range(int(rng.integers(lo, hi + 1))):
            if rng.random() < 0.5:
                ispec = sample_image_spec(rng)
                segments.append({"text": interleaved_text(ispec, first=j == 0)})
                add_image(ispec)
            else:
                aspec = sample_audio_spec(rng)
                segments.append({"text": interleaved_text(aspec, first=j == 0)})
                add_audio(aspec)
    record = {"id": f"proc-{seed}-{stem}", "segments": segments, "meta": {"task": task, "media": media_meta, **extra}}
    return GeneratedDocument(record=record, images=images, audio=audio)


def _samplers(exclude_reserved: bool):
    """The (image, audio) spec samplers of the template tasks: the plain ones, or the grammar's train split, which
    redraws a spec holding a reserved combination (the first draw, when allowed, is the plain one)."""
    if not exclude_reserved:
        return sample_image_spec, sample_audio_spec
    return functools.partial(grammar.sample_image, combos="train"), functools.partial(
        grammar.sample_audio, combos="train"
    )


def _conversation(
    task: str, rng: np.random.Generator, config: CorpusConfig, segments: list[dict[str, str]], add_image, add_audio
) -> dict[str, Any]:
    """Append the turns of a conversation document to ``segments`` (media through add_image/add_audio); returns
    its extra meta: the grammar entries used and what each user turn asked for."""
    used: list[str] = []
    requests: list[dict[str, Any]] = []

    def say(rendered: grammar.Rendered) -> None:
        used.extend(rendered.entries)
        if rendered.text:
            segments.append({"text": rendered.text})

    def turn(role: str) -> None:
        segments.append({"turn": role})

    def media(spec: ImageSpec | AudioSpec, as_input: bool = False) -> None:
        (add_image if isinstance(spec, ImageSpec) else add_audio)(spec, as_input)

    def sample(kind: str) -> ImageSpec | AudioSpec:
        return grammar.sample_image(rng) if kind == "image" else grammar.sample_audio(rng)

    def answer_media(specs: list[ImageSpec | AudioSpec]) -> None:
        turn("assistant")
        say(grammar.render_media_lead(rng))
        for spec in specs:
            media(spec)
        turn("end")

    def request(kind: str, specs: list[ImageSpec | AudioSpec], text: str = "") -> None:
        requests.append({"kind": kind, "text": text, "media": [_spec_meta(s, config) for s in specs]})

    if task == "chat_media":
        lo, hi = config.instruction_media
        n = 1 if rng.random() < 0.6 else int(rng.integers(max(lo, 2), max(hi, 2) + 1))
        specs = [sample("image" if rng.random() < 0.5 else "audio") for _ in range(n)]
        if n == 1 and rng.random() < config.unconditional_rate:
            turn("user")
            turn("end")
            turn("assistant")
            media(specs[0])
            turn("end")
            request("unconditional", specs)
        else:
            turn("user")
            r = grammar.render_request(specs, rng, "train")
            say(r)
            turn("end")
            answer_media(specs)
            request("media", specs, r.text)
    elif task == "chat_caption":
        spec = sample("image" if rng.random() < 0.5 else "audio")
        q = grammar.render_media_question("image" if isinstance(spec, ImageSpec) else "audio", rng, "train")
        turn("user")
        if rng.random() < 0.5:
            media(spec, as_input=True)
            say(q)
        else:
            say(q)
            media(spec, as_input=True)
        turn("end")
        turn("assistant")
        say(grammar.render_caption(spec, rng, "train"))
        turn("end")
        request("caption", [spec], q.text)
    elif task == "chat_followup":
        spec = sample("image" if rng.random() < 0.5 else "audio")
        turn("user")
        r = grammar.render_request(spec, rng, "train")
        say(r)
        turn("end")
        answer_media([spec])
        request("media", [spec], r.text)
        for _ in range(1 + int(rng.random() < 0.3)):
            edit = grammar.sample_edit(spec, rng)
            turn("user")
            e = grammar.render_edit(edit, rng, "train", spec)
            say(e)
            turn("end")
            if edit.op == "describe":
                turn("assistant")
                say(grammar.render_caption(spec, rng, "train"))
                turn("end")
            else:
                spec = grammar.apply_edit(spec, edit)
                answer_media([spec])
            request("edit", [spec], e.text)
            requests[-1]["edit"] = dataclasses.asdict(edit)
    else:
        r, verdict = grammar.render_out_of_scope(rng, "train")
        turn("user")
        say(r)
        turn("end")
        turn("assistant")
        say(grammar.answer_out_of_scope(verdict, rng))
        turn("end")
        request("out_of_scope", [], r.text)
        requests[-1]["out_of_scope"] = dataclasses.asdict(verdict)
    return {"phrasing": used, "requests": requests}


def _spec_meta(spec: ImageSpec | AudioSpec, config: CorpusConfig) -> dict[str, Any]:
    if isinstance(spec, ImageSpec):
        return spec.to_meta(config.image_size, config.image_size)
    return spec.to_meta(config.sample_rate)


def write_wav(path: str, pcm: np.ndarray, sample_rate: int) -> None:
    """Write int16 [T] as a canonical 44-byte-header PCM WAV (what soundfile writes too, but without its sync)."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(pcm, "<i2").tobytes())


def _write_media(out: str, doc: GeneratedDocument, sample_rate: int) -> None:
    for rel, arr in doc.images.items():
        Image.fromarray(arr, mode="RGB").save(os.path.join(out, rel), format="PNG")
    for rel, pcm in doc.audio.items():
        write_wav(os.path.join(out, rel), pcm, sample_rate)


def _produce(job: tuple[str, int, int, dict[str, Any]]) -> str:
    """Worker: build and write one document, return its manifest line."""
    out, index, seed, cfg = job
    config = CorpusConfig.from_dict(cfg)
    doc = make_document(index, seed, config)
    _write_media(out, doc, config.sample_rate)
    return json.dumps(doc.record, ensure_ascii=False)


def _write_lines(f, lines: Iterable[str], bar) -> None:
    for line in lines:
        f.write(line + "\n")
        bar.update(1)


def write_corpus(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    config: CorpusConfig | None = None,
    progress: bool = True,
    workers: int = 1,
) -> str:
    """Write ``n`` documents into folder ``out``; returns the path of ``out/manifest.jsonl``.

    The output is byte-identical for equal (n, seed, config), whatever ``workers`` is (documents are built
    from per-document generators and written in index order). The manifest appears atomically at the end.
    """

    config = config or CorpusConfig()
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    out = os.fspath(out)
    check_output_dir(out, CORPUS)
    for sub in ("images", "audio"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    cfg = config.to_dict()
    # corpus.json first: it marks the folder as this command's, so an interrupted run may be rerun into it
    write_json_atomic(os.path.join(out, "corpus.json"), {"n": n, "seed": seed, "config": cfg})
    jobs: Iterable[tuple[str, int, int, dict[str, Any]]] = ((out, i, seed, cfg) for i in range(n))
    manifest = os.path.join(out, "manifest.jsonl")
    bar = tqdm(total=n, disable=not progress, desc="procedural corpus", unit="doc")
    try:
        with atomic_path(manifest) as tmp, open(tmp, "w", encoding="utf-8") as f:
            if workers == 1:
                _write_lines(f, map(_produce, jobs), bar)
            else:
                # spawn: no inherited state (threads, torch) in the workers; imap keeps index order.
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    _write_lines(f, pool.imap(_produce, jobs, chunksize=64), bar)
    finally:
        bar.close()
    return manifest
