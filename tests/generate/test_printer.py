"""generate's stream printer: a progress line redrawn on a terminal, only the final count into a file or pipe."""

from __future__ import annotations

import io

from chameleon_lite.generate.commands import _Printer
from chameleon_lite.generate.engine import StreamEvent


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ev(row=0, text="", span=None):
    return StreamEvent(row=row, step=0, id=0, kind="text" if span is None else "image", text=text, span=span)


def _events():
    yield _ev(text="Here: ")
    for done in range(3):
        yield _ev(span=(done, 2))
    yield _ev(row=1, text="row one is not printed")
    yield _ev(text="and a tone")
    for done in range(4):
        yield _ev(span=(done, None))  # the document ends inside an audio span


def _run(out):
    p = _Printer(out)
    for ev in _events():
        p(ev)
    p.finish()
    return out.getvalue()


def test_a_file_gets_each_spans_final_count_once():
    assert _run(io.StringIO()) == "Here: [image: 2/2 tokens]\nand a tone[audio: 3 tokens]\n"


def test_a_terminal_gets_the_line_redrawn():
    text = _run(_Tty())
    assert text.count("\r[image:") == 3 and text.count("\r[audio:") == 4
    assert text.endswith("\r[audio: 3 tokens]\n") and "row one" not in text


def test_a_document_without_spans_ends_its_line():
    p = _Printer(io.StringIO())
    p(_ev(text="just text"))
    p.finish()
    assert p.out.getvalue() == "just text\n"


def test_no_empty_line_after_a_span_that_ends_with_an_empty_event():
    p = _Printer(io.StringIO())
    for ev in (_ev(span=(0, None)), _ev(span=(1, None)), _ev(text="")):
        p(ev)
    p.finish()
    assert p.out.getvalue() == "[audio: 1 tokens]\n"
