import json
import os

import pytest
import torch

from chameleon_lite.tokenizers.text import TextTokenizer
from chameleon_lite.vocab import AUDIO, IMAGE, TEXT, UnifiedVocab, VocabError, classify_ids


@pytest.fixture
def vocab():
    return UnifiedVocab(text_size=500, image_codebook=64, audio_levels=4, audio_codebook=32)


def test_layout(vocab):
    assert vocab.text_offset == 16
    assert vocab.image_offset == 16 + 500
    assert vocab.audio_offset == 16 + 500 + 64
    assert vocab.size == vocab.audio_offset + 4 * 32
    assert [vocab.pad, vocab.bos, vocab.eos, vocab.boi, vocab.eoi, vocab.boa, vocab.eoa] == list(range(7))
    assert vocab.special_id("<boi>") == vocab.boi
    assert vocab.audio_level_range(2) == (vocab.audio_offset + 64, vocab.audio_offset + 96)


def layout(v: UnifiedVocab) -> tuple[int, int, int, int, int]:
    return v.text_offset, v.image_offset, v.audio_offset, v.audio_codebook, v.size


def expected(v: UnifiedVocab, i: int) -> tuple[int, int, int]:
    """(modality, local, level) of one id, read off the layout (ARCHITECTURE §3)."""
    if i >= v.audio_offset:
        return AUDIO, (i - v.audio_offset) % v.audio_codebook, (i - v.audio_offset) // v.audio_codebook
    if i >= v.image_offset:
        return IMAGE, i - v.image_offset, -1
    return TEXT, i - v.text_offset if i >= v.text_offset else i, -1


@pytest.mark.parametrize(
    "sizes",
    [
        dict(text_size=500, image_codebook=64, audio_levels=4, audio_codebook=32),
        dict(text_size=0, image_codebook=0, audio_levels=0, audio_codebook=0),  # specials only
        dict(text_size=5, image_codebook=0, audio_levels=2, audio_codebook=3),  # no image range
        dict(text_size=5, image_codebook=4, audio_levels=0, audio_codebook=32),  # no audio range
        dict(text_size=0, image_codebook=4, audio_levels=1, audio_codebook=1, num_special=9),
    ],
)
def test_classify_every_id_of_a_layout(sizes):
    v = UnifiedVocab(**sizes)
    ids = torch.arange(v.size)
    want = torch.tensor([expected(v, i) for i in range(v.size)], dtype=torch.int64).reshape(-1, 3)
    for mod, local, level in (v.classify(ids), classify_ids(ids, *layout(v))):
        assert (mod.dtype, local.dtype, level.dtype) == (torch.int8, torch.int64, torch.int64)
        assert torch.equal(torch.stack([mod.long(), local, level], dim=1), want)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16, torch.uint8])
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 13), (3, 1000)])
def test_classify_keeps_shape_for_each_integer_dtype(vocab, dtype, shape):
    hi = min(vocab.size, torch.iinfo(dtype).max + 1)
    ids = torch.randint(0, hi, shape).to(dtype)
    got = classify_ids(ids, *layout(vocab))
    want = vocab.classify(ids.long())
    for g, w in zip(got, want):
        assert g.shape == ids.shape and torch.equal(g, w)


def test_classify_ranges(vocab):
    ids = torch.tensor(
        [0, 6, 16, vocab.image_offset - 1, vocab.image_offset, vocab.audio_offset, vocab.audio_offset + 32 * 3 + 5]
    )
    mod, local, level = vocab.classify(ids)
    assert mod.tolist() == [TEXT, TEXT, TEXT, TEXT, IMAGE, AUDIO, AUDIO]
    assert local.tolist() == [0, 6, 0, 499, 0, 0, 5]
    assert level.tolist() == [-1, -1, -1, -1, -1, 0, 3]


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_out_of_range_names_id_and_range(vocab, bad):
    with pytest.raises(VocabError, match=rf"{bad}.*\[0, {vocab.size}\)"):
        vocab.classify(torch.tensor([3, bad]))
    with pytest.raises(VocabError, match=rf"token id {bad} is outside the valid range \[0, {vocab.size}\)"):
        classify_ids(torch.tensor([3, bad, 5]), *layout(vocab))


def test_classify_rejects_bad_input(vocab):
    for bad in (torch.tensor([1.0, 2.0]), torch.tensor([True])):
        with pytest.raises(VocabError, match="integer tensor"):
            vocab.classify(bad)
        with pytest.raises(VocabError, match="integer tensor"):
            classify_ids(bad, *layout(vocab))
    text, image, audio, k, size = layout(vocab)
    with pytest.raises(VocabError, match="offsets"):
        classify_ids(torch.tensor([1]), image, text, audio, k, size)
    with pytest.raises(VocabError, match="audio_codebook"):
        classify_ids(torch.tensor([1]), text, image, audio, 0, size)


