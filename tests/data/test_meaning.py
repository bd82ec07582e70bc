import numpy as np
import pytest

from chameleon_lite.data import grammar as G
from chameleon_lite.data import procedural as P
from chameleon_lite.data.meaning import correct, parse, parse_edit, same_meaning, self_check

RED_CIRCLE = P.ImageSpec((P.Shape("circle", "red", "large", "top left"),))


@pytest.mark.parametrize("split", G.SPLITS)
@pytest.mark.parametrize("typo_rate", [0.0, 1.0])
def test_own_accuracy_on_every_kind_of_text(split, typo_rate):
    """The parser reads the grammar it judges by: all of it without typos, nearly all with one typo."""
    report = self_check(400, split, typo_rate, seed=7)
    floor = 1.0 if typo_rate == 0 else 0.98
    for kind, r in report.items():
        if kind != "worst_entry":
            assert r["accuracy"] >= floor, (kind, r)
    if typo_rate:
        assert any(k.endswith("_typo") for k in report)
    assert report["worst_entry"]["accuracy"] >= (1.0 if typo_rate == 0 else 0.9)


@pytest.mark.parametrize(
    "text",
    [
        "draw a big red circle at the upper left",
        "DRAW A LARGE RED CIRCLE AT THE TOP LEFT.",
        "Draw A Large Red Circle At The Top Left",
        "draw a large red circle at the top left",
        "  Could you paint a huge scarlet disc in the top-left corner??",
        "in the upper left corner, a big red circle please",
        "a red circle, large, top left",
        "Draw a large red circle at the top left.",  # the corpus's template wording
    ],
)
def test_everyday_wording_of_one_picture(text):
    assert same_meaning(text, RED_CIRCLE), parse(text)


def test_notes_in_every_spelling():
    want = P.AudioSpec(("C4", "D#5", "G4"), "square", (0.3,) * 3)
    for text in (
        "play middle C, D sharp 5 and G4 on a square wave",
        "Play C4 Eb5 G4 with a square wave.",
        "do4 re#5 sol4 as a square wave",
        "play C in the fourth octave, D sharp in the fifth octave, G in the fourth octave in square",
        "C (octave 4) / D sharp (octave 5) / G (octave 4) voiced as a square wave",
        "PLAY C4 D#5 G4 ON A SQUARE WAVE",
    ):
        assert same_meaning(text, want), (text, parse(text))


def test_several_items_in_order():
    clip = P.AudioSpec(("C5", "E5", "G5"), "sine", (0.3,) * 3)
    two = P.ImageSpec((P.Shape("square", "blue", "small", "center"),))
    text = (
        "draw a big red circle at the top left, then play C5 E5 G5 on a sine wave. Also, a tiny blue box in the middle"
    )
    assert same_meaning(text, [RED_CIRCLE, clip, two])
    assert not same_meaning(text, [clip, RED_CIRCLE, two])
    one_picture = "draw a big red circle at the top left and a tiny blue box in the middle"
    got = parse(one_picture).items
    assert len(got) == 1 and len(got[0].shapes) == 2


def test_out_of_scope_verdicts():
    assert parse("What is the capital of France?").out_of_scope == G.OutOfScope("general")
    assert parse("draw a big pink circle at the top left").out_of_scope == G.OutOfScope("color", "pink")
    assert parse("draw a small red star in the center").out_of_scope == G.OutOfScope("shape", "star")
    assert parse("play C5 E5 on a piano").out_of_scope == G.OutOfScope("timbre", "piano")
    assert parse("play C2 E5 on a sine wave").out_of_scope == G.OutOfScope("note", "C2")
    assert parse("").out_of_scope == G.OutOfScope("general")


def test_incomplete_items_are_problems_not_guesses():
    m = parse("draw a red circle")
    assert m.items == [] and m.problems and not m.complete and m.out_of_scope is None
    m = parse("play C5 E5")
    assert m.problems == ["notes without a timbre"]


def test_edits():
    cases = {
        "now make it blue": G.Edit("recolor", "blue"),
        "make the circle green": G.Edit("recolor", "green", "circle"),
        "play it an octave higher": G.Edit("transpose", 12),
        "two semitones down": G.Edit("transpose", -2),
        "move it to the right": G.Edit("shift", "right"),
        "move it up": G.Edit("shift", "up"),
        "move it to the bottom left corner": G.Edit("move", "bottom left"),
        "make it bigger": G.Edit("resize", "large"),
        "turn it into a square": G.Edit("reshape", "square"),
        "play it on a sawtooth wave instead": G.Edit("timbre", "sawtooth"),
        "play it again": G.Edit("repeat"),
        "play it twice": G.Edit("twice"),
        "what did you just play?": G.Edit("describe"),
    }
    for text, edit in cases.items():
        assert parse_edit(text) == edit, text
    assert parse_edit("play C5 on a sine wave") is None


def test_case_and_punctuation_variants_agree():
    r = np.random.default_rng(3)
    for _ in range(200):
        spec = G.sample_image(r) if r.random() < 0.5 else G.sample_audio(r)
        text = G.render_request(spec, r, "eval", noise=False).text
        variants = [text.lower(), text.upper(), text.title(), text.rstrip(".?!"), text.replace(",", "")]
        assert all(same_meaning(v, spec) for v in variants), text


def test_typo_correction_uses_context():
    assert correct("squre") == "square" and correct("purpel") == "purple"
    assert correct("fith", "the", "octave") == "fifth"
    assert correct("pint") == "paint" and correct("xylophone") == "xylophone"
