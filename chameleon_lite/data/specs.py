"""What a procedural picture or clip holds: the corpus vocabulary (shapes, colours, sizes, grid cells, pitches,
timbres and the timing of notes) and the specs built from it (:class:`Shape`, :class:`ImageSpec`,
:class:`AudioSpec`, with their manifest ``meta`` records), plus the uniform samplers.

The bottom of the data layer: :mod:`~chameleon_lite.data.procedural` (rendering, templates, corpus) and
:mod:`~chameleon_lite.data.grammar` (requests and answers) both build on it, and it imports neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from chameleon_lite.errors import DataError

# ---------------------------------------------------------------------------------------------- vocabulary
SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Saturated colors at least ~90 apart in RGB (and never collinear with the background), so a blurred or
# VQ-reconstructed pixel still sits nearest its own color.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (245, 130, 20),
    "yellow": (240, 225, 40),
    "green": (40, 185, 60),
    "cyan": (40, 210, 225),
    "blue": (50, 80, 235),
    "purple": (160, 70, 220),
    "white": (235, 235, 235),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
# Half-extent of a shape as a fraction of its cell's side: a large shape leaves 8% of the cell on each side.
SIZES: dict[str, float] = {"small": 0.24, "large": 0.42}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
# Row-major 3x3 grid: index = 3 * row + column.
POSITIONS: tuple[str, ...] = (
    "top left",
    "top middle",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)
MAX_SHAPES = 2
SUPERSAMPLE = 4

_NOTE_LETTERS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
PITCHES: tuple[str, ...] = tuple(f"{n}{o}" for o in (4, 5) for n in _NOTE_LETTERS) + ("C6",)
MIDI_C4 = 60
TIMBRES: tuple[str, ...] = ("sine", "square", "sawtooth")
TIME_GRID = 0.02  # seconds: note lengths, gaps and the lead are whole multiples of it (one 20 ms codec frame)
NOTE_DURATIONS = (0.20, 0.40)  # seconds, drawn on the TIME_GRID
NOTE_GAP = 0.08  # silence between notes, so a checker can segment them by energy
LEAD = 0.04  # silence before the first and after the last note
MIN_CLIP = 0.5
MAX_NOTES = 4
AMPLITUDE = 0.5
ATTACK = 0.010
RELEASE = 0.040
HARMONIC_LIMIT = 0.45  # keep partials below 0.45 * sample_rate: no aliasing, resampling stays clean


def pitch_to_midi(name: str) -> int:
    """MIDI number of a pitch name in :data:`PITCHES` (``"C4"`` -> 60)."""
    return MIDI_C4 + PITCHES.index(name)


def midi_to_pitch(midi: int) -> str:
    """Pitch name of a MIDI number, clamped into the range of :data:`PITCHES`."""
    return PITCHES[min(max(int(midi) - MIDI_C4, 0), len(PITCHES) - 1)]


def pitch_frequency(name: str) -> float:
    """Equal-tempered frequency in Hz (A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((pitch_to_midi(name) - 69) / 12.0)


# ---------------------------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape of a picture: kind, color, size and grid position, all by name."""

    kind: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for field, allowed in (
            ("kind", SHAPE_KINDS),
            ("color", COLOR_NAMES),
            ("size", SIZE_NAMES),
            ("position", POSITIONS),
        ):
            if getattr(self, field) not in allowed:
                raise DataError(f"shape {field} must be one of {list(allowed)}, got {getattr(self, field)!r}")

    def phrase(self, preposition: str = "at") -> str:
        """``"a large red circle at the top left"`` (``preposition="in"``: ``"... in the top left"``)."""
        return f"a {self.size} {self.color} {self.kind} {preposition} the {self.position}"

    def to_meta(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What a procedural picture shows: 0..9 shapes in distinct cells, in caption order."""

    shapes: tuple[Shape, ...]

    def __post_init__(self) -> None:
        positions = [s.position for s in self.shapes]
        if len(set(positions)) != len(positions):
            raise DataError(f"two shapes share a cell: {positions}")

    def phrase(self, preposition: str = "at") -> str:
        return " and ".join(s.phrase(preposition) for s in self.shapes)

    def to_meta(self, height: int, width: int) -> dict[str, Any]:
        return {"type": "image", "height": height, "width": width, "shapes": [s.to_meta() for s in self.shapes]}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ImageSpec:
        """Inverse of :meth:`to_meta` (extra keys are ignored)."""
        try:
            return cls(tuple(Shape(**{k: s[k] for k in ("kind", "color", "size", "position")}) for s in meta["shapes"]))
        except (KeyError, TypeError) as e:
            raise DataError(f"not an image meta record ({e}): {meta!r}") from None


@dataclasses.dataclass(frozen=True)
class AudioSpec:
    """What a procedural clip plays: notes in order, their durations in seconds and one timbre."""

    notes: tuple[str, ...]
    timbre: str
    durations: tuple[float, ...]

    def __post_init__(self) -> None:
        bad = [n for n in self.notes if n not in PITCHES]
        if bad:
            raise DataError(f"unknown pitch(es) {bad}; expected names like C4, C#4 ... C6")
        if self.timbre not in TIMBRES:
            raise DataError(f"timbre must be one of {list(TIMBRES)}, got {self.timbre!r}")
        if len(self.durations) != len(self.notes) or any(d <= ATTACK + RELEASE for d in self.durations):
            raise DataError(f"need one duration > {ATTACK + RELEASE} s per note, got {self.durations}")

    def phrase(self) -> str:
        """``"C5 E5 G5"``."""
        return " ".join(self.notes)

    def clip_seconds(self) -> float:
        """Length of the synthesised clip in seconds."""
        body = 2 * LEAD + sum(self.durations) + NOTE_GAP * max(len(self.notes) - 1, 0)
        return max(body, MIN_CLIP)

    def onsets(self) -> tuple[float, ...]:
        """Start time of each note in seconds."""
        out, t = [], LEAD
        for d in self.durations:
            out.append(t)
            t += d + NOTE_GAP
        return tuple(out)

    def to_meta(self, sample_rate: int) -> dict[str, Any]:
        return {
            "type": "audio",
            "sample_rate": sample_rate,
            "notes": list(self.notes),
            "timbre": self.timbre,
            "durations": list(self.durations),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> AudioSpec:
        """Inverse of :meth:`to_meta` (extra keys are ignored)."""
        try:
            return cls(tuple(meta["notes"]), meta["timbre"], tuple(float(d) for d in meta["durations"]))
        except (KeyError, TypeError) as e:
            raise DataError(f"not an audio meta record ({e}): {meta!r}") from None


# ---------------------------------------------------------------------------------------------- sampling
def sample_image_spec(rng: np.random.Generator, max_shapes: int = MAX_SHAPES) -> ImageSpec:
    """Draw 1..max_shapes shapes with uniform attributes in distinct cells."""
    k = int(rng.integers(1, max_shapes + 1))
    cells = rng.choice(len(POSITIONS), size=k, replace=False)
    shapes = tuple(
        Shape(
            kind=SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))],
            color=COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
            size=SIZE_NAMES[rng.integers(len(SIZE_NAMES))],
            position=POSITIONS[int(c)],
        )
        for c in cells
    )
    return ImageSpec(shapes)


def sample_audio_spec(rng: np.random.Generator, max_notes: int = MAX_NOTES) -> AudioSpec:
    """Draw 1..max_notes notes (repeats allowed), durations on the :data:`TIME_GRID` and a timbre, uniformly."""
    k = int(rng.integers(1, max_notes + 1))
    notes = tuple(PITCHES[int(i)] for i in rng.integers(len(PITCHES), size=k))
    lo, hi = (round(d / TIME_GRID) for d in NOTE_DURATIONS)
    durations = tuple(round(int(c) * TIME_GRID, 2) for c in rng.integers(lo, hi + 1, size=k))
    return AudioSpec(notes=notes, timbre=TIMBRES[int(rng.integers(len(TIMBRES)))], durations=durations)
