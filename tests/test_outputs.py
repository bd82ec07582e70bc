"""No command deletes or overwrites what it did not write: every output folder (and PNG path) that exists and is
not this tool's own is refused with one line before any work, and left as it was; the tool's own earlier output
is replaced whole."""

import os
import subprocess
import sys

import pytest

from chameleon_lite import files
from chameleon_lite.errors import UserError


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "chameleon_lite.cli", *args], capture_output=True, text=True, cwd=cwd)


def _user_folder(path, *names):
    os.makedirs(path, exist_ok=True)
    for n in names or ("notes.txt",):
        with open(os.path.join(path, n), "w") as f:
            f.write("keep me")
    return str(path)


def _untouched(path, *names):
    names = names or ("notes.txt",)
    return sorted(os.listdir(path)) == sorted(names) and all(
        open(os.path.join(path, n)).read() == "keep me" for n in names
    )


def _refused(r, what):
    return r.returncode == 1 and r.stderr.count("\n") == 1 and what in r.stderr and "nothing was changed" in r.stderr


def test_owns_recognises_only_folders_of_its_kind(tmp_path):
    doc = tmp_path / "doc"
    doc.mkdir()
    assert files.DOCUMENT.owns(str(doc)) == (True, "")  # empty
    (doc / "document.json").write_text("{}")
    (doc / "image_000.png").write_bytes(b"")
    assert files.DOCUMENT.owns(str(doc))[0]
    (doc / "image_0000.png").write_bytes(b"")  # not a name generate writes
    assert files.DOCUMENT.owns(str(doc)) == (False, "holds image_0000.png")
    os.remove(doc / "image_0000.png")
    (doc / "sub").mkdir()
    assert files.DOCUMENT.owns(str(doc)) == (False, "holds the folder sub/")
    os.rmdir(doc / "sub")
    os.symlink("/etc/passwd", doc / "document.md")  # a link under one of our names is not ours to replace
    assert files.DOCUMENT.owns(str(doc)) == (False, "holds document.md")
    bare = _user_folder(tmp_path / "bare", "image_000.png")  # our names but no signature
    assert files.DOCUMENT.owns(bare) == (False, "has no document.json")
    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    (corpus / "corpus.json").write_text("{}")
    (corpus / "images" / "x.png").write_bytes(b"")
    (corpus / "images" / "x.txt").write_bytes(b"")
    assert files.CORPUS.owns(str(corpus)) == (False, "images/ holds x.txt")


def test_a_servers_folder_is_its_own_past_turn_999999(tmp_path):
    """Turn folders and uploads have six digits, more past turn 999999 (what serve's own patterns accept)."""
    from chameleon_lite.serve.app import TURN_DIR, UPLOAD

    for n in (7, 1_000_000, 123_456_789):
        turn = f"turn_{n:06d}"
        _user_folder(tmp_path / "s" / turn, "document.json")
        _user_folder(tmp_path / "s" / "uploads", f"{n:06d}_0.png")
        assert TURN_DIR.match(turn) and UPLOAD.match(f"{n:06d}_0.png")
    assert files.SERVE.owns(str(tmp_path / "s")) == (True, "")
    _user_folder(tmp_path / "s" / "turn_12345", "document.json")
    assert files.SERVE.owns(str(tmp_path / "s")) == (False, "holds the folder turn_12345/")


