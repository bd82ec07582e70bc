"""The held-out eval: its requests never occur in a training corpus, its judges read meaning and media right, and
the command runs end to end on a conversation model."""

import json
import os

import numpy as np
import pytest
from toy import toy_model, toy_tokenizers

from chameleon_lite.cli import main
from chameleon_lite.data import grammar
from chameleon_lite.data import procedural as P
from chameleon_lite.data.procedural import CorpusConfig, write_corpus
from chameleon_lite.eval import HELDOUT_TASKS
from chameleon_lite.eval import heldout as H
from chameleon_lite.generate import Generator
from chameleon_lite.generate.document import Document, Span
from chameleon_lite.generate.engine import sampling_defaults, write_sampling_defaults
from chameleon_lite.model.io import save_model_dir

CHAT_WEIGHTS = {
    "chat_media": 3.0,
    "chat_caption": 2.0,
    "chat_followup": 2.0,
    "chat_out_of_scope": 1.0,
    "caption_to_image": 1.0,
    "caption_to_audio": 1.0,
    "instruction": 1.0,
}


def test_task_names_match_the_grammar():
    assert HELDOUT_TASKS == grammar.EVAL_TASKS + ("case_variants",) == H.TASKS


def test_eval_requests_never_occur_in_a_training_corpus(tmp_path):
    """A conversation corpus built as the shipped recipe builds it holds none of the eval's reserved wording, its
    reserved combinations, its requests word for word, or its seed."""
    cfg = CorpusConfig(task_weights=CHAT_WEIGHTS, exclude_reserved=True, unconditional_rate=0.1)
    manifest = write_corpus(str(tmp_path / "c"), 400, seed=5, config=cfg, progress=False)
    texts = [c["request"] for t in H.TASKS for c in H.cases(t, 40, H.DEFAULT_SEED)]
    texts += [c["first_request"] for c in H.cases("followup", 40, H.DEFAULT_SEED)]
    report = grammar.reserved_overlap(manifest, texts, [H.DEFAULT_SEED])
    assert report["clean"], report["examples"]
    assert report["eval_texts"] == len(texts) and report["documents"] == 400
    # the check itself sees overlap: a corpus with the eval's seed and a request copied into it is not clean
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_text(json.dumps({"id": "x", "segments": [{"text": texts[3]}]}) + "\n")
    assert grammar.reserved_overlap(str(dirty), texts)["eval_texts_in_corpus"] >= 1


def test_cases_are_seeded_and_variants_keep_meaning():
    a, b = H.cases("multi_item", 5, 7), H.cases("multi_item", 5, 7)
    assert [c["request"] for c in a] == [c["request"] for c in b]
    assert [c["request"] for c in H.cases("multi_item", 5, 8)] != [c["request"] for c in a]
    assert all(2 <= len(c["truth"]) <= 3 for c in a)
    text = "Play C#5, then D4 on a square wave!"
    assert H.variant(text, "no_punctuation") == "Play C#5 then D4 on a square wave"
    assert H.variant(text, "upper") == text.upper() and H.variant(text, "title").startswith("Play C#5, Then")
    from chameleon_lite.data import meaning

    for c in H.cases("case_variants", 20, 3):  # the grammar's parser reads every variant as the original
        for v in H.VARIANTS:
            assert meaning.same_meaning(c["variants"][v], c["truth"]), (v, c["variants"][v])


class _FakeJudge(H._Judge):
    def __init__(self) -> None:
        self.n_image, self.nq, self.sr = 4, 2, 16000


def _doc(spans, finish="eot"):
    return Document(spans=spans, ids=[], settings={"finish_reason": finish})


def _picture(spec):
    return Span("image", [0] * 4, image=P.render_image(spec, 48), role="assistant")


def _clip(spec):
    return Span("audio", [0] * 8, audio=P.synthesize_audio(spec, 16000), sample_rate=16000, role="assistant")


def test_media_judge():
    j = _FakeJudge()
    rng = np.random.default_rng(0)
    img, aud = grammar.sample_image(rng), grammar.sample_audio(rng)
    other = grammar.apply_edit(img, grammar.Edit("recolor", "green" if img.shapes[0].color != "green" else "red"))
    lead = Span("text", [], text="Here it is.", role="assistant")
    assert j.media(_doc([lead, _picture(img)]), [img])[0]
    ok, attrs, note = j.media(_doc([_picture(other)]), [img])
    assert not ok and attrs["valid"] and not attrs["color"]
    assert not j.media(_doc([_picture(img), _clip(aud)]), [img])[0]  # an item more than asked for
    assert j.media(_doc([_picture(img), _clip(aud)]), [img, aud])[0]
    assert not j.media(_doc([_clip(aud), _picture(img)]), [img, aud])[0]  # out of order
    assert not j.media(_doc([_picture(img)], finish="length"), [img])[0]  # the turn never ended


