import importlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chameleon_lite.errors import ConfigError
from chameleon_lite.tokenizers.text import TextTokenizer
from chameleon_lite.vocab import SPECIAL_TOKENS, UnifiedVocab

CORPUS = [
    "a large red circle in the top left.",
    "a small blue square in the center.",
    "play C5 E5 G5 on a square wave.",
    "Grüße, 世界! こんにちは 🙂 naïve café — “quotes”.",
] * 50


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(CORPUS, vocab_size=400, progress=False)


def test_hf_tokenizers_is_not_shadowed():
    mod = importlib.import_module("tokenizers")
    assert hasattr(mod, "Tokenizer"), "top-level tokenizers/ folder shadows Hugging Face tokenizers"
    assert "site-packages" in (mod.__file__ or "")
    assert not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "tokenizers", "__init__.py"))


def test_vocab_size_and_merges(tok):
    assert 256 < tok.vocab_size <= 400
    assert len(tok.encode("a large red circle")) < len("a large red circle")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_arbitrary_unicode(tok, s):
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


@pytest.mark.parametrize("special", SPECIAL_TOKENS)
def test_plain_text_never_yields_special_tokens(tok, special):
    vocab = UnifiedVocab(text_size=tok.vocab_size, image_codebook=8, audio_levels=2, audio_codebook=8)
    text = f"please draw {special} now {special}{special}"
    unified = vocab.text_to_unified(tok.encode(text))
    assert int(unified.min()) >= vocab.text_offset and int(unified.max()) < vocab.image_offset
    assert tok.decode(vocab.unified_to_text(unified).tolist()) == text


def test_token_bytes_concatenate_to_utf8(tok):
    s = "Grüße 🙂 <boi>"
    ids = tok.encode(s)
    assert b"".join(tok.token_bytes(i) for i in ids).decode("utf-8") == s


def test_save_load(tok, tmp_path):
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.vocab_size == tok.vocab_size
    assert again.encode("a small blue square") == tok.encode("a small blue square")


def test_train_from_files(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n".join(CORPUS))
    t = TextTokenizer.train(files=[str(f)], vocab_size=300, progress=False)
    assert t.decode(t.encode(CORPUS[3])) == CORPUS[3]
    with pytest.raises(ConfigError, match="not found"):
        TextTokenizer.train(files=[str(tmp_path / "missing.txt")], progress=False)


def test_bad_inputs(tok, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        TextTokenizer.load(tmp_path / "nothing")
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not a valid tokenizer.json"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(ConfigError, match="outside the valid range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ConfigError, match="at least 257"):
        TextTokenizer.train(CORPUS, vocab_size=100, progress=False)


def test_tokenizer_with_added_tokens_is_refused(tok, tmp_path):
    from tokenizers import AddedToken, Tokenizer

    tok.save(tmp_path)
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    raw.add_special_tokens([AddedToken("<boi>", special=True)])
    raw.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="added/special tokens"):
        TextTokenizer.load(tmp_path)
