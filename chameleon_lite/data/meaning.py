"""Text -> meaning for the whole request/answer grammar of :mod:`chameleon_lite.data.grammar`.

:func:`parse` reads a request, caption or answer into a :class:`Meaning`: the items it names in order
(:class:`~chameleon_lite.data.procedural.ImageSpec` / :class:`~chameleon_lite.data.procedural.AudioSpec`), an
:class:`~chameleon_lite.data.grammar.OutOfScope` verdict, or the problems that kept an item from being whole.
:func:`parse_edit` reads a follow-up ("now make it blue", "play it an octave higher") into an
:class:`~chameleon_lite.data.grammar.Edit`. Captions are judged by meaning with :func:`same_meaning`.

How it reads
    1. Lower case; ``♯``/``♭``; sentence punctuation (``. ? ! ; :``) becomes a piece boundary, other punctuation
       and hyphens spaces.
    2. A word of 4+ letters the grammar does not know is replaced by the one known word at Damerau distance 1
       (typos of the grammar's rate and kind: one dropped, doubled, swapped or replaced letter).
    3. Longest-match lexing over a phrase table built from the grammar's lexicon (``"upper left corner"`` is one
       position, ``"plus sign"`` one shape) and a note reader (``C#5``, ``c sharp 5``, ``Db5``, ``sol4``,
       ``middle C``, ``G in the fifth octave``, ``G (octave 5)``).
    4. Pieces split at boundaries and item connectors ("then", "followed by", "after that", ...); a piece with
       notes is a clip (``square`` is then a timbre), a piece with a shape word a picture, whose shapes split
       at joiners ("and", "with", "plus", ...), each shape taking the attributes of its chunk.
    5. An unknown colour, shape, instrument or a note outside C4..C6 makes the verdict out of scope; a text with
       no item at all is out of scope ("general").

Its own accuracy is measured by ``tests/data/test_meaning.py`` and ``bench/bench_meaning.py`` on every phrasing of
both splits.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable

import numpy as np

from chameleon_lite.data import grammar
from chameleon_lite.data.grammar import (
    DEFAULT_DURATION,
    GENERAL_QUESTIONS,
    LEXICON,
    OUT_OF_SCOPE_WORDS,
    RULES,
    TRANSPOSE_WORDS,
    Edit,
    OutOfScope,
)
from chameleon_lite.data.procedural import PITCHES, AudioSpec, ImageSpec, Shape

_NOTE_TOKEN = re.compile(r"^([a-g])(#|b)?([0-9])$")
_SOLFEGE_TOKEN = re.compile(r"^(do|re|mi|fa|sol|la|ti|si)(#|b)?([0-9])$")
_SOLFEGE = {"do": "C", "re": "D", "mi": "E", "fa": "F", "sol": "G", "la": "A", "ti": "B", "si": "B"}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7}
_LETTERS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_SEP = "|"


@dataclasses.dataclass(frozen=True)
class Lexeme:
    """One unit of meaning: ``cat`` (size, color, kind, square, position, timbre, note, oos_*, split, join, word)
    and its value; ``single`` marks a position read from one bare word (left, right, top, bottom)."""

    cat: str
    value: str
    single: bool = False


@dataclasses.dataclass
class Meaning:
    """What a text asks for or describes: ``items`` in order, or ``out_of_scope``; ``problems`` names what kept
    an item from being whole (a shape without a colour, notes without a timbre, ...)."""

    items: list[ImageSpec | AudioSpec]
    out_of_scope: OutOfScope | None = None
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------------------------- tables
def _tokens(text: str) -> list[str]:
    text = text.lower().replace("♯", "#").replace("♭", "b")
    text = re.sub(r"[.?!;:]+", f" {_SEP} ", text)
    text = re.sub(r"[^a-z0-9#|']+", " ", text).replace("'", "")
    return text.split()


@functools.lru_cache(maxsize=1)
def _phrases() -> dict[tuple[str, ...], Lexeme]:
    table: dict[tuple[str, ...], Lexeme] = {}
    for cat in ("size", "color", "kind", "position", "timbre"):
        for value, words in LEXICON[cat].items():
            for w in words:
                toks = tuple(_tokens(w))
                single = cat == "position" and len(toks) == 1 and toks[0] in ("left", "right", "top", "bottom")
                table[toks] = Lexeme(cat, value, single)
    table[("square",)] = Lexeme("square", "square")
    for value, words in LEXICON["timbre"].items():
        for w in words:
            for tail in ("wave", "waves", "tone", "tones", "sound", "timbre"):
                table[(*_tokens(w), tail)] = Lexeme("timbre", value)
    for w in ("pure tone", "pure tones"):
        table[tuple(w.split())] = Lexeme("timbre", "sine")
    for reason, (train, reserved) in OUT_OF_SCOPE_WORDS.items():
        if reason != "note":
            for w in train + reserved:
                table[(w.lower(),)] = Lexeme(f"oos_{reason}", w.lower())
    for w in ("then", "after that", "afterwards", "followed by", "next", "also", "first", "second", "finally"):
        table[tuple(w.split())] = Lexeme("split", w)
    for w in ("and", "with", "plus", "as well as", "together with", "along with"):
        table[tuple(w.split())] = Lexeme("join", w)
    return table


@functools.lru_cache(maxsize=1)
def _known_words() -> frozenset[str]:
    words: set[str] = set()
    for rule in RULES.values():
        for e in rule.entries:
            words.update(_tokens(re.sub(r"\{[a-z]+\}", " ", e)))
    for key in _phrases():
        words.update(key)
    for q in GENERAL_QUESTIONS[0] + tuple(GENERAL_QUESTIONS[1]):
        words.update(_tokens(q))
    words.update(
        "pure tone tones wave waves sharp flat octave fourth fifth sixth middle bigger smaller higher lower up down "
        "semitone semitones two three five notes note as pure tones please first".split()
    )
    words.update(_SOLFEGE)
    return frozenset(w for w in words if w.isalpha())


def _deletes(w: str) -> set[str]:
    return {w[:i] + w[i + 1 :] for i in range(len(w))}


@functools.lru_cache(maxsize=1)
def _delete_index() -> dict[str, tuple[str, ...]]:
    index: dict[str, set[str]] = {}
    for w in _known_words():
        if len(w) >= 3:
            for k in _deletes(w) | {w}:
                index.setdefault(k, set()).add(w)
    return {k: tuple(sorted(v)) for k, v in index.items()}


def _damerau1(a: str, b: str) -> bool:
    """Whether a and b are at most one insertion, deletion, substitution or adjacent swap apart."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    if len(a) > len(b):
        a, b = b, a
    return any(b[:i] + b[i + 1 :] == a for i in range(len(b)))