def test_text_judges():
    j = _FakeJudge()
    rng = np.random.default_rng(1)
    img = grammar.sample_image(rng)
    said = grammar.render_caption(img, rng, "eval").text  # reserved wording: judged by meaning, not by phrasing
    assert j.text(_doc([Span("text", [], text=said)]), [img])[0]
    assert not j.text(_doc([Span("text", [], text=said), _picture(img)]), [img])[0]  # no media in a caption
    wrong = grammar.render_caption(grammar.sample_image(np.random.default_rng(9)), rng, "eval").text
    assert not j.text(_doc([Span("text", [], text=wrong)]), [img])[0]
    # a describe follow-up is right when it names what the model itself drew, even if that was not what was asked
    drawn = P.render_image(grammar.sample_image(np.random.default_rng(9)), 48)
    from chameleon_lite.data.checkers import check_image

    assert j.text(_doc([Span("text", [], text=wrong)]), [img], check_image(drawn))[0]
    refuse = "Sorry, a boat is not a shape I know. I draw circles, squares, triangles, diamonds and crosses."
    assert H._refusal(_doc([Span("text", [], text=refuse)]))[0]
    assert not H._refusal(_doc([Span("text", [], text="a large red circle at the top left")]))[0]
    assert not H._refusal(_doc([Span("text", [], text=refuse), _picture(img)]))[0]
    assert not H._refusal(_doc([]))[0]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """An image-only model folder in the chat format (the toy audio codec has no files)."""
    tk = toy_tokenizers(audio=False)
    root = tmp_path_factory.mktemp("heldout")
    tok = str(root / "tok")
    tk.text.save(tok)
    tk.image.save(tok)
    d = save_model_dir(toy_model(tk.vocab, seed=2), tk.vocab, tok, str(root / "model"))
    write_sampling_defaults(d, {k: {"temperature": 0.0} for k in ("text", "image", "audio")}, fmt="chat")
    return d


def test_heldout_run_end_to_end(tmp_path):
    tk = toy_tokenizers()
    gen = Generator(toy_model(tk.vocab, seed=2), tk, sampling=sampling_defaults(), fmt="chat")
    for s in gen.sampling.values():
        s.temperature = 0.0
    corpus = write_corpus(
        str(tmp_path / "c"), 30, seed=5, config=CorpusConfig(task_weights=CHAT_WEIGHTS), progress=False
    )
    out = str(tmp_path / "ev")
    cfg = H.HeldoutConfig(model="toy", out=out, n=2, batch=4, corpora=(corpus,), cfg_scales=(1.0, 2.0), sweep_n=1,
                          variants_n=1, progress=False)  # fmt: skip
    res = H.run_heldout(cfg, log=lambda line: None, gen=gen)
    assert res["format"] == "chat" and set(res["tasks"]) == set(H.TASKS)
    assert res["tasks"]["case_variants"]["consistency_by_variant"].keys() == set(H.VARIANTS)
    assert res["overlap"][0]["eval_seed_used"] is False and len(res["cfg_sweep"]["rows"]) == 2
    assert all(
        0.0 <= r["exact"] <= 1.0 and r["n"] == (1 if t == "case_variants" else 2) for t, r in res["tasks"].items()
    )
    lines = open(os.path.join(out, "items.jsonl")).read().splitlines()
    assert len(lines) == 2 * len(H.TASKS) - 1 and os.path.isfile(os.path.join(out, "report.html"))
    assert set(json.load(open(os.path.join(out, "eval.json")))["tasks"]) == set(H.TASKS)


def test_heldout_command(chat_model, tmp_path, capsys):
    corpus = write_corpus(
        str(tmp_path / "c"), 30, seed=5, config=CorpusConfig(task_weights=CHAT_WEIGHTS), progress=False
    )
    out = str(tmp_path / "ev")
    args = ["eval", "--model", chat_model, "--out", out, "--n", "2", "--corpus", corpus]
    assert main(args + ["--tasks", "text_to_image", "text_to_audio", "out_of_scope"]) == 0  # auto: heldout
    res = json.load(open(os.path.join(out, "eval.json")))
    assert res["suite"] == "heldout" and set(res["tasks"]) == {"text_to_image", "out_of_scope"}
    said = capsys.readouterr().out
    assert "overlap with" in said and "text_to_audio: skipped (the model has no audio tokenizer)" in said
    plain = str(tmp_path / "plain")
    assert main(["eval", "--model", chat_model, "--out", plain, "--n", "1", "--format", "plain",
                 "--tasks", "followup", "out_of_scope", "--suite", "heldout"]) == 0  # fmt: skip
    assert "followup: skipped" in capsys.readouterr().out
    assert set(json.load(open(os.path.join(plain, "eval.json")))["tasks"]) == {"out_of_scope"}


def test_heldout_bad_input(chat_model, tmp_path, capsys):
    base = ["eval", "--model", chat_model, "--n", "1"]
    for extra, msg in (
        (["--tasks", "interleaved"], "not tasks of the held-out suite"),
        (["--corpus", str(tmp_path / "none.jsonl")], "manifest not found"),
        (["--suite", "procedural", "--corpus", "x"], "belongs to the held-out suite"),
        (["--suite", "procedural", "--tasks", "followup"], "not tasks of the procedural suite"),
    ):
        assert main(base + ["--out", str(tmp_path / f"o{len(msg)}")] + extra) == 1
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:
        main(base + ["--cfg-sweep", "1,x"])
    assert e.value.code == 2 and "--cfg-sweep" in capsys.readouterr().err


def test_recipe_seeds(tmp_path):
    """The eval reads the corpus seeds a model's RECIPE.json records and says whether its own seed is one."""
    rec = {"stages": {"quickstart": {"config": {"seed": 0}}, "continued": [{"corpus": {"seed": 300}}, {"x": 1}]}}
    (tmp_path / "RECIPE.json").write_text(json.dumps(rec))
    assert H._recipe_seeds(str(tmp_path), 300) == {"seeds": [0, 300, 1000], "eval_seed_used": True}
    assert H._recipe_seeds(str(tmp_path), H.DEFAULT_SEED)["eval_seed_used"] is False
    assert H._recipe_seeds(str(tmp_path / "none"), 1) == {"seeds": [], "eval_seed_used": False}
    from chameleon_lite import bundle

    assert H._recipe_seeds(bundle.DEMO_DIR, H.DEFAULT_SEED)["eval_seed_used"] is False  # the shipped model's stages