def test_conversions_roundtrip(vocab):
    codes = torch.randint(0, 64, (2, 4, 4))
    assert torch.equal(vocab.unified_to_image(vocab.image_to_unified(codes)), codes)
    t = torch.randint(0, 500, (20,))
    assert torch.equal(vocab.unified_to_text(vocab.text_to_unified(t)), t)
    a = torch.randint(0, 32, (4, 9))
    flat = vocab.audio_to_unified(a)
    assert flat.shape == (36,)
    # frame-major: first frame's levels 0..3 come first
    assert vocab.classify(flat[:4])[2].tolist() == [0, 1, 2, 3]
    assert torch.equal(vocab.unified_to_audio(flat), a)


def test_audio_validation(vocab):
    flat = vocab.audio_to_unified(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(VocabError, match="whole number of frames"):
        vocab.unified_to_audio(flat[:-1])
    swapped = flat.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    with pytest.raises(VocabError, match="expected level 0"):
        vocab.unified_to_audio(swapped)
    with pytest.raises(VocabError, match="outside the valid range"):
        vocab.unified_to_audio(torch.tensor([1, 2, 3, 4]))
    with pytest.raises(VocabError, match="image code"):
        vocab.image_to_unified(torch.tensor([64]))


def test_save_load_hash(vocab, tmp_path):
    path = vocab.save(tmp_path)
    loaded = UnifiedVocab.load(tmp_path)
    assert loaded == vocab and loaded.hash == vocab.hash
    other = UnifiedVocab(text_size=501, image_codebook=64, audio_levels=4, audio_codebook=32)
    assert other.hash != vocab.hash
    d = json.load(open(path))
    d["text_size"] = 501
    json.dump(d, open(path, "w"))
    with pytest.raises(VocabError, match="hash"):
        UnifiedVocab.load(path)
    open(path, "w").write("{not json")
    with pytest.raises(VocabError, match="not valid JSON"):
        UnifiedVocab.load(path)
    with pytest.raises(VocabError, match="not found"):
        UnifiedVocab.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------- conversation specials
DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chameleon_lite", "assets", "demo_model"
)


def test_conversation_specials_name_reserved_slots(vocab):
    assert (vocab.user, vocab.assistant, vocab.eot) == (7, 8, 9)
    assert (
        vocab.conversation_ready
        and vocab.special_name(8) == "<assistant>"
        and vocab.special_name(10) == "<reserved_10>"
    )
    assert vocab.modality(torch.tensor([vocab.user, vocab.assistant, vocab.eot])).tolist() == [TEXT] * 3
    assert "<user>=7" in vocab.describe()


def test_conversation_specials_need_the_slots():
    small = UnifiedVocab(text_size=5, image_codebook=4, audio_levels=1, audio_codebook=1, num_special=8)
    assert not small.conversation_ready and small.special_id("<user>") == 7
    with pytest.raises(VocabError, match="num_special >= 9"):
        small.special_id("<assistant>")
    with pytest.raises(VocabError, match="unknown special"):
        small.special_id("<system>")


def test_naming_slots_keeps_the_layout_hash(tmp_path):
    """vocab.json and the hash cover the layout only: the shipped model's vocabulary still loads and matches."""
    stored = json.load(open(os.path.join(DEMO, "vocab.json")))
    v = UnifiedVocab.load(DEMO)
    assert v.hash == stored["hash"] == "d3ce1505d3541b0d"
    assert {**v.to_dict(), "hash": v.hash} == stored
    assert v.to_dict()["special_tokens"] == ["<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>"]
    assert v.conversation_ready and v.eot == 9
    again = UnifiedVocab.load(v.save(tmp_path))
    assert again.hash == v.hash and json.load(open(tmp_path / "vocab.json")) == stored


def test_text_never_produces_conversation_specials():
    tok = TextTokenizer.load(DEMO)
    v = UnifiedVocab.load(DEMO)
    text = "<user> hi <assistant><eot> <|user|> [INST] <bos><eos>"
    ids = v.text_to_unified(tok.encode(text))
    assert int(ids.min()) >= v.text_offset and int(ids.max()) < v.image_offset
    assert not set(ids.tolist()) & {v.user, v.assistant, v.eot, v.bos, v.eos}
