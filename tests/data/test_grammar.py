import hashlib
import json

import numpy as np
import pytest

from chameleon_lite.data import grammar as G
from chameleon_lite.data import procedural as P
from chameleon_lite.data.manifest import iter_documents
from chameleon_lite.data.meaning import parse, parse_edit, same_meaning
from chameleon_lite.data.sequence import Part, SequenceEncoder, parts_from_segments
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.tokenizers.loader import Tokenizers
from chameleon_lite.vocab import UnifiedVocab
from tests.toy import toy_tokenizers

N = 1500


def _specs(r: np.random.Generator, i: int, combos: str = "train") -> list:
    k = i % 4
    if k == 0:
        return [G.sample_image(r, combos)]
    if k == 1:
        return [G.sample_audio(r, combos)]
    return [G.sample_image(r, combos) if r.random() < 0.5 else G.sample_audio(r, combos) for _ in range(2 + i % 2)]


def renders(split: str, n: int = N, seed: int = 0, typo_rate: float = G.TYPO_RATE) -> list[G.Rendered]:
    """Every kind of text the grammar writes, n of each, from (seed, i)."""
    out = []
    for i in range(n):
        r = np.random.default_rng([seed, i])
        specs = _specs(r, i)
        out.append(G.render_request(specs, r, split, typo_rate=typo_rate))
        out.append(G.render_caption(specs[0], r, split))
        out.append(G.render_media_question("image" if i % 2 else "audio", r, split))
        rendered, verdict = G.render_out_of_scope(r, split)
        out += [rendered, G.answer_out_of_scope(verdict, r), G.render_media_lead(r)]
        out.append(G.render_edit(G.sample_edit(specs[0], r), r, split, specs[0]))
    return out


@pytest.fixture(scope="module")
def train_texts():
    return renders("train")


@pytest.fixture(scope="module")
def eval_texts():
    return renders("eval", typo_rate=0.0)


def test_same_seed_and_index_same_text():
    a = [x.text for x in renders("train", 50, seed=3)]
    assert a == [x.text for x in renders("train", 50, seed=3)]
    assert a != [x.text for x in renders("train", 50, seed=4)]


def test_grammar_size_and_frames_have_reserved_entries():
    size = G.grammar_size()
    assert size["rules"] >= 30 and size["entries"] >= 200 and size["reserved_entries"] >= 40
    assert all(G.RULES[name].reserved for name in G.FRAME_RULES)


def test_train_never_emits_a_reserved_entry(train_texts):
    reserved = G.reserved_entry_ids()
    assert not {e for x in train_texts for e in x.entries} & reserved
    assert [x.text for x in train_texts if G.reserved_signatures_in(x.text)] == []


def test_eval_frames_are_reserved_and_their_signatures_show(eval_texts):
    reserved = G.reserved_entry_ids()
    framed = [x for x in eval_texts if any(e.split(":")[0] in G.FRAME_RULES for e in x.entries)]
    assert len(framed) >= 5 * N  # requests, captions, questions, out-of-scope, edits
    for x in framed:
        frames = [e for e in x.entries if e.split(":")[0] in G.FRAME_RULES]
        assert frames and set(frames) <= reserved, x
        assert G.reserved_signatures_in(x.text), x.text


def test_every_entry_is_reachable(train_texts, eval_texts):
    used = {e for x in train_texts + eval_texts for e in x.entries}
    every = {f"{r.name}:{i}" for r in G.RULES.values() for i in range(len(r.entries))}
    assert every - used == set()


def test_eval_text_never_equals_a_train_text(train_texts, eval_texts):
    train = {G.normalize(x.text) for x in train_texts}
    assert not [
        x.text
        for x in eval_texts
        if x.entries and G.normalize(x.text) in train and any(e in G.reserved_entry_ids() for e in x.entries)
    ]


def test_reserved_combinations():
    r = np.random.default_rng(0)
    for _ in range(300):
        assert not G.reserved_combinations(G.sample_image(r, "train"))
        assert not G.reserved_combinations(G.sample_audio(r, "train"))
        spec = G.sample_image(r, "reserved")
        assert len(G.reserved_combinations(spec)) == len(spec.shapes)
        assert G.reserved_combinations(G.sample_audio(r, "reserved")) == [("sine", "high")]
    assert (
        G.register(("C4", "B4")) == "low" and G.register(("C5", "C6")) == "high" and G.register(("B4", "C5")) == "mixed"
    )
    with pytest.raises(DataError, match="combos"):
        G.sample_image(r, "eval")