def test_check_output_dir_and_replace_dir(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a folder"):
        files.check_output_dir(str(f), files.SHARDS)
    final = tmp_path / "shards"
    for round_ in range(2):  # a new folder, then replacing our own
        tmp = tmp_path / f"tmp{round_}"
        tmp.mkdir()
        (tmp / "meta.json").write_text(str(round_))
        files.replace_dir(str(tmp), str(final), files.SHARDS)
        assert (final / "meta.json").read_text() == str(round_) and not tmp.exists()
    (final / "notes.txt").write_text("keep me")
    tmp = tmp_path / "tmp2"
    tmp.mkdir()
    with pytest.raises(UserError, match="holds notes.txt"):
        files.replace_dir(str(tmp), str(final), files.SHARDS)
    assert (final / "notes.txt").read_text() == "keep me" and (final / "meta.json").read_text() == "1"


def test_atomic_writer_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    files.write_json_atomic(str(target), {"a": 1})

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        files.write_json_atomic(str(target), {"a": 2})
    assert os.listdir(tmp_path) == ["a.json"] and target.read_text() == '{\n  "a": 1\n}'


def test_atomic_path_is_the_old_file_or_the_whole_new_one(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(str(target), ".png") as tmp:
            assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
            open(tmp, "wb").write(b"half")
            raise RuntimeError("the writer failed")
    assert os.listdir(tmp_path) == ["plot.png"] and target.read_bytes() == b"old"
    with files.atomic_path(str(target), ".png") as tmp:
        open(tmp, "wb").write(b"new")
        assert target.read_bytes() == b"old"  # nothing changes until the block ends
    assert os.listdir(tmp_path) == ["plot.png"] and target.read_bytes() == b"new"


def test_tokenize_refuses_a_users_train_folder(tmp_path):
    out = tmp_path / "out"
    user = _user_folder(out / "train")
    r = cli(
        "data", "tokenize", "--manifest", str(tmp_path / "m.jsonl"), "--tokenizers", str(tmp_path), "--out", str(out)
    )
    assert _refused(r, "is not a shard folder"), r.stderr
    assert _untouched(user)
    (out / "file").write_text("x")
    r = cli("data", "tokenize", "--manifest", "m", "--tokenizers", "t", "--out", str(out / "file"))
    assert r.returncode == 1 and "exists and is not a folder" in r.stderr


def test_shard_writer_refuses_and_replaces_its_own(tmp_path):
    import numpy as np

    from chameleon_lite.data.shards import ShardWriter
    from chameleon_lite.vocab import UnifiedVocab

    v = UnifiedVocab(text_size=10, image_codebook=0, audio_levels=0, audio_codebook=0)
    out = str(tmp_path / "train")
    for n in (3, 2):
        with ShardWriter(out, v) as w:
            w.add(np.arange(n) + v.text_offset, [])
    assert sorted(os.listdir(out)) == ["docs_00000.npy", "meta.json", "spans_00000.npy", "tokens_00000.bin"]
    open(os.path.join(out, "notes.txt"), "w").close()
    with pytest.raises(UserError, match="holds notes.txt"):
        ShardWriter(out, v)


def test_generate_refuses_existing_outputs_before_loading(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    r = cli("generate", "--prompt", "hi", "--out", str(f), "--model", str(tmp_path / "no-model"))
    assert r.returncode == 1 and "exists and is not a folder" in r.stderr and f.read_text() == "keep me"
    user = _user_folder(tmp_path / "user")  # refused before the (missing) model is read
    r = cli("generate", "--prompt", "hi", "--out", user, "--model", str(tmp_path / "no-model"))
    assert _refused(r, "not a generated document"), r.stderr
    assert _untouched(user)
    r = cli("generate", "--prompt", "hi", "--batch", "2", "--out", user, "--model", str(tmp_path / "no-model"))
    assert _refused(r, "not a folder of generated samples"), r.stderr


def test_write_document_replaces_its_own_whole(tmp_path):
    import numpy as np

    from chameleon_lite.generate.document import Document, Span, write_document

    img = np.zeros((4, 4, 3), np.uint8)
    out = str(tmp_path / "doc")
    write_document(Document(spans=[Span("image", [1], image=img), Span("image", [1], image=img)], ids=[]), out)
    write_document(Document(spans=[Span("text", [1], text="hi")], ids=[]), out)
    assert sorted(os.listdir(out)) == ["document.html", "document.json", "document.md"]  # no stale image_001.png
    assert not [n for n in os.listdir(tmp_path) if n != "doc"]


def test_document_md_separates_prompt_and_answer(tmp_path):
    from chameleon_lite.generate.document import Document, Span, write_document

    spans = [Span("text", [1], text="What is this?", from_prompt=True), Span("text", [2], text="4 on a square wave.")]
    out = write_document(Document(spans=spans, ids=[]), str(tmp_path / "d"))
    assert open(os.path.join(out, "document.md")).read() == "What is this? 4 on a square wave.\n"
    spans = [Span("text", [1], text="Once upon a", from_prompt=True), Span("text", [2], text=" time")]
    out = write_document(Document(spans=spans, ids=[]), str(tmp_path / "e"))
    assert open(os.path.join(out, "document.md")).read() == "Once upon a time\n"


def test_procedural_refuses_a_users_folder_and_reruns_into_its_own(tmp_path):
    user = _user_folder(tmp_path / "user", "manifest.jsonl")
    r = cli("data", "procedural", "--out", user, "--n", "2", "--quiet")
    assert _refused(r, "not a procedural corpus"), r.stderr
    assert _untouched(user, "manifest.jsonl")
    ours = str(tmp_path / "corpus")
    for _ in range(2):
        r = cli("data", "procedural", "--out", ours, "--n", "2", "--quiet")
        assert r.returncode == 0, r.stderr


def test_eval_refuses_a_users_folder(tmp_path):
    user = _user_folder(tmp_path / "user")
    r = cli("eval", "--out", user, "--n", "1", "--model", str(tmp_path / "no-model"))
    assert _refused(r, "not an evaluation folder"), r.stderr
    assert _untouched(user)


def test_export_refuses_a_model_folder_with_user_files(tmp_path):
    from chameleon_lite.files import MODEL, check_output_dir

    folder = _user_folder(tmp_path / "m", "config.json", "notes.txt")
    with pytest.raises(UserError, match="holds notes.txt"):
        check_output_dir(folder, MODEL)


def test_plot_refuses_a_png_it_did_not_write(tmp_path):
    import json

    from PIL import Image

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 1.0, "lr": 0.1}) + "\n")
    mine = tmp_path / "photo.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(mine)
    before = mine.read_bytes()
    r = cli("plot", str(run), "--out", str(mine))
    assert _refused(r, "was not written by chameleon-lite"), r.stderr
    assert mine.read_bytes() == before
    out = tmp_path / "curves.png"
    for _ in range(2):  # a new path, then the tool's own PNG again
        r = cli("plot", str(run), "--out", str(out))
        assert r.returncode == 0, r.stderr
    r = cli("plot", str(run), "--out", str(tmp_path / "curves.txt"))
    assert r.returncode == 1 and "must end with .png" in r.stderr


def test_pretrain_and_quickstart_refuse_a_users_folder(tmp_path):
    from chameleon_lite.pipeline import Pipeline

    user = _user_folder(tmp_path / "user")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(repo, "train", "pretrain.py"),
            "--config",
            "debug",
            "--data",
            str(tmp_path / "no-data"),
            "--out",
            user,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "not a training run folder" in r.stderr, r.stderr
    with pytest.raises(UserError, match="not a quickstart folder"):
        Pipeline(user)
    assert _untouched(user)
    Pipeline(str(tmp_path / "qs"))
    Pipeline(str(tmp_path / "qs"))  # its own folder again
