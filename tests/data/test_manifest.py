import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from chameleon_lite.data.manifest import check_audio_file, check_image_file, iter_documents, validate_manifest
from chameleon_lite.errors import DataError


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "img" / "a.png")
    sf.write(tmp_path / "b.wav", np.zeros(1600, np.float32) + 0.1, 16000, subtype="PCM_16")
    return tmp_path


def write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_iterates_lazily_and_resolves_paths(corpus):
    m = write(
        corpus / "m.jsonl",
        [
            {"id": "d1", "segments": [{"text": "hi"}, {"image": "img/a.png"}]},
            "",
            {"segments": [{"audio": "b.wav", "attend": "bidirectional"}, {"text": "a tone"}], "meta": {"task": "x"}},
        ],
    )
    docs = list(iter_documents(m))
    assert [d.id for d in docs] == ["d1", "line-3"]
    assert docs[0].segments[1].path == str(corpus / "img" / "a.png")
    assert docs[1].segments[0].bidirectional and docs[1].meta == {"task": "x"}
    assert docs[1].line == 3


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "malformed JSON"),
        ('["a"]', "must be a JSON object"),
        ({"segments": []}, "empty document"),
        ({"segments": [{"txt": "a"}]}, "unknown key"),
        ({"segments": [{"text": "a", "image": "img/a.png"}]}, "exactly one of"),
        ({"segments": [{"image": "nope.png"}]}, "file not found"),
        ({"segments": [{"text": "a", "attend": "both"}]}, "attend must be"),
        ({"segments": [{"text": 3}]}, "must be a string"),
        ({"segs": []}, "unknown document key"),
        ({"segments": [{"text": ""}]}, "empty text"),
    ],
)
def test_errors_name_file_line_and_reason(corpus, line, reason):
    m = write(corpus / "m.jsonl", [{"segments": [{"text": "ok"}]}, line])
    with pytest.raises(DataError, match=rf"m\.jsonl:2: .*{reason}"):
        list(iter_documents(m))
    report = validate_manifest(m)
    assert not report.ok and report.documents == 1
    assert len(report.errors) == 1 and ":2:" in report.errors[0] and reason in report.errors[0]


def test_validate_decodes_media(corpus):
    (corpus / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (corpus / "bad.wav").write_bytes(b"RIFF\x10\0\0\0WAVEfmt ")
    (corpus / "text.png").write_text("hello")
    data = open(corpus / "img" / "a.png", "rb").read()
    (corpus / "trunc.png").write_bytes(data[: len(data) // 2])
    m = write(
        corpus / "m.jsonl",
        [
            {"segments": [{"image": "bad.png"}]},
            {"segments": [{"audio": "bad.wav"}]},
            {"segments": [{"image": "text.png"}]},
            {"segments": [{"image": "trunc.png"}]},
            {"segments": [{"image": "img/a.png"}, {"audio": "b.wav"}, {"text": "fine"}]},
        ],
    )
    report = validate_manifest(m)
    assert report.documents == 1 and report.segments == {"text": 1, "image": 1, "audio": 1}
    assert [e.split(":")[1] for e in report.errors] == ["1", "2", "3", "4"]
    assert "not an image" in report.errors[2]
    assert "summary" not in report.summary() and "4 error(s)" in report.summary()


def test_check_files(corpus):
    assert check_image_file(str(corpus / "img" / "a.png")) == (8, 8)
    assert check_audio_file(str(corpus / "b.wav")) == (1600, 16000, 1)
    sf.write(corpus / "empty.wav", np.zeros((0,), np.float32), 16000)
    with pytest.raises(DataError, match="empty audio"):
        check_audio_file(str(corpus / "empty.wav"))
    sf.write(corpus / "nan.wav", np.full(10, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="NaN"):
        check_audio_file(str(corpus / "nan.wav"))


def test_missing_manifest_and_non_utf8(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        list(iter_documents(tmp_path / "none.jsonl"))
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"segments": [{"text": "\xff"}]}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        list(iter_documents(p))
    assert "not UTF-8" in validate_manifest(p).errors[0]
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert not validate_manifest(empty).ok