@functools.lru_cache(maxsize=1)
def _bigrams() -> frozenset[tuple[str, str]]:
    """Word pairs the grammar writes (within entries, lexicon phrases and note words), to pick among typo fixes."""
    texts = [piece for r in RULES.values() for e in r.entries for piece in re.split(r"\{[a-z]+\}", e)]
    texts += [" ".join(k) for k in _phrases()]
    texts += [f"in the {o} octave" for o in _ORDINALS] + ["pure tones", "pure tone", "middle c"]
    return frozenset(p for t in texts for p in zip(_tokens(t), _tokens(t)[1:]) if _SEP not in p)


@functools.lru_cache(maxsize=4096)
def _candidates(token: str) -> tuple[str, ...]:
    """Known words one typo from ``token``: attribute words first, out-of-scope words last."""
    index = _delete_index()
    cands = {w for k in _deletes(token) | {token} for w in index.get(k, ())}
    table = _phrases()

    def rank(w: str) -> tuple[int, str]:
        cat = table[(w,)].cat if (w,) in table else ""
        return (0 if cat in ("size", "color", "kind", "square", "position", "timbre") else 2 if "oos" in cat else 1), w

    return tuple(sorted((w for w in cands if _damerau1(token, w)), key=rank))


def correct(token: str, prev: str = "", nxt: str = "") -> str:
    """A token as written if the grammar knows it (or it is short or not a word), else the known word one typo
    away that the grammar writes beside ``prev`` / ``nxt`` (else the best ranked), else the token."""
    if len(token) < 4 or not token.isalpha() or token in _known_words():
        return token
    cands = _candidates(token)
    if not cands:
        return token
    pairs = _bigrams()
    fitting = [w for w in cands if (prev, w) in pairs or (w, nxt) in pairs]
    return (fitting or cands)[0]


