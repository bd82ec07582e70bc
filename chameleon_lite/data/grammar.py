"""A grammar of requests and answers about procedural pictures and clips, with a part reserved for evaluation.

Every text is drawn from a :class:`numpy.random.Generator`, so (seed, index) gives the same text. A grammar
:class:`Rule` holds *train* entries and *reserved* entries; ``split="train"`` never draws a reserved entry,
``split="eval"`` draws the top-level frame of every text (request, multi-item connector, caption, question,
out-of-scope question, edit) from the reserved entries only, and the sub-rules from all entries. So no eval text
can equal a training text, by construction. Attribute *combinations* are reserved too
(:data:`RESERVED_COLOR_KIND`, :data:`RESERVED_TIMBRE_REGISTER`): :func:`sample_image` / :func:`sample_audio`
with ``combos="train"`` never draw them, ``combos="reserved"`` draws only them.

What it renders
    Requests (:func:`render_request`): one picture, one clip, or several items in order ("draw ..., then play
    ..."); synonyms for every attribute (sizes, colours, shapes, positions incl. "upper left" / "top-left corner",
    timbres; notes as letters, spelled accidentals, flats, solfege, "middle C", octave words), questions,
    imperatives, polite and terse forms, position-first clauses, casing, punctuation and spacing noise and, at
    :data:`TYPO_RATE`, one typo. Answers: captions (:func:`render_caption`), a short lead before generated media
    (:func:`render_media_lead`), questions about an input picture or clip (:func:`render_media_question`).
    Out of scope (:func:`render_out_of_scope`, :func:`answer_out_of_scope`): general questions, unknown colours,
    shapes, instruments and notes out of range, answered by a short text saying what the model can do.
    Follow-ups (:func:`sample_edit`, :func:`render_edit`, :func:`apply_edit`): recolour, move, shift, resize,
    reshape, transpose, change timbre, repeat, describe.

Each render returns a :class:`Rendered`: the text and the ids (``"rule:index"``) of the entries it used, which
a corpus records so :func:`reserved_overlap` can prove a training corpus free of reserved entries; every
reserved entry also has a signature (a regex on :func:`normalize` d text) to check texts whose ids were lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from chameleon_lite.data.specs import (
    COLOR_NAMES,
    MIDI_C4,
    PITCHES,
    POSITIONS,
    SHAPE_KINDS,
    SIZE_NAMES,
    TIMBRES,
    AudioSpec,
    ImageSpec,
    Shape,
    sample_audio_spec,
    sample_image_spec,
)
from chameleon_lite.errors import DataError

SPLITS = ("train", "eval")
TYPO_RATE = 0.1  # fraction of requests that carry one typo (in a word of 5+ letters)
DEFAULT_DURATION = 0.3  # seconds per note of a spec built from text (a text names no durations)

# ---------------------------------------------------------------------------------------------- reserved combos
RESERVED_COLOR_KIND: tuple[tuple[str, str], ...] = (
    ("red", "diamond"),
    ("blue", "cross"),
    ("green", "triangle"),
    ("yellow", "circle"),
    ("purple", "square"),
)
# (timbre, register): register "low" = every note below C5, "high" = every note C5 or above, else "mixed".
RESERVED_TIMBRE_REGISTER: tuple[tuple[str, str], ...] = (("sine", "high"),)


def register(notes: Sequence[str]) -> str:
    """``"low"`` (all notes below C5), ``"high"`` (all C5 or above) or ``"mixed"``."""
    midis = [PITCHES.index(n) + MIDI_C4 for n in notes]
    if all(m < MIDI_C4 + 12 for m in midis):
        return "low"
    return "high" if all(m >= MIDI_C4 + 12 for m in midis) else "mixed"


def reserved_combinations(spec: ImageSpec | AudioSpec) -> list[tuple[str, str]]:
    """The reserved attribute combinations a spec holds (empty: the spec may appear in training)."""
    if isinstance(spec, ImageSpec):
        return [(s.color, s.kind) for s in spec.shapes if (s.color, s.kind) in RESERVED_COLOR_KIND]
    pair = (spec.timbre, register(spec.notes))
    return [pair] if pair in RESERVED_TIMBRE_REGISTER else []


def sample_image(rng: np.random.Generator, combos: str = "train", max_shapes: int = 2) -> ImageSpec:
    """An ImageSpec with ``combos="train"``: no reserved colour x shape pair; ``"reserved"``: only reserved pairs;
    ``"any"``: the plain procedural distribution."""
    _check_combos(combos)
    if combos == "reserved":
        k = int(rng.integers(1, max_shapes + 1))
        cells = rng.choice(len(POSITIONS), size=k, replace=False)
        pairs = [RESERVED_COLOR_KIND[int(i)] for i in rng.integers(len(RESERVED_COLOR_KIND), size=k)]
        sizes = [SIZE_NAMES[int(i)] for i in rng.integers(len(SIZE_NAMES), size=k)]
        return ImageSpec(tuple(Shape(kd, c, s, POSITIONS[int(p)]) for (c, kd), s, p in zip(pairs, sizes, cells)))
    while True:
        spec = sample_image_spec(rng, max_shapes)
        if combos == "any" or not reserved_combinations(spec):
            return spec


def sample_audio(rng: np.random.Generator, combos: str = "train", max_notes: int = 4) -> AudioSpec:
    """An AudioSpec with ``combos="train"``: no reserved timbre x register pair; ``"reserved"``: only those."""
    _check_combos(combos)
    while True:
        spec = sample_audio_spec(rng, max_notes)
        if combos == "any" or (combos == "train") == (not reserved_combinations(spec)):
            return spec


def _check_combos(combos: str) -> None:
    if combos not in ("train", "reserved", "any"):
        raise DataError(f"combos must be 'train', 'reserved' or 'any', got {combos!r}")


# ---------------------------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class Rule:
    """One choice point: train entries, then reserved entries (with one signature regex each, matched on
    :func:`normalize` d text, that no train rendering produces)."""

    name: str
    train: tuple[str, ...]
    reserved: tuple[str, ...] = ()
    signatures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.signatures) != len(self.reserved):
            raise DataError(f"rule {self.name}: one signature per reserved entry")

    @property
    def entries(self) -> tuple[str, ...]:
        return self.train + self.reserved


def _rule(name: str, train: Iterable[str], reserved: dict[str, str] | None = None) -> Rule:
    reserved = reserved or {}
    return Rule(name, tuple(train), tuple(reserved), tuple(reserved.values()))


_OCTAVE_WORDS = {4: "fourth", 5: "fifth", 6: "sixth"}
_SOLFEGE = {"C": "do", "D": "re", "E": "mi", "F": "fa", "G": "sol", "A": "la", "B": "ti"}
_FLAT_OF = {"C#": "Db", "D#": "Eb", "F#": "Gb", "G#": "Ab", "A#": "Bb"}

LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "size": {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")},
    "color": {
        "red": ("red", "scarlet"),
        "orange": ("orange",),
        "yellow": ("yellow",),
        "green": ("green",),
        "cyan": ("cyan", "turquoise", "aqua"),
        "blue": ("blue",),
        "purple": ("purple", "violet"),
        "white": ("white",),
    },
    "kind": {
        "circle": ("circle", "disc", "disk"),
        "square": ("square", "box"),
        "triangle": ("triangle",),
        "diamond": ("diamond", "rhombus"),
        "cross": ("cross", "plus sign"),
    },
    "position": {
        "top left": ("top left", "upper left", "top-left", "top left corner", "upper left corner"),
        "top middle": ("top middle", "top center", "top centre", "top", "upper middle"),
        "top right": ("top right", "upper right", "top-right", "top right corner", "upper right corner"),
        "middle left": ("middle left", "center left", "left", "left side", "left middle"),
        "center": ("center", "centre", "middle", "very center", "middle of the image"),
        "middle right": ("middle right", "center right", "right", "right side", "right middle"),
        "bottom left": ("bottom left", "lower left", "bottom-left", "bottom left corner", "lower left corner"),
        "bottom middle": ("bottom middle", "bottom center", "bottom centre", "bottom", "lower middle"),
        "bottom right": ("bottom right", "lower right", "bottom-right", "bottom right corner", "lower right corner"),
    },
    "timbre": {"sine": ("sine", "sinusoidal"), "square": ("square",), "sawtooth": ("sawtooth", "saw")},
}

OUT_OF_SCOPE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # reason: (train words, reserved words)
    "color": (("pink", "brown", "black", "grey", "gray", "magenta", "gold", "silver", "beige"), ("maroon", "olive")),
    "shape": (
        ("star", "heart", "hexagon", "pentagon", "oval", "arrow", "cat", "dog", "house", "tree", "car", "flower"),
        ("octagon", "boat"),
    ),
    "timbre": (("piano", "guitar", "violin", "flute", "trumpet", "drum"), ("cello", "harp")),
    "note": (("C2", "A1", "E7", "B3", "G8"), ("F3", "D7")),
}
GENERAL_QUESTIONS: tuple[tuple[str, ...], dict[str, str]] = (
    (
        "What is the capital of France?",
        "Who wrote Hamlet?",
        "How far away is the moon?",
        "What's the weather like today?",
        "Tell me a joke.",
        "What is 12 times 7?",
        "Can you translate hello into Spanish?",
        "Who won the world cup in 2018?",
        "How do I bake bread?",
        "What time is it?",
        "Write me a poem about the sea.",
        "What is the meaning of life?",
        "Who are you?",
        "How old is the universe?",
        "How do airplanes fly?",
        "What is the tallest mountain in the world?",
        "Can you help me with my homework?",
        "What should I cook for dinner?",
        "Explain quantum physics.",
        "Who discovered penicillin?",
        "How many days are in a year?",
        "What language is spoken in Brazil?",
        "Summarize the news for me.",
        "What is the speed of light?",
        "Do you like music?",
        "Set an alarm for seven.",
        "How are you today?",
        "Tell me about dinosaurs.",
        "Send an email to my boss.",
    ),
    {
        "How many legs does a spider have?": r"\bspider\b",
        "Who painted the Mona Lisa?": r"\bmona lisa\b",
        "What is the boiling point of water?": r"\bboiling point\b",
        "Recommend a good book to read.": r"\bgood book\b",
    },
)

RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        _rule("draw_verb", ("draw", "paint", "sketch", "make", "create", "render", "show me", "generate")),
        _rule(
            "image_frame",
            (
                "{draw} {shapes}",
                "{draw} a picture of {shapes}",
                "{draw} an image with {shapes}",
                "please {draw} {shapes}",
                "can you {draw} {shapes}?",
                "could you {draw} a picture of {shapes}?",
                "I want a picture of {shapes}",
                "I'd like an image of {shapes}",
                "give me {shapes}",
                "picture of {shapes}",
                "{shapes}",
                "{shapes}, please",
                "an image showing {shapes}",
                "i need a drawing of {shapes}",
            ),
            {
                "would you mind drawing {shapes}?": r"\bwould you mind\b",
                "how about a picture that has {shapes}?": r"\bthat has\b",
                "my request is simple: {shapes}": r"\bmy request\b",
                "{shapes} is what I would love to see": r"\bwould love to\b",
            },
        ),
        _rule(
            "image_item",
            ("{draw} {shapes}", "{draw} a picture of {shapes}", "an image of {shapes}", "{shapes}"),
            {"a picture that has {shapes}": r"\bthat has\b"},
        ),
        _rule(
            "shape_form",
            (
                "{a} {size} {color} {kind} {where}",
                "{a} {color} {kind}, {size}, {where}",
                "{a} {size} {kind} in {color} {where}",
                "{where}, {a} {size} {color} {kind}",
                "{a} {color} {size} {kind} {where}",
                "{color} {kind}, {size}, {where}",
            ),
            {
                "{a} {size} {kind} coloured {color} {where}": r"\bcoloured\b",
                "{a} {color} {kind} of {size} size {where}": r"\bsize\b",
            },
        ),
        _rule(
            "shape_joiner",
            (" and ", ", and ", " as well as ", " plus ", " with "),
            {" together with ": r"\btogether\b"},
        ),
        _rule("preposition", ("at the", "in the", "on the")),
        _rule(
            "position_form",
            ("{prep} {pos}", "{pos}"),
            {"in the {pos} area": r"\barea\b", "positioned {prep} {pos}": r"\bpositioned\b"},
        ),
        _rule(
            "multi_frame",
            ("{items}", "first {items}", "please {items}", "I'd like a few things: {items}", "{items}, in that order"),
            {"here is the plan: {items}": r"\bthe plan\b"},
        ),
        _rule(
            "item_connector",
            (", then ", ". Then ", ", and then ", "; after that, ", ", next ", ". Also, "),
            {", followed by ": r"\bfollowed by\b", " and afterwards ": r"\bafterwards\b"},
        ),
        _rule(
            "note_style",
            ("letter", "lower", "spelled", "flat", "solfege", "octave_words"),
            {"octave_number": r"\b[a-g]( sharp| flat)? octave [0-9]\b"},
        ),
        _rule("note_joiner", (" ", ", ", " - ", "and"), {" / ": r" / "}),
        _rule(
            "notes_form",
            ("{notes}", "the notes {notes}", "a melody of {notes}", "the sequence {notes}"),
            {"the pitches {notes}": r"\bpitch(es)?\b", "a little tune made of {notes}": r"\btune made of\b"},
        ),
        _rule(
            "timbre_form",
            (
                "on a {w} wave",
                "with a {w} wave",
                "using a {w} wave",
                "as a {w} wave",
                "in {w}",
                "with a {w} sound",
                "{w} wave",
            ),
            {"with the timbre of a {w} wave": r"\btimbre of\b", "voiced as a {w} wave": r"\bvoiced\b"},
        ),
        _rule(
            "audio_frame",
            (
                "play {notes} {timbre}",
                "please play {notes} {timbre}",
                "can you play {notes} {timbre}?",
                "could you play {notes} {timbre}?",
                "{timbre}, play {notes}",
                "I want to hear {notes} {timbre}",
                "let me hear {notes} {timbre}",
                "{notes} {timbre}",
                "{notes} {timbre}, please",
                "make a clip of {notes} {timbre}",
                "i'd like a sound of {notes} {timbre}",
            ),
            {
                "would you mind playing {notes} {timbre}?": r"\bwould you mind\b",
                "how about a clip that has {notes} {timbre}?": r"\bthat has\b",
                "my request is simple: {notes} {timbre}": r"\bmy request\b",
                "{notes} {timbre} is what I would love to hear": r"\bwould love to\b",
            },
        ),
        _rule(
            "audio_item",
            ("play {notes} {timbre}", "{notes} {timbre}", "let me hear {notes} {timbre}"),
            {"a clip that has {notes} {timbre}": r"\bthat has\b"},
        ),
        _rule(
            "image_caption",
            (
                "{shapes}.",
                "An image of {shapes}.",
                "A picture with {shapes}.",
                "There is {shapes}.",
                "I see {shapes}.",
                "It shows {shapes}.",
                "This picture has {shapes}.",
            ),
            {
                "What you have here is {shapes}.": r"\bwhat you have here\b",
                "The picture contains {shapes}.": r"\bcontains\b",
            },
        ),
        _rule(
            "audio_caption",
            (
                "{notes} {timbre}.",
                "That was {notes} {timbre}.",
                "It plays {notes} {timbre}.",
                "I hear {notes} {timbre}.",
            ),
            {
                "What you hear is {notes} {timbre}.": r"\bwhat you hear is\b",
                "The clip contains {notes} {timbre}.": r"\bcontains\b",
            },
        ),
        _rule("media_lead", ("", "Here you go.", "Sure.", "Here it is.", "Okay!", "Sure, here it is.")),
        _rule(
            "image_question",
            (
                "What is in this picture?",
                "Describe this image.",
                "what do you see?",
                "caption this",
                "What's shown here?",
            ),
            {"Tell me what this picture contains.": r"\btell me what this\b"},
        ),
        _rule(
            "audio_question",
            ("What notes are these?", "Describe this clip.", "what do you hear?", "Which notes does this play?"),
            {"Tell me what this clip contains.": r"\btell me what this\b"},
        ),
        _rule("general_question", GENERAL_QUESTIONS[0], GENERAL_QUESTIONS[1]),
        _rule(
            "oos_image_frame",
            ("draw {shapes}", "can you draw {shapes}?", "I want a picture of {shapes}", "{shapes}, please"),
            {"would you mind drawing {shapes}?": r"\bwould you mind\b"},
        ),
        _rule(
            "oos_audio_frame",
            ("play {notes} {timbre}", "can you play {notes} {timbre}?", "let me hear {notes} {timbre}"),
            {"would you mind playing {notes} {timbre}?": r"\bwould you mind\b"},
        ),
        _rule("oos_timbre_form", ("on a {w}", "on the {w}", "with a {w}")),
        _rule(
            "oos_answer_general",
            (
                "I can't answer that. I can draw pictures of simple shapes in eight colours and play short melodies.",
                "Sorry, I only make pictures of shapes and clips of notes.",
                "That is outside what I can do: I draw shapes and play notes.",
            ),
        ),
        _rule(
            "oos_answer_color",
            (
                "I can't draw in {word}. I can use red, orange, yellow, green, cyan, blue, purple or white.",
                "Sorry, I don't have {word}. My colours are red, orange, yellow, green, cyan, blue, purple and white.",
            ),
        ),
        _rule(
            "oos_answer_shape",
            (
                "I can't draw {a} {word}. I can draw circles, squares, triangles, diamonds and crosses.",
                "Sorry, {a} {word} is not a shape I know. I draw circles, squares, triangles, diamonds and crosses.",
            ),
        ),
        _rule(
            "oos_answer_timbre",
            (
                "I can't play {a} {word}. I play notes on a sine, square or sawtooth wave.",
                "Sorry, no {word}. I only have sine, square and sawtooth waves.",
            ),
        ),
        _rule(
            "oos_answer_note",
            (
                "{word} is outside my range. I can play notes from C4 to C6.",
                "Sorry, I can't play {word}; my notes go from C4 to C6.",
            ),
        ),
        _rule(
            "edit_recolor",
            ("now make it {color}", "make it {color} instead", "change the colour to {color}", "same but {color}"),
            {"paint it {color} this time": r"\bthis time\b"},
        ),
        _rule(
            "edit_recolor_target",
            ("make the {kind} {color}", "change the {kind} to {color}", "now the {kind} in {color}"),
            {"paint the {kind} {color} this time": r"\bthis time\b"},
        ),
        _rule(
            "edit_move",
            ("move it to the {pos}", "now put it in the {pos}", "place it at the {pos} instead"),
            {"shift it over to the {pos}": r"\bover to\b"},
        ),
        _rule(
            "edit_shift",
            ("move it {dir}", "shift it one cell {dir}", "move everything {dir}", "nudge it {dir}"),
            {"scoot it {dir}": r"\bscoot\b"},
        ),
        _rule(
            "edit_resize",
            ("make it {size}", "now make it {size}", "make it {cmp}", "a bit {cmp} please"),
            {"i would prefer it {cmp}": r"\bprefer\b"},
        ),
        _rule(
            "edit_reshape",
            ("make it a {kind} instead", "turn it into a {kind}", "change it to a {kind}"),
            {"swap it for a {kind}": r"\bswap\b"},
        ),
        _rule(
            "edit_transpose",
            ("play it {amount} {dir}", "now {amount} {dir}", "transpose it {amount} {dir}"),
            {"shift the pitch {amount} {dir}": r"\bshift the pitch\b"},
        ),
        _rule(
            "edit_timbre",
            ("play it on a {w} wave instead", "now with a {w} wave", "same notes but {w}"),
            {"switch the sound to a {w} wave": r"\bswitch the sound\b"},
        ),
        _rule(
            "edit_repeat",
            ("play it again", "again please", "one more time", "repeat that"),
            {"let me hear that once more": r"\bonce more\b"},
        ),
        _rule(
            "edit_twice",
            ("play it twice", "play that two times", "repeat it twice"),
            {"do it twice over": r"\btwice over\b"},
        ),
        _rule(
            "edit_describe_image",
            ("what did you just draw?", "describe what you drew", "what is in that picture?"),
            {"tell me what you just made": r"\bjust made\b"},
        ),
        _rule(
            "edit_describe_audio",
            ("what did you just play?", "which notes were those?", "what was that?"),
            {"tell me what you just made": r"\bjust made\b"},
        ),
    )
}

# Rules whose entry is the frame of a text: in the eval split these draw only their reserved entries.
FRAME_RULES = frozenset(
    {
        "image_frame",
        "audio_frame",
        "item_connector",
        "image_caption",
        "audio_caption",
        "image_question",
        "audio_question",
        "general_question",
        "oos_image_frame",
        "oos_audio_frame",
    }
    | {n for n in RULES if n.startswith("edit_")}
)


def _check_rules() -> None:
    for name in FRAME_RULES:
        if not RULES[name].reserved:
            raise DataError(f"frame rule {name} needs reserved entries")


_check_rules()


def reserved_entry_ids() -> frozenset[str]:
    """Ids (``"rule:index"``) of every reserved entry."""
    return frozenset(f"{r.name}:{i}" for r in RULES.values() for i in range(len(r.train), len(r.entries)))


def grammar_size() -> dict[str, int]:
    """Counts: rules, entries, reserved entries, lexicon words, reserved combinations."""
    return {
        "rules": len(RULES),
        "entries": sum(len(r.entries) for r in RULES.values()),
        "reserved_entries": sum(len(r.reserved) for r in RULES.values()),
        "lexicon_words": sum(len(w) for table in LEXICON.values() for w in table.values()),
        "out_of_scope_words": sum(len(a) + len(b) for a, b in OUT_OF_SCOPE_WORDS.values()),
        "reserved_combinations": len(RESERVED_COLOR_KIND) + len(RESERVED_TIMBRE_REGISTER),
    }


# ---------------------------------------------------------------------------------------------- rendering
@dataclasses.dataclass(frozen=True)
class Rendered:
    """A text, the ids (``"rule:index"``) of the grammar entries it was built from, and whether it carries a typo."""

    text: str
    entries: tuple[str, ...]
    typo: bool = False


class _Draw:
    """The choices of one rendering: a generator, a split and the entries used so far."""

    def __init__(self, rng: np.random.Generator, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        self.rng, self.split, self.used = rng, split, []

    def pick(self, rule_name: str) -> str:
        rule = RULES[rule_name]
        lo, hi = 0, len(rule.entries)
        if self.split == "train":
            hi = len(rule.train)
        elif rule_name in FRAME_RULES:
            lo = len(rule.train)
        i = lo + int(self.rng.integers(hi - lo))
        self.used.append(f"{rule_name}:{i}")
        return rule.entries[i]

    def word(self, category: str, value: str) -> str:
        words = LEXICON[category][value]
        return words[int(self.rng.integers(len(words)))]

    def choice(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


def _article(next_word: str) -> str:
    return "an" if next_word[:1].lower() in "aeiou" else "a"


def _shape_text(d: _Draw, s: Shape, color_word: str | None = None, kind_word: str | None = None) -> str:
    where = d.pick("position_form").format(prep=d.pick("preposition"), pos=d.word("position", s.position))
    fields = {
        "size": d.word("size", s.size),
        "color": color_word or d.word("color", s.color),
        "kind": kind_word or d.word("kind", s.kind),
        "where": where,
    }
    text = d.pick("shape_form").format(a="a", **fields)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _shapes_text(d: _Draw, spec: ImageSpec, override: dict[int, dict[str, str]] | None = None) -> str:
    override = override or {}
    parts = [_shape_text(d, s, **override.get(i, {})) for i, s in enumerate(spec.shapes)]
    out = parts[0]
    for p in parts[1:]:
        out += d.pick("shape_joiner") + p
    return out


def note_text(note: str, style: str, rng: np.random.Generator | None = None) -> str:
    """One pitch of :data:`PITCHES` in a note style of the ``note_style`` rule (``"C#5"``, ``"c sharp 5"``, ...);
    with ``rng``, C4 reads "middle C" half the time in the letter styles."""
    letter, octave = note[:-1], int(note[-1])
    if style in ("letter", "lower", "spelled") and note == "C4" and rng is not None and rng.random() < 0.5:
        return "middle C"
    if style == "letter":
        return note
    if style == "lower":
        return note.lower()
    if style == "spelled":
        return f"{letter[0]} sharp {octave}" if "#" in letter else note
    if style == "flat":
        return f"{_FLAT_OF[letter]}{octave}" if "#" in letter else note
    if style == "solfege":
        return f"{_SOLFEGE[letter[0]]}{'#' if '#' in letter else ''}{octave}"
    if style == "octave_words":
        name = f"{letter[0]} sharp" if "#" in letter else letter
        return f"{name} in the {_OCTAVE_WORDS[octave]} octave"
    if style == "octave_number":
        name = f"{letter[0]} sharp" if "#" in letter else letter
        return f"{name} (octave {octave})"
    raise DataError(f"unknown note style {style!r}")


def _notes_text(d: _Draw, notes: Sequence[str]) -> str:
    style = d.pick("note_style")
    words = [note_text(n, style, d.rng) for n in notes]
    joiner = d.pick("note_joiner")
    if style == "octave_words" and joiner in (" ", " - "):
        joiner = ", "  # "C in the fifth octave E in the ..." would not read as two notes
    if joiner == "and":
        body = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    else:
        body = joiner.join(words)
    form = d.pick("notes_form")
    if len(notes) == 1:
        form = form.replace("the notes", "the note").replace("the pitches", "the pitch")
    return form.format(notes=body)


def _timbre_text(d: _Draw, timbre: str) -> str:
    if timbre == "sine" and d.chance(0.15):
        return d.choice(("as pure tones", "with pure tones"))
    return d.pick("timbre_form").format(w=d.word("timbre", timbre))


def _image_clause(d: _Draw, spec: ImageSpec, rule: str) -> str:
    return d.pick(rule).format(draw=d.pick("draw_verb"), shapes=_shapes_text(d, spec))


def _audio_clause(d: _Draw, spec: AudioSpec, rule: str) -> str:
    template = d.pick(rule)
    timbre = _timbre_text(d, spec.timbre)
    if template.startswith("{timbre}"):
        timbre = timbre[:1].upper() + timbre[1:]
    return template.format(notes=_notes_text(d, spec.notes), timbre=timbre)


# ---------------------------------------------------------------------------------------------- noise
def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))
    op = int(rng.integers(4))
    if op == 0:  # drop a letter
        return word[:i] + word[i + 1 :]
    if op == 1:  # swap two neighbours
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if op == 2:  # double a letter
        return word[:i] + word[i] + word[i:]
    return word[:i] + "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(26))] + word[i + 1 :]


def add_noise(text: str, rng: np.random.Generator, typo_rate: float = TYPO_RATE) -> tuple[str, bool]:
    """Casing, final punctuation, spacing and (at ``typo_rate``) one typo in a word of 5+ letters.

    Returns the text and whether it carries a typo.
    """
    case = int(rng.choice(5, p=[0.45, 0.25, 0.1, 0.1, 0.1]))
    question = text.rstrip().endswith("?")
    body = text.rstrip(" .?!")
    end = rng.choice(
        ["?", "", "??"] if question else [".", "", "!", "..."],
        p=[0.7, 0.2, 0.1] if question else [0.6, 0.25, 0.1, 0.05],
    )
    typo = False
    if rng.random() < typo_rate:
        words = body.split(" ")
        idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        if idx:
            j = idx[int(rng.integers(len(idx)))]
            words[j] = _typo(words[j], rng)
            body, typo = " ".join(words), True
    if rng.random() < 0.1:
        body = body.replace(", ", " , " if rng.random() < 0.5 else ",")
    if rng.random() < 0.1:
        body = body.replace(" ", "  ", 1 + int(rng.integers(2)))
    text = body + str(end)
    if case == 0:
        text = text[:1].upper() + text[1:]
    elif case == 1:
        text = text.lower()
    elif case == 2:
        text = text.upper()
    elif case == 3:
        text = " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    return text, typo


# ---------------------------------------------------------------------------------------------- public renders
Item = ImageSpec | AudioSpec


def render_request(
    specs: Item | Sequence[Item],
    rng: np.random.Generator,
    split: str = "train",
    noise: bool = True,
    typo_rate: float = TYPO_RATE,
) -> Rendered:
    """A request for one item or several items in order. ``split="eval"`` uses only reserved frames (and, for
    several items, reserved connectors); ``"train"`` never a reserved entry."""
    items = [specs] if isinstance(specs, (ImageSpec, AudioSpec)) else list(specs)
    if not items:
        raise DataError("render_request needs at least one spec")
    d = _Draw(rng, split)
    if len(items) == 1:
        spec = items[0]
        text = (
            _image_clause(d, spec, "image_frame")
            if isinstance(spec, ImageSpec)
            else _audio_clause(d, spec, "audio_frame")
        )
    else:
        clauses = [
            _image_clause(d, s, "image_item") if isinstance(s, ImageSpec) else _audio_clause(d, s, "audio_item")
            for s in items
        ]
        text = clauses[0]
        for c in clauses[1:]:
            conn = d.pick("item_connector")
            text += conn + (c[:1].upper() + c[1:] if conn.startswith(".") else c)
        text = d.pick("multi_frame").format(items=text)
    text, typo = text[:1].upper() + text[1:], False
    if noise:
        text, typo = add_noise(text, rng, typo_rate)
    return Rendered(text, tuple(d.used), typo)


def render_caption(spec: Item, rng: np.random.Generator, split: str = "train") -> Rendered:
    """A caption/answer describing a picture or clip (no noise: answers are the model's own clean text)."""
    d = _Draw(rng, split)
    if isinstance(spec, ImageSpec):
        text = d.pick("image_caption").format(shapes=_shapes_text(d, spec))
    else:
        template = d.pick("audio_caption")
        text = template.format(notes=_notes_text(d, spec.notes), timbre=_timbre_text(d, spec.timbre))
    return Rendered(text[:1].upper() + text[1:], tuple(d.used))


def render_media_lead(rng: np.random.Generator) -> Rendered:
    """A short text the assistant may say before the media it generates (possibly empty)."""
    d = _Draw(rng, "train")
    return Rendered(d.pick("media_lead"), tuple(d.used))


def render_media_question(kind: str, rng: np.random.Generator, split: str = "train", noise: bool = True) -> Rendered:
    """A question about an input picture (``kind="image"``) or clip (``"audio"``)."""
    d = _Draw(rng, split)
    text = d.pick(f"{kind}_question")
    if noise:
        text, _ = add_noise(text, rng)
    return Rendered(text, tuple(d.used))


# ---------------------------------------------------------------------------------------------- out of scope
@dataclasses.dataclass(frozen=True)
class OutOfScope:
    """Why a request cannot be served: ``reason`` in general/color/shape/timbre/note, ``word`` the culprit."""

    reason: str
    word: str = ""


OUT_OF_SCOPE_REASONS = ("general", "color", "shape", "timbre", "note")


def render_out_of_scope(
    rng: np.random.Generator, split: str = "train", noise: bool = True
) -> tuple[Rendered, OutOfScope]:
    """A request the model cannot serve, and its verdict. Eval draws reserved questions and reserved words."""
    d = _Draw(rng, split)
    reason = OUT_OF_SCOPE_REASONS[int(rng.integers(len(OUT_OF_SCOPE_REASONS)))]
    if reason == "general":
        text, verdict = d.pick("general_question"), OutOfScope("general")
    else:
        train_words, reserved_words = OUT_OF_SCOPE_WORDS[reason]
        word = d.choice(reserved_words if split == "eval" else train_words)
        verdict = OutOfScope(reason, word)
        if reason in ("color", "shape"):
            spec = sample_image(rng, "train", max_shapes=1)
            over = {"color_word": word} if reason == "color" else {"kind_word": word}
            text = d.pick("oos_image_frame").format(shapes=_shapes_text(d, spec, {0: over}))
        else:
            spec = sample_audio(rng, "train")
            if reason == "timbre":
                timbre = d.pick("oos_timbre_form").format(w=word)
                notes = _notes_text(d, spec.notes)
            else:
                timbre = _timbre_text(d, spec.timbre)
                notes = " ".join(list(spec.notes[:-1]) + [word])
            text = d.pick("oos_audio_frame").format(notes=notes, timbre=timbre)
    text = text[:1].upper() + text[1:]
    if noise:
        text, _ = add_noise(text, rng, typo_rate=0.0)
    return Rendered(text, tuple(d.used)), verdict


def answer_out_of_scope(verdict: OutOfScope, rng: np.random.Generator) -> Rendered:
    """The short honest answer: what was out of reach and what the model can do."""
    d = _Draw(rng, "train")
    text = d.pick(f"oos_answer_{verdict.reason}").format(word=verdict.word, a=_article(verdict.word))
    return Rendered(text, tuple(d.used))


# ---------------------------------------------------------------------------------------------- follow-up edits
EDIT_OPS = ("recolor", "move", "shift", "resize", "reshape", "transpose", "timbre", "repeat", "twice", "describe")
SHIFTS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
TRANSPOSE_WORDS = {12: "an octave", 1: "a semitone", 2: "two semitones", 3: "three semitones", 5: "five semitones"}


@dataclasses.dataclass(frozen=True)
class Edit:
    """A follow-up request about the last output. ``value``: a colour, position, direction, size, kind, timbre
    or a signed number of semitones, by op; ``target``: the shape kind it applies to (None: every shape)."""

    op: str
    value: Any = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.op not in EDIT_OPS:
            raise DataError(f"edit op must be one of {EDIT_OPS}, got {self.op!r}")


def apply_edit(spec: Item, edit: Edit) -> Item:
    """The spec after a follow-up edit (``describe`` and ``repeat`` leave it as it is). Raises DataError for an
    edit that does not fit the spec (an image edit on a clip, a shift off the grid, notes out of range)."""
    if edit.op in ("repeat", "describe"):
        return spec
    if isinstance(spec, ImageSpec):
        if edit.op not in ("recolor", "move", "shift", "resize", "reshape"):
            raise DataError(f"edit {edit.op!r} does not apply to a picture")
        shapes = []
        for s in spec.shapes:
            if edit.target is not None and s.kind != edit.target:
                shapes.append(s)
                continue
            if edit.op == "shift":
                r, c = divmod(POSITIONS.index(s.position), 3)
                dr, dc = SHIFTS[edit.value]
                if not (0 <= r + dr < 3 and 0 <= c + dc < 3):
                    raise DataError(f"cannot shift {s.position} {edit.value}")
                s = dataclasses.replace(s, position=POSITIONS[3 * (r + dr) + c + dc])
            else:
                field = {"recolor": "color", "move": "position", "resize": "size", "reshape": "kind"}[edit.op]
                s = dataclasses.replace(s, **{field: edit.value})
            shapes.append(s)
        return ImageSpec(tuple(shapes))
    if edit.op == "timbre":
        return dataclasses.replace(spec, timbre=edit.value)
    if edit.op == "twice":
        return dataclasses.replace(spec, notes=spec.notes * 2, durations=spec.durations * 2)
    if edit.op == "transpose":
        idx = [PITCHES.index(n) + int(edit.value) for n in spec.notes]
        if min(idx) < 0 or max(idx) >= len(PITCHES):
            raise DataError(f"transposing {spec.notes} by {edit.value} leaves C4..C6")
        return dataclasses.replace(spec, notes=tuple(PITCHES[i] for i in idx))
    raise DataError(f"edit {edit.op!r} does not apply to a clip")


def sample_edit(spec: Item, rng: np.random.Generator, combos: str = "train") -> Edit:
    """A follow-up edit that fits ``spec`` (and, for a picture of two shapes of different kinds, may target one).
    ``combos="train"``: the edited spec holds no reserved combination (``"any"``: it may)."""
    _check_combos(combos)
    while True:
        if isinstance(spec, ImageSpec):
            op = ("recolor", "move", "shift", "resize", "reshape", "describe")[int(rng.integers(6))]
            kinds = [s.kind for s in spec.shapes]
            target = None
            if len(kinds) > 1 and op not in ("shift", "describe"):
                if len(set(kinds)) < len(kinds) or op in ("move", "reshape", "resize"):
                    continue
                target = kinds[int(rng.integers(len(kinds)))]
            value = {
                "recolor": COLOR_NAMES,
                "move": POSITIONS,
                "shift": tuple(SHIFTS),
                "resize": SIZE_NAMES,
                "reshape": SHAPE_KINDS,
                "describe": (None,),
            }[op]
            edit = Edit(op, value[int(rng.integers(len(value)))], target)
        else:
            op = ("transpose", "timbre", "repeat", "twice", "describe")[int(rng.integers(5))]
            if op == "transpose":
                steps = list(TRANSPOSE_WORDS)[int(rng.integers(len(TRANSPOSE_WORDS)))]
                value: Any = steps if rng.random() < 0.5 else -steps
            elif op == "timbre":
                value = TIMBRES[int(rng.integers(len(TIMBRES)))]
            else:
                value = None
            edit = Edit(op, value)
        try:
            new = apply_edit(spec, edit)
        except DataError:
            continue
        if combos == "train" and reserved_combinations(new):
            continue
        if edit.op in ("repeat", "twice", "describe") or new != spec:
            return edit


_ABSOLUTE_POSITIONS = {
    p: tuple(w for w in LEXICON["position"][p] if " " in w or "-" in w or p == "center") for p in POSITIONS
}


def render_edit(edit: Edit, rng: np.random.Generator, split: str = "train", spec: Item | None = None) -> Rendered:
    """A follow-up request for ``edit`` (``spec``, the last output, picks "describe" wording for a clip)."""
    d = _Draw(rng, split)
    op = edit.op
    if op == "recolor":
        color = d.word("color", edit.value)
        if edit.target:
            text = d.pick("edit_recolor_target").format(kind=d.word("kind", edit.target), color=color)
        else:
            text = d.pick("edit_recolor").format(color=color)
    elif op == "move":
        text = d.pick("edit_move").format(pos=d.choice(_ABSOLUTE_POSITIONS[edit.value]))
    elif op == "shift":
        text = d.pick("edit_shift").format(dir=edit.value)
    elif op == "resize":
        cmp = "bigger" if edit.value == "large" else "smaller"
        text = d.pick("edit_resize").format(size=d.word("size", edit.value), cmp=cmp)
    elif op == "reshape":
        text = d.pick("edit_reshape").format(kind=d.word("kind", edit.value))
    elif op == "transpose":
        direction = d.choice(("higher", "up")) if edit.value > 0 else d.choice(("lower", "down"))
        text = d.pick("edit_transpose").format(amount=TRANSPOSE_WORDS[abs(edit.value)], dir=direction)
    elif op == "timbre":
        text = d.pick("edit_timbre").format(w=d.word("timbre", edit.value))
    elif op == "repeat":
        text = d.pick("edit_repeat")
    elif op == "twice":
        text = d.pick("edit_twice")
    else:
        text = d.pick("edit_describe_audio" if isinstance(spec, AudioSpec) else "edit_describe_image")
    text, _ = add_noise(text[:1].upper() + text[1:], rng, typo_rate=0.0)
    return Rendered(text, tuple(d.used))


# ---------------------------------------------------------------------------------------------- reserved checks
def normalize(text: str) -> str:
    """Lower case, ``♯``/``♭`` as ``#``/``b``, punctuation but ``#`` and ``/`` as spaces, single spaces."""
    text = text.lower().replace("♯", "#").replace("♭", "b")
    text = re.sub(r"[^a-z0-9#/']+", " ", text).replace("'", "")
    return " ".join(text.split())


_SIGNATURES = [
    (f"{r.name}:{len(r.train) + i}", re.compile(sig)) for r in RULES.values() for i, sig in enumerate(r.signatures)
]


def reserved_signatures_in(text: str) -> list[str]:
    """Ids of the reserved entries whose signature occurs in ``text``."""
    norm = normalize(text)
    return [eid for eid, pat in _SIGNATURES if pat.search(norm)]


def reserved_overlap(
    manifest: str | os.PathLike, eval_texts: Iterable[str] = (), eval_seeds: Iterable[int] = (), max_examples: int = 5
) -> dict[str, Any]:
    """How much of the reserved part a recorded corpus holds: the report the eval prints beside its numbers.

    Reads a JSONL manifest (media files are not opened) and counts: reserved grammar entries its documents record
    in ``meta["phrasing"]``; text segments holding a reserved entry's signature; media whose ``meta["media"]``
    truth holds a reserved attribute combination; and, of ``eval_texts`` (the eval's prompts), those that occur
    in the corpus's text word for word after :func:`normalize`; and whether the corpus's seed (its
    ``corpus.json``, when there is one beside the manifest) is one of ``eval_seeds``. Returns counts and a few
    examples of each; ``clean`` is true when all of them are zero.
    """
    path = os.fspath(manifest)
    if not os.path.isfile(path):
        raise DataError(f"{path}: manifest not found")
    reserved = reserved_entry_ids()
    report: dict[str, Any] = {"manifest": path, "documents": 0, "text_segments": 0, "media": 0}
    found: dict[str, list[Any]] = {"reserved_entries": [], "reserved_signatures": [], "reserved_combinations": []}
    counts = dict.fromkeys(found, 0)
    texts: list[str] = []

    def note(key: str, example: Any) -> None:
        counts[key] += 1
        if len(found[key]) < max_examples:
            found[key].append(example)

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            report["documents"] += 1
            meta = doc.get("meta") or {}
            where = doc.get("id", f"line-{lineno}")
            for eid in meta.get("phrasing", ()):
                if eid in reserved:
                    note("reserved_entries", {"id": where, "entry": eid})
            for seg in doc.get("segments", ()):
                if "text" in seg:
                    report["text_segments"] += 1
                    texts.append(normalize(seg["text"]))
                    for eid in reserved_signatures_in(seg["text"]):
                        note("reserved_signatures", {"id": where, "entry": eid, "text": seg["text"]})
            for m in meta.get("media", ()):
                report["media"] += 1
                try:
                    spec = ImageSpec.from_meta(m) if m.get("type") == "image" else AudioSpec.from_meta(m)
                except DataError:
                    continue
                for combo in reserved_combinations(spec):
                    note("reserved_combinations", {"id": where, "combination": list(combo)})
    blob = "\n".join(f" {t} " for t in texts)  # spaces around each text: matches start and end on whole words
    evals = [normalize(t) for t in eval_texts]
    hits = [t for t in evals if t and f" {t} " in blob]
    report.update({k: counts[k] for k in counts})
    report["eval_texts"] = len(evals)
    report["eval_texts_in_corpus"] = len(hits)
    report["examples"] = {**found, "eval_texts_in_corpus": hits[:max_examples]}
    recorded = os.path.join(os.path.dirname(os.path.abspath(path)), "corpus.json")
    seed = None
    if os.path.isfile(recorded):
        with open(recorded, encoding="utf-8") as f:
            seed = json.load(f).get("seed")
    report["corpus_seed"] = seed
    report["eval_seed_used"] = seed is not None and seed in set(eval_seeds)
    report["clean"] = not any(counts.values()) and not hits and not report["eval_seed_used"]
    return report


# ---------------------------------------------------------------------------------------------- eval cases
EVAL_TASKS = (
    "text_to_image",
    "text_to_audio",
    "reserved_combination",
    "multi_item",
    "caption",
    "followup",
    "out_of_scope",
)


def sample_eval_case(task: str, rng: np.random.Generator) -> dict[str, Any]:
    """One held-out case of an eval task (:data:`EVAL_TASKS`), worded only in reserved phrasing.

    Returns ``{"task", "request": the user's text, "truth": what a right answer holds}`` and, by task,
    ``"input"`` (the picture/clip spec the user gives, for ``caption``), ``"first"`` + ``"edit"`` (for
    ``followup``: the first request's spec and the edit; ``request`` is the follow-up, ``first_request`` the
    first turn's text) or ``"out_of_scope"`` (the verdict). ``truth`` is a list of specs in order (empty for
    out-of-scope; for a ``describe`` follow-up the spec to be described).
    """
    if task in ("text_to_image", "text_to_audio", "reserved_combination", "multi_item"):
        if task == "text_to_image":
            items: list[Item] = [sample_image(rng)]
        elif task == "text_to_audio":
            items = [sample_audio(rng)]
        elif task == "reserved_combination":
            items = [sample_image(rng, "reserved") if rng.random() < 0.5 else sample_audio(rng, "reserved")]
        else:
            items = [
                sample_image(rng) if rng.random() < 0.5 else sample_audio(rng) for _ in range(2 + int(rng.integers(2)))
            ]
        return {"task": task, "request": render_request(items, rng, "eval").text, "truth": items}
    if task == "caption":
        item = sample_image(rng) if rng.random() < 0.5 else sample_audio(rng)
        kind = "image" if isinstance(item, ImageSpec) else "audio"
        return {"task": task, "request": render_media_question(kind, rng, "eval").text, "input": item, "truth": [item]}
    if task == "followup":
        first = sample_image(rng) if rng.random() < 0.5 else sample_audio(rng)
        first_request = render_request(first, rng, "eval").text
        edit = sample_edit(first, rng)
        return {
            "task": task,
            "first_request": first_request,
            "first": first,
            "edit": edit,
            "request": render_edit(edit, rng, "eval", first).text,
            "truth": [apply_edit(first, edit)],
        }
    if task == "out_of_scope":
        rendered, verdict = render_out_of_scope(rng, "eval")
        return {"task": task, "request": rendered.text, "truth": [], "out_of_scope": verdict}
    raise DataError(f"eval task must be one of {EVAL_TASKS}, got {task!r}")