def test_note_styles():
    assert [G.note_text("C#5", s) for s in ("letter", "lower", "spelled", "flat", "solfege")] == [
        "C#5",
        "c#5",
        "C sharp 5",
        "Db5",
        "do#5",
    ]
    assert G.note_text("G4", "octave_words") == "G in the fourth octave"
    assert G.note_text("A#5", "octave_number") == "A sharp (octave 5)"


def test_apply_edit():
    spec = P.ImageSpec((P.Shape("circle", "red", "large", "top left"), P.Shape("square", "blue", "small", "center")))
    moved = G.apply_edit(spec, G.Edit("shift", "right"))
    assert [s.position for s in moved.shapes] == ["top middle", "middle right"]
    blue = G.apply_edit(spec, G.Edit("recolor", "green", target="circle"))
    assert [s.color for s in blue.shapes] == ["green", "blue"]
    with pytest.raises(DataError, match="cannot shift"):
        G.apply_edit(spec, G.Edit("shift", "left"))
    clip = P.AudioSpec(("C4", "E4"), "sine", (0.3, 0.3))
    assert G.apply_edit(clip, G.Edit("transpose", 12)).notes == ("C5", "E5")
    assert G.apply_edit(clip, G.Edit("twice")).notes == ("C4", "E4", "C4", "E4")
    assert G.apply_edit(clip, G.Edit("timbre", "square")).timbre == "square"
    with pytest.raises(DataError, match="leaves C4..C6"):
        G.apply_edit(clip, G.Edit("transpose", -1))
    with pytest.raises(DataError, match="does not apply"):
        G.apply_edit(clip, G.Edit("recolor", "red"))
    r = np.random.default_rng(1)
    for _ in range(200):
        s = G.sample_image(r) if r.random() < 0.5 else G.sample_audio(r)
        e = G.sample_edit(s, r)
        assert e.op in ("repeat", "twice", "describe") or G.apply_edit(s, e) != s
        assert not G.reserved_combinations(G.apply_edit(s, e))


def test_out_of_scope_answers_say_what_the_model_can_do():
    r = np.random.default_rng(2)
    for _ in range(100):
        rendered, verdict = G.render_out_of_scope(r, "train")
        answer = G.answer_out_of_scope(verdict, r).text
        assert verdict.word in answer
        assert any(w in answer for w in ("draw", "play", "shapes", "notes", "colours", "waves"))
        assert " a o" not in answer and " a a" not in answer


# ------------------------------------------------------------------------------------------- conversation corpus
CHAT = {t: 1.0 for t in P.CONVERSATION_TASKS}


@pytest.fixture(scope="module")
def chat_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat")
    weights = {**CHAT, "caption_to_image": 0.5, "instruction": 0.5}
    cfg = P.CorpusConfig(task_weights=weights, unconditional_rate=0.2, exclude_reserved=True)
    return P.write_corpus(out, 300, seed=11, config=cfg, progress=False)


def test_training_corpus_holds_nothing_reserved(chat_corpus):
    eval_prompts = []
    for i in range(200):
        r = np.random.default_rng([99, i])
        specs = _specs(r, i)
        eval_prompts += [G.render_request(specs, r, "eval").text, G.render_out_of_scope(r, "eval")[0].text]
        eval_prompts.append(G.render_edit(G.sample_edit(specs[0], r), r, "eval", specs[0]).text)
    report = G.reserved_overlap(chat_corpus, eval_prompts)
    assert report["documents"] == 300 and report["text_segments"] > 300
    assert report["clean"], report["examples"]
    docs = [json.loads(line) for line in open(chat_corpus)]
    tasks = {d["meta"]["task"] for d in docs}
    assert set(P.CONVERSATION_TASKS) <= tasks
    assert any(r["kind"] == "unconditional" for d in docs for r in d["meta"].get("requests", ()))
    assert any("edit" in r for d in docs for r in d["meta"].get("requests", ()))


def test_overlap_report_finds_what_is_there(tmp_path):
    spec = P.ImageSpec((P.Shape("diamond", "red", "small", "center"),))
    doc = {
        "segments": [{"text": "Would you mind drawing a red diamond?"}, {"image": "x.png"}],
        "meta": {"phrasing": ["image_frame:14"], "media": [spec.to_meta(48, 48)]},
    }
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(doc) + "\n")
    report = G.reserved_overlap(path, ["would you mind drawing a red diamond", "something else"])
    assert report["reserved_entries"] == 1 and report["reserved_signatures"] >= 1
    assert report["reserved_combinations"] == 1 and report["eval_texts_in_corpus"] == 1 and not report["clean"]
    with pytest.raises(DataError, match="not found"):
        G.reserved_overlap(tmp_path / "none.jsonl")