# ---------------------------------------------------------------------------------------------- lexing
def _pitch(letter: str, accidental: str | None, octave: int) -> str:
    i = _LETTERS.index(letter.upper()) + {"#": 1, "b": -1, None: 0}[accidental or None]
    octave += i // 12
    return f"{_LETTERS[i % 12]}{octave}"


def _read_note(toks: list[str], i: int) -> tuple[str, int] | None:
    """A note starting at toks[i]: (pitch name, tokens used), or None. Pitch names outside PITCHES come back too
    (C2), so the caller can call them out of range."""
    t = toks[i]
    nxt = toks[i + 1 : i + 6]
    if t == "middle" and nxt[:1] == ["c"]:
        return "C4", 2
    m = _NOTE_TOKEN.match(t) or _SOLFEGE_TOKEN.match(t)
    if m:
        letter = _SOLFEGE.get(m.group(1), m.group(1))
        return _pitch(letter, m.group(2), int(m.group(3))), 1
    letter = _SOLFEGE.get(t, t if len(t) == 1 and t in "abcdefg" else None)
    if letter is None:
        return None
    acc, used = None, 1
    if nxt[:1] in (["sharp"], ["#"]):
        acc, used = "#", 2
    elif nxt[:1] == ["flat"]:
        acc, used = "b", 2
    rest = toks[i + used : i + used + 4]
    if rest[:1] and rest[0].isdigit() and len(rest[0]) == 1:
        return _pitch(letter, acc, int(rest[0])), used + 1
    if rest[:2] == ["in", "the"] and len(rest) >= 4 and rest[2] in _ORDINALS and rest[3] == "octave":
        return _pitch(letter, acc, _ORDINALS[rest[2]]), used + 4
    if rest[:1] == ["octave"] and len(rest) >= 2 and rest[1].isdigit() and len(rest[1]) == 1:
        return _pitch(letter, acc, int(rest[1])), used + 2
    return None


def _corrected(toks: list[str]) -> list[str]:
    """Typo correction; after a note letter an unknown word one typo from "sharp"/"flat" is that accidental
    (else "sarp" would read as "harp")."""
    out: list[str] = []
    for i, t in enumerate(toks):
        prev = out[-1] if out else ""
        if (len(prev) == 1 and prev in "abcdefg" or prev in _SOLFEGE) and t not in _known_words():
            fixed = next((w for w in ("sharp", "flat") if _damerau1(t, w)), None)
            if fixed:
                out.append(fixed)
                continue
        out.append(correct(t, prev, toks[i + 1] if i + 1 < len(toks) else ""))
    return out


def lex(text: str) -> list[Lexeme]:
    """Text -> lexemes (boundaries as ``Lexeme("split", "|")``; words outside the grammar dropped)."""
    toks = _corrected(_tokens(text))
    table = _phrases()
    out: list[Lexeme] = []
    i = 0
    while i < len(toks):
        if toks[i] == _SEP:
            out.append(Lexeme("split", _SEP))
            i += 1
            continue
        note = _read_note(toks, i)
        if note is not None:
            out.append(Lexeme("note", note[0]))
            i += note[1]
            continue
        for n in (4, 3, 2, 1):
            lexeme = table.get(tuple(toks[i : i + n]))
            if lexeme is not None:
                out.append(lexeme)
                i += n
                break
        else:
            i += 1
    return out


# ---------------------------------------------------------------------------------------------- parsing
def _pieces(lexemes: list[Lexeme]) -> list[list[Lexeme]]:
    pieces: list[list[Lexeme]] = [[]]
    for x in lexemes:
        if x.cat == "split":
            pieces.append([])
        else:
            pieces[-1].append(x)
    content = [p for p in pieces if any(x.cat != "join" for x in p)]
    # A piece without an anchor (a shape word or a note) lends its attributes to the next piece (or the last).
    merged: list[list[Lexeme]] = []
    carry: list[Lexeme] = []
    for p in content:
        if any(x.cat in ("kind", "square", "note", "oos_shape") for x in p):
            merged.append(carry + p)
            carry = []
        else:
            carry += p
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    return merged


