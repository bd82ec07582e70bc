"""Conversations: a prompt as a user turn, answers that end at <eot>, guidance against the empty user turn, saved
conversations continued with --history, and the interactive `chat` command."""

import builtins
import json
import os

import numpy as np
import pytest
import torch
from toy import toy_model, toy_tokenizers

from chameleon_lite.cli import main
from chameleon_lite.errors import ConfigError, UserError
from chameleon_lite.generate import GenerationConfig, Generator, Prompt, SamplingSettings, close_turn, load_history
from chameleon_lite.generate.document import split_spans
from chameleon_lite.generate.engine import input_spans, write_sampling_defaults
from chameleon_lite.generate.state_machine import ModalityStateMachine
from chameleon_lite.model.io import save_model_dir

FP32 = dict(dtype="fp32")
GREEDY = dict(
    text=SamplingSettings(temperature=0), image=SamplingSettings(temperature=0), audio=SamplingSettings(temperature=0)
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tk = toy_tokenizers(audio=False)
    root = tmp_path_factory.mktemp("chatmodel")
    tk.text.save(str(root / "tok"))
    tk.image.save(str(root / "tok"))
    d = save_model_dir(toy_model(tk.vocab, seed=1), tk.vocab, str(root / "tok"), str(root / "model"))
    write_sampling_defaults(d, {"text": {"temperature": 0.0}, "image": {"temperature": 0.0}}, fmt="chat")
    return d


def _logits(gen, seq, spans=None):
    t = torch.tensor(seq)[None]
    sp = torch.zeros_like(t, dtype=torch.int32) if spans is None else torch.tensor(spans, dtype=torch.int32)[None]
    with torch.no_grad():
        return gen.model(t, torch.arange(t.shape[1])[None], torch.zeros_like(t, dtype=torch.int32), sp)[0].float()


def test_a_chat_prompt_is_a_user_turn(gen):
    v = gen.vocab
    ids, spans = gen.encode_prompt(Prompt(text="draw a red circle", chat=True))
    assert ids[:2] == [v.bos, v.user] and ids[-2:] == [v.eot, v.assistant]
    assert gen.tokenizers.text.decode(v.unified_to_text(ids[2:-2]).tolist()) == "draw a red circle"
    img = np.full((16, 16, 3), 90, np.uint8)
    ids, spans = gen.encode_prompt(Prompt(text="what is this?", images=[img], chat=True))
    body = [i for i, s in enumerate(spans) if s]
    assert ids[body[0] - 1] == v.boi and ids[body[-1] + 1] == v.eoi  # the input picture is read both ways
    empty, _ = gen.encode_prompt(Prompt(chat=True))
    assert empty == [v.bos, v.user, v.eot, v.assistant]  # the unconditional turn of the corpus
    hist = ids + [v.boi] + [v.image_offset] * gen.image_tokens + [v.eoi, v.eot]
    more, more_spans = gen.encode_prompt(Prompt(text="again", chat=True, history=hist))
    assert more[: len(hist)] == hist and more[len(hist)] == v.user
    assert more_spans[: len(hist)] == input_spans(hist, v)  # the user's picture in the history stays an input
    assert max(more_spans[: len(hist)]) == 1 and more_spans[len(hist) - gen.image_tokens - 2] == 0  # not the answer
    with pytest.raises(ConfigError, match="chat=True"):
        Prompt(text="x", history=[1, 2])
    with pytest.raises(ConfigError, match="not ids"):
        Prompt(ids=[1, 2], chat=True)


def test_state_machine_turns(tk):
    v = tk.vocab
    sm = ModalityStateMachine(v, 4, 2, 50)
    sm.set_conversation(0)
    turn = [v.bos, v.user, v.text_offset + 3, v.eot, v.assistant]
    sm.feed_prompt(0, turn)  # earlier turns and the open assistant turn
    with pytest.raises(UserError, match="not allowed"):
        sm.feed_prompt(1, turn)  # a plain row has no turns
    allowed = sm.allowed_ranges()[0].tolist()
    ok = lambda t: any(lo <= t < hi for lo, hi in allowed)  # noqa: E731
    assert ok(v.eot) and not ok(v.user) and not ok(v.assistant)  # the answer may end its turn, never open one
    assert not any(lo <= v.eot < hi for lo, hi in sm.allowed_ranges()[1].tolist())
    sm.advance(torch.tensor([v.eot, v.eos]))
    assert sm.done().tolist() == [True, True]


def test_greedy_chat_answer_matches_full_forward_and_ends_at_eot(gen):
    v = gen.vocab
    cfg = GenerationConfig(max_new_tokens=40, **GREEDY, **FP32)
    for p in (Prompt(text="Draw a red", chat=True), Prompt(text="x", chat=True, then="image")):
        d = gen.generate(p, cfg)[0]
        assert v.user not in d.ids and v.assistant not in d.ids
        assert d.settings["finish_reason"] in ("eot", "eos", "length") and d.settings["chat"]
        if d.settings["finish_reason"] == "eot":
            assert d.ids[-1] == v.eot
        sm = ModalityStateMachine(v, gen.image_tokens, 1, 40)
        sm.set_conversation(0)
        sm.feed_prompt(0, d.prompt_ids)
        full = _logits(gen, d.prompt_ids + d.ids)
        for i, t in enumerate(d.ids):
            ranges, forced = sm.allowed_ranges()[0], int(sm.forced()[0])
            keep = torch.zeros(v.size, dtype=torch.bool)
            for lo, hi in ranges.tolist():
                keep[lo:hi] = True
            row = full[len(d.prompt_ids) + i - 1]
            want = forced if forced >= 0 else int(torch.where(keep, row, torch.tensor(-1e30)).argmax())
            assert t == want, f"step {i}"
            sm.advance(torch.tensor([t]))


def test_a_model_that_ends_its_turn(tk):
    """A model whose <eot> logit dominates answers nothing and ends the turn: finish_reason eot."""
    model = toy_model(tk.vocab, seed=4)

    for name in ("prefill", "decode_step"):
        inner = getattr(model, name)

        def favour_eot(*a, _inner=inner, **k):
            out = _inner(*a, **k).clone()
            out[..., tk.vocab.eot] += 100.0
            return out

        setattr(model, name, favour_eot)
    d = Generator(model, tk).generate(Prompt(text="hi", chat=True), GenerationConfig(max_new_tokens=9, **FP32))[0]
    assert d.ids == [tk.vocab.eot] and d.settings["finish_reason"] == "eot" and d.reply == ""


def test_chat_guidance_uses_the_empty_user_turn(gen):
    """With CFG in a conversation, the unconditional row holds <bos><user><eot><assistant> + the open span."""
    s, v = 2.5, gen.vocab
    cfg = GenerationConfig(max_new_tokens=gen.image_tokens + 2, image=SamplingSettings(temperature=0, cfg_scale=s))
    d = gen.generate(
        Prompt(text="a red circle", chat=True, then="image"), GenerationConfig(**{**cfg.__dict__, **FP32})
    )[0]
    img = d.ids[: gen.image_tokens]
    lo, hi = v.image_range()
    for i, tok in enumerate(img):
        cond = _logits(gen, d.prompt_ids + img[:i])[-1]
        unc = _logits(gen, [v.bos, v.user, v.eot, v.assistant, v.boi] + img[:i])[-1]
        assert tok == lo + int((unc + s * (cond - unc))[lo:hi].argmax())


def test_document_roles_and_history_round_trip(gen, tmp_path):
    v = gen.vocab
    cfg = GenerationConfig(max_new_tokens=gen.image_tokens + 6, **GREEDY, **FP32)
    d = gen.generate(Prompt(text="draw", chat=True, then="image"), cfg)[0]
    roles = [(s.kind, s.role, s.from_prompt) for s in d.spans]
    assert roles[0] == ("text", "user", True) and ("image", "assistant", False) in roles
    out = d.save(str(tmp_path / "t1"))
    md = open(os.path.join(out, "document.md")).read()
    assert "**user:**" in md and "**assistant:**" in md
    if d.settings["finish_reason"] == "length":
        with pytest.raises(UserError, match="cut off"):
            load_history(out, v)
        return
    hist = load_history(out, v)
    assert hist == close_turn(d.conversation, v) and hist[-1] == v.eot
    d2 = gen.generate(Prompt(text="now blue", chat=True, history=hist), cfg)[0]
    assert d2.prompt_ids[: len(hist)] == hist
    assert [s.role for s in split_spans(d2.prompt_ids, v) if s.kind == "text"][-1] == "user"


def test_history_refusals(gen, tmp_path):
    v = gen.vocab
    plain = gen.generate(Prompt(text="x"), GenerationConfig(max_new_tokens=3, **FP32))[0].save(str(tmp_path / "p"))
    with pytest.raises(UserError, match="not a conversation"):
        load_history(plain, v)
    chat = gen.generate(Prompt(text="x", chat=True), GenerationConfig(max_new_tokens=1, **FP32))[0]
    path = chat.save(str(tmp_path / "c"))
    meta = json.load(open(os.path.join(path, "document.json")))
    cases = {
        "written with vocabulary": {**meta, "settings": {**meta["settings"], "vocab_hash": "0000"}},
        "cut off": {**meta, "settings": {**meta["settings"], "finish_reason": "length"}},
        "lists of integers": {**meta, "ids": ["a"]},
        "outside the valid range": {**meta, "settings": {**meta["settings"], "finish_reason": "eot"}, "ids": [10**6]},
        "not a document": {"settings": {}},
    }
    for msg, bad in cases.items():
        p = tmp_path / f"bad_{len(msg)}.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=msg):
            load_history(str(p), v)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_history(str(tmp_path / "junk.json"), v)
    with pytest.raises(UserError, match="not found"):
        load_history(str(tmp_path / "none"), v)


def test_generate_command_chat_plain_and_history(model_dir, tmp_path, capsys):
    base = ["generate", "--model", model_dir, "--max-new-tokens", "30", "--dtype", "fp32", "--quiet"]
    one = str(tmp_path / "one")
    assert main(base + ["--prompt", "draw a red circle", "--out", one]) == 0  # the model's format: chat
    first = json.load(open(os.path.join(one, "document.json")))
    assert first["settings"]["chat"] and "--history" in capsys.readouterr().out
    plain = str(tmp_path / "plain")
    assert main(base + ["--prompt", "draw", "--plain", "--out", plain]) == 0
    assert not json.load(open(os.path.join(plain, "document.json")))["settings"]["chat"]
    two = str(tmp_path / "two")
    rc = main(base + ["--history", one, "--prompt", "now make it blue", "--out", two])
    if first["settings"]["finish_reason"] == "length":
        assert rc == 1 and "cut off" in capsys.readouterr().err
    else:
        assert rc == 0
        second = json.load(open(os.path.join(two, "document.json")))
        assert second["prompt_ids"][: len(first["prompt_ids"])] == first["prompt_ids"]
    assert main(base + ["--history", one, "--plain", "--prompt", "x", "--out", two]) == 1
    assert "cannot be combined" in capsys.readouterr().err
    assert main(base + ["--history", str(tmp_path / "nowhere"), "--out", two]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--history", plain, "--out", two]) == 1
    assert "not a conversation" in capsys.readouterr().err


def test_chat_command(model_dir, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "talk")

    def talk(lines):
        feed = iter(lines)

        def fake_input(prompt=""):
            try:
                return next(feed)
            except StopIteration:
                raise EOFError from None

        monkeypatch.setattr(builtins, "input", fake_input)
        return main(["chat", "--model", model_dir, "--out", out, "--max-new-tokens", "30", "--dtype", "fp32"])

    assert talk(["hello", "/image " + str(tmp_path / "missing.png"), "/what", "", "draw a circle"]) == 0
    said = capsys.readouterr().out
    assert "missing.png" in said and "unknown command /what" in said and "model> " in said
    assert sorted(os.listdir(out)) == ["turn_000", "turn_001"]
    t1 = json.load(open(os.path.join(out, "turn_001", "document.json")))
    t0 = json.load(open(os.path.join(out, "turn_000", "document.json")))
    if t0["settings"]["finish_reason"] != "length":  # the second turn goes on from the first
        assert t1["prompt_ids"][: len(t0["prompt_ids"])] == t0["prompt_ids"]
    assert talk(["/new", "again", "/quit", "never read"]) == 0
    assert "going on with the conversation" in capsys.readouterr().out
    t2 = json.load(open(os.path.join(out, "turn_002", "document.json")))
    assert t2["prompt_ids"][:2] == [1, 7]  # /new: a fresh conversation (<bos> <user>)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    monkeypatch.setattr(builtins, "input", lambda p="": "hi")
    assert main(["chat", "--model", model_dir, "--out", str(tmp_path / "other")]) == 1
    assert "not a chat transcript" in capsys.readouterr().err


def test_generation_json_format(model_dir, tmp_path):
    assert Generator.from_dir(model_dir).format == "chat"
    with pytest.raises(ConfigError, match="format must be one of"):
        write_sampling_defaults(str(tmp_path), {}, fmt="poem")
    path = os.path.join(model_dir, "generation.json")
    saved = open(path).read()
    try:
        open(path, "w").write(json.dumps({"format": "dialogue"}))
        with pytest.raises(ConfigError, match="format must be one of"):
            Generator.from_dir(model_dir)
    finally:
        open(path, "w").write(saved)
    write_sampling_defaults(model_dir, {"text": {"temperature": 0.0}, "image": {"temperature": 0.0}})  # keeps chat
    assert json.load(open(path))["format"] == "chat"