def test_conversation_documents_have_turns(chat_corpus):
    for doc in iter_documents(chat_corpus):
        turns = [s.turn for s in doc.segments if s.kind == "turn"]
        if not turns:
            continue
        assert doc.segments[0].turn == "user" and doc.segments[-1].turn == "end"
        roles = turns[0::2]
        assert turns[1::2] == ["end"] * len(roles)
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        for s in doc.segments:  # user media is an input, assistant media is generated
            assert s.kind != "text" or s.text


def test_default_corpus_is_unchanged(tmp_path):
    """The template corpus of a config without the new fields stays byte for byte what it was."""
    manifest = P.write_corpus(tmp_path / "c", 40, seed=0, progress=False)
    digest = hashlib.sha256(open(manifest, "rb").read()).hexdigest()
    assert digest == "ebe729999aac0f74f28ed33586edcd115d6d530b8eab7b89ee54df43d4f049e3"
    cfg = json.load(open(tmp_path / "c" / "corpus.json"))["config"]
    assert "unconditional_rate" not in cfg and "exclude_reserved" not in cfg
    assert set(cfg["task_weights"]) == set(P.TASKS)


def test_config_checks_new_fields():
    with pytest.raises(ConfigError, match="unconditional_rate"):
        P.CorpusConfig(unconditional_rate=1.5)
    with pytest.raises(ConfigError, match="unknown task"):
        P.CorpusConfig(task_weights={"chat": 1.0})
    cfg = P.CorpusConfig(task_weights=CHAT, unconditional_rate=0.1)
    assert P.CorpusConfig.from_dict(cfg.to_dict()) == cfg


def test_encoder_turns_become_special_ids(chat_corpus):
    tk = toy_tokenizers()
    v = tk.vocab
    enc = SequenceEncoder(tk)
    seq = enc.encode(
        [Part("turn", "user"), Part("text", "<user> draw"), Part("turn", "end"), Part("turn", "assistant")]
    )
    ids = seq.ids.tolist()
    assert ids[:2] == [v.bos, v.user] and ids[-2:] == [v.assistant, v.eos] and v.eot in ids
    body = ids[2 : ids.index(v.eot)]
    assert all(v.text_offset <= i < v.image_offset for i in body)
    docs = [d for d in iter_documents(chat_corpus) if d.meta["task"] in P.CONVERSATION_TASKS][:24]
    for doc, seq in zip(docs, enc.encode_many([parts_from_segments(d.segments) for d in docs])):
        ids = seq.ids.tolist()
        assert ids[1] == v.user and ids[-2:] == [v.eot, v.eos]
        assert ids.count(v.user) == ids.count(v.assistant) == ids.count(v.eot) // 2 >= 1
        if any(r["kind"] == "unconditional" for r in doc.meta["requests"]):
            assert ids[:4] == [v.bos, v.user, v.eot, v.assistant]
    with pytest.raises(ConfigError, match="turn part"):
        Part("turn", "system")
    small = UnifiedVocab(text_size=v.text_size, image_codebook=16, audio_levels=2, audio_codebook=8, num_special=8)
    old = Tokenizers(vocab=small, text=tk.text, image=tk.image, audio=tk.audio)
    with pytest.raises(ConfigError, match="num_special >= 10"):
        SequenceEncoder(old).encode([Part("turn", "user"), Part("text", "hi")])


def test_manifest_turn_segments(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"segments": [{"turn": "user"}, {"text": "hi"}, {"turn": "end"}]}) + "\n")
    doc = next(iter_documents(path))
    assert [s.kind for s in doc.segments] == ["turn", "text", "turn"] and doc.segments[2].turn == "end"
    path.write_text(json.dumps({"segments": [{"turn": "system"}]}) + "\n")
    with pytest.raises(DataError, match="turn"):
        next(iter_documents(path))


@pytest.mark.parametrize("task", G.EVAL_TASKS)
def test_eval_cases_are_reserved_and_read_back(task):
    for i in range(60):
        case = G.sample_eval_case(task, np.random.default_rng([12345, i]))
        if task == "out_of_scope":
            assert parse(case["request"]).out_of_scope == case["out_of_scope"]
        elif task == "followup":
            assert parse_edit(case["request"]) == case["edit"]
            assert same_meaning(case["first_request"], case["first"])
        elif task != "caption":
            assert same_meaning(case["request"], case["truth"]), case
        if task == "reserved_combination":
            assert G.reserved_combinations(case["truth"][0])
    with pytest.raises(DataError, match="eval task"):
        G.sample_eval_case("poetry", np.random.default_rng(0))


def test_overlap_report_checks_the_corpus_seed(chat_corpus):
    assert G.reserved_overlap(chat_corpus, eval_seeds=[11])["eval_seed_used"]
    report = G.reserved_overlap(chat_corpus, eval_seeds=[12345])
    assert report["corpus_seed"] == 11 and report["clean"]
