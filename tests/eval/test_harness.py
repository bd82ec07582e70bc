import os

import numpy as np
import pytest

from chameleon_lite.data import procedural as P
from chameleon_lite.errors import ConfigError
from chameleon_lite.eval.harness import EvalConfig, Item, judge_instruction, judge_interleaved, summarize
from chameleon_lite.eval.report import prompt_grid, write_report
from chameleon_lite.generate.document import Document, Span

N_IMAGE, NQ, SR = 64, 4, 16000


def _image_span(spec, complete=True, n=N_IMAGE):
    return Span("image", list(range(n)), image=P.render_image(spec), complete=complete)


def _audio_span(spec, frames=10):
    return Span("audio", list(range(frames * NQ)), audio=P.synthesize_audio(spec, SR), sample_rate=SR)


def _doc(spans, finish="eos"):
    return Document(spans=spans, ids=[], settings={"finish_reason": finish})


SPEC = P.ImageSpec((P.Shape("circle", "red", "large", "top left"),))
OTHER = P.ImageSpec((P.Shape("square", "blue", "small", "center"),))
ASPEC = P.AudioSpec(("C5", "E5", "G5"), "square", (0.3, 0.3, 0.3))


def test_interleaved_valid_and_correct():
    first = P.interleaved_text(SPEC, first=True)
    doc = _doc([_image_span(SPEC), Span("text", [1], text=P.interleaved_text(ASPEC, first=False)), _audio_span(ASPEC)])
    valid, ok, total, note = judge_interleaved(doc, first, N_IMAGE, NQ, SR)
    assert (valid, ok, total, note) == (True, 2, 2, "")


def test_interleaved_wrong_picture_is_valid_but_not_correct():
    doc = _doc([_image_span(OTHER)])
    valid, ok, total, _ = judge_interleaved(doc, P.interleaved_text(SPEC, first=True), N_IMAGE, NQ, SR)
    assert valid and (ok, total) == (0, 1)


@pytest.mark.parametrize(
    "spans,finish,reason",
    [
        ([], "eos", "no media span"),
        ([_image_span(SPEC, complete=False)], "eos", "incomplete image span"),
        ([_image_span(SPEC, n=N_IMAGE - 1)], "eos", "image span of 63 ids"),
        ([Span("audio", list(range(NQ * 3 + 1)), audio=np.zeros(1600, np.float32))], "eos", "not whole frames"),
        ([_image_span(SPEC)], "length", "no <eos>"),
    ],
)
def test_interleaved_structural_problems(spans, finish, reason):
    valid, _, _, note = judge_interleaved(_doc(spans, finish), "Here is a picture.", N_IMAGE, NQ, SR)
    assert not valid and reason in note


def test_instruction_requested_items_in_order():
    doc = _doc([_image_span(SPEC), _audio_span(ASPEC)])
    assert judge_instruction(doc, [SPEC, ASPEC], N_IMAGE, NQ, SR) == (True, 2, "")
    # a wrong picture: valid, one of two right
    assert judge_instruction(_doc([_image_span(OTHER), _audio_span(ASPEC)]), [SPEC, ASPEC], N_IMAGE, NQ, SR) == (
        True,
        1,
        "",
    )


@pytest.mark.parametrize(
    "spans,reason",
    [
        ([_audio_span(ASPEC), _image_span(SPEC)], "where ['image', 'audio'] were asked for"),  # wrong order
        ([_image_span(SPEC)], "where ['image', 'audio'] were asked for"),  # one missing
        ([_image_span(SPEC), _audio_span(ASPEC), _image_span(SPEC)], "were asked for"),  # one too many
        ([], "no media span"),
    ],
)
def test_instruction_wrong_media_is_invalid(spans, reason):
    valid, _, note = judge_instruction(_doc(spans), [SPEC, ASPEC], N_IMAGE, NQ, SR)
    assert not valid and reason in note


def test_summarize_counts_exact_and_attributes():
    items = [
        Item("t", "p", None, exact=True, attributes={"color": True, "kind": True}),
        Item("t", "p", None, exact=False, attributes={"color": True, "kind": False}),
        Item("t", "p", None, exact=False, attributes={}),
    ]
    s = summarize(items)
    assert s["n"] == 3 and s["exact"] == pytest.approx(1 / 3)
    assert s["attributes"] == {"color": pytest.approx(2 / 3), "kind": pytest.approx(1 / 3)}


@pytest.mark.parametrize("kw", [{"n": 0}, {"tasks": ("text_to_video",)}, {"batch": 0}, {"samples_in_report": -1}])
def test_config_errors(kw):
    with pytest.raises(ConfigError):
        EvalConfig(model="m", out="o", **kw)


def test_report_and_grid(tmp_path):
    items = [
        Item("text_to_image", P.image_prompt(SPEC), SPEC, image=P.render_image(SPEC), exact=True),
        Item("text_to_image", P.image_prompt(OTHER), OTHER, image=P.render_image(SPEC), exact=False),
    ]
    grid = prompt_grid(items, str(tmp_path / "grid.png"))
    from PIL import Image

    assert Image.open(grid).size[0] > 100
    results = {
        "model": "m",
        "tasks": {"text_to_image": summarize(items)},
        "tokenizers": {"image": {"psnr": 30.5}},
        "perplexity": {"text": 1.5},
    }
    page = write_report(str(tmp_path), results, {"text_to_image": items}, sample_rate=None)
    text = open(page).read()
    assert "text_to_image" in text and "50.0%" in text and "data:image/png;base64" in text and "30.5" in text
    assert os.path.exists(tmp_path / "text_to_image_grid.png")