def _image(piece: list[Lexeme], problems: list[str]) -> tuple[ImageSpec | None, OutOfScope | None]:
    chunks: list[list[Lexeme]] = [[]]
    for x in piece:
        if x.cat == "join":
            chunks.append([])
        else:
            chunks[-1].append(x)
    anchored = [c for c in chunks if any(x.cat in ("kind", "square", "oos_shape") for x in c)]
    loose = [x for c in chunks if c not in anchored for x in c]
    for x in loose:  # attributes split off from their shape attach to the first shape lacking them
        for c in anchored:
            if not any(y.cat == x.cat for y in c):
                c.append(x)
                break
    shapes = []
    for c in anchored:
        oos = next((x for x in c if x.cat in ("oos_color", "oos_shape")), None)
        if oos is not None:
            return None, OutOfScope(oos.cat[4:], oos.value)
        attrs = {}
        for x in c:
            cat = "kind" if x.cat == "square" else x.cat
            if cat in ("kind", "color", "size", "position"):
                attrs.setdefault(cat, x.value)
        missing = [a for a in ("kind", "color", "size", "position") if a not in attrs]
        if missing:
            problems.append(f"a shape without {', '.join(missing)}")
            continue
        shapes.append(Shape(attrs["kind"], attrs["color"], attrs["size"], attrs["position"]))
    if not shapes:
        return None, None
    if len({s.position for s in shapes}) != len(shapes):
        problems.append("two shapes in one cell")
        return None, None
    return ImageSpec(tuple(shapes)), None


def _audio(piece: list[Lexeme], problems: list[str]) -> tuple[AudioSpec | None, OutOfScope | None]:
    notes = [x.value for x in piece if x.cat == "note"]
    bad = [n for n in notes if n not in PITCHES]
    if bad:
        return None, OutOfScope("note", bad[0])
    oos = next((x for x in piece if x.cat == "oos_timbre"), None)
    if oos is not None:
        return None, OutOfScope("timbre", oos.value)
    timbre = next((x.value for x in piece if x.cat in ("timbre", "square")), None)
    if timbre is None:
        problems.append("notes without a timbre")
        return None, None
    return AudioSpec(tuple(notes), timbre, (DEFAULT_DURATION,) * len(notes)), None


def parse(text: str) -> Meaning:
    """A request, caption or answer -> its :class:`Meaning` (items in text order, or an out-of-scope verdict)."""
    problems: list[str] = []
    items: list[ImageSpec | AudioSpec] = []
    for piece in _pieces(lex(text)):
        has_note = any(x.cat == "note" for x in piece)
        item, oos = _audio(piece, problems) if has_note else _image(piece, problems)
        if oos is not None:
            return Meaning([], oos, problems)
        if item is not None:
            items.append(item)
    if not items and not problems:
        return Meaning([], OutOfScope("general"), [])
    return Meaning(items, None, problems)


def same_meaning(text: str, truth: ImageSpec | AudioSpec | Iterable[ImageSpec | AudioSpec]) -> bool:
    """Whether ``text`` names exactly ``truth`` (one item or items in order): same shapes (any order within a
    picture), same notes in order and timbre. Durations are not compared."""
    want = [truth] if isinstance(truth, (ImageSpec, AudioSpec)) else list(truth)
    got = parse(text)
    if got.out_of_scope is not None or got.problems or len(got.items) != len(want):
        return False
    for g, w in zip(got.items, want):
        if type(g) is not type(w):
            return False
        if isinstance(w, ImageSpec) and sorted(g.shapes, key=repr) != sorted(w.shapes, key=repr):
            return False
        if isinstance(w, AudioSpec) and (g.notes, g.timbre) != (w.notes, w.timbre):
            return False
    return True


# ---------------------------------------------------------------------------------------------- edits
_DESCRIBE = re.compile(r"\b(what|which|describe|tell)\b.*\b(drew|draw|just|those|that|made|play|played)\b|^describe")
_TRANSPOSE = re.compile(
    r"\b(an octave|a semitone|one semitone|two semitones|three semitones|five semitones|[0-9]+ semitones?)\b"
    r".*\b(higher|up|lower|down)\b"
)
_AMOUNTS = {v: k for k, v in TRANSPOSE_WORDS.items()} | {"one semitone": 1}


def parse_edit(text: str) -> Edit | None:
    """A follow-up request -> the :class:`Edit` it asks for, or None when it is not one."""
    toks = [t for t in _corrected(_tokens(text)) if t != _SEP]
    norm = " ".join(toks)
    lexemes = lex(text)
    cats = {x.cat: x for x in lexemes}
    if "note" in cats:
        return None
    if _DESCRIBE.search(norm):
        return Edit("describe")
    if re.search(r"\b(twice|two times)\b", norm):
        return Edit("twice")
    if re.search(r"\b(again|one more time|repeat|once more)\b", norm):
        return Edit("repeat")
    m = _TRANSPOSE.search(norm)
    if m:
        amount = m.group(1)
        steps = _AMOUNTS.get(amount) or int(amount.split()[0])
        return Edit("transpose", steps if m.group(2) in ("higher", "up") else -steps)
    audio_words = re.search(r"\b(notes?|wave|play|sound|timbre)\b", norm)
    if "timbre" in cats or ("square" in cats and audio_words):
        return Edit("timbre", cats.get("timbre", cats.get("square")).value)
    kind = cats.get("kind") or cats.get("square")
    target = kind.value if kind else None
    if "color" in cats:
        return Edit("recolor", cats["color"].value, target)
    if kind is not None:
        return Edit("reshape", kind.value)
    if "size" in cats:
        return Edit("resize", cats["size"].value)
    if re.search(r"\bbigger\b", norm):
        return Edit("resize", "large")
    if re.search(r"\bsmaller\b", norm):
        return Edit("resize", "small")
    direction = re.search(r"\b(up|down)\b", norm)
    pos = cats.get("position")
    if pos is not None and pos.single:
        word = next(t for t in toks if t in ("left", "right", "top", "bottom"))
        return Edit("shift", {"top": "up", "bottom": "down"}.get(word, word))
    if pos is not None:
        return Edit("move", pos.value)
    if direction and re.search(r"\b(move|shift|nudge|scoot|put)\b", norm):
        return Edit("shift", direction.group(1))
    return None


# ---------------------------------------------------------------------------------------------- own accuracy
def self_check(n: int, split: str, typo_rate: float = 0.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """The parser's accuracy on ``n`` texts of each kind the grammar writes in ``split`` (requests for a picture,
    a clip, several items and, in eval, reserved combinations; captions; out-of-scope requests; follow-up edits),
    requests carrying a typo at ``typo_rate`` (those that do are counted apart, as ``<kind>_typo``). Returns
    {kind: {"n", "correct", "accuracy"}} and, under
    ``"worst_entry"``, the lowest accuracy over the grammar entries used (so no phrasing hides behind the mean)."""
    kinds: dict[str, list[int]] = {}
    per_entry: dict[str, list[int]] = {}

    def score(kind: str, ok: bool, entries: Iterable[str]) -> None:
        kinds.setdefault(kind, [0, 0])[0] += ok
        kinds[kind][1] += 1
        for e in entries:
            per_entry.setdefault(e, [0, 0])[0] += ok
            per_entry[e][1] += 1

    for i in range(n):
        r = np.random.default_rng([seed, i])
        image, audio = grammar.sample_image(r), grammar.sample_audio(r)
        multi = [grammar.sample_image(r) if r.random() < 0.5 else grammar.sample_audio(r) for _ in range(2 + i % 2)]
        cases = [("request_image", [image]), ("request_audio", [audio]), ("request_multi", multi)]
        if split == "eval":
            cases.append(("request_reserved_combo", [grammar.sample_image(r, "reserved")]))
            cases.append(("request_reserved_combo", [grammar.sample_audio(r, "reserved")]))
        for kind, specs in cases:
            x = grammar.render_request(specs, r, split, typo_rate=typo_rate)
            score(kind + "_typo" * x.typo, same_meaning(x.text, specs), x.entries)
        for spec in (image, audio):
            x = grammar.render_caption(spec, r, split)
            score("caption", same_meaning(x.text, spec), x.entries)
        x, verdict = grammar.render_out_of_scope(r, split)
        got = parse(x.text).out_of_scope
        score("out_of_scope", got == verdict, x.entries)
        for spec in (image, audio):
            edit = grammar.sample_edit(spec, r)
            x = grammar.render_edit(edit, r, split, spec)
            score("edit", parse_edit(x.text) == edit, x.entries)
    out: dict[str, dict[str, float]] = {
        k: {"n": t, "correct": c, "accuracy": c / t} for k, (c, t) in sorted(kinds.items())
    }
    worst = min(per_entry.items(), key=lambda kv: kv[1][0] / kv[1][1])
    out["worst_entry"] = {"entry": worst[0], "n": worst[1][1], "accuracy": worst[1][0] / worst[1][1]}
    return out
