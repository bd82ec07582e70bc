import json
import types

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from chameleon_lite.generate.document import Document, detokenize, split_spans
from chameleon_lite.tokenizers.text import TextTokenizer
from chameleon_lite.vocab import UnifiedVocab


class FakeImage:
    tokens_per_image = 4
    grid = (2, 2)

    def decode(self, codes):
        return np.repeat(np.repeat(codes.numpy().astype(np.uint8)[..., None], 3, -1), 4, 1).repeat(4, 2)


class FakeAudio:
    sample_rate = 8000

    def decode(self, codes):
        return np.sin(np.arange(codes.shape[1] * 80) / 5.0).astype(np.float32) * 0.5


def bundle():
    text = TextTokenizer.train(["hello world, a red circle"] * 20, vocab_size=280, progress=False)
    vocab = UnifiedVocab(text_size=text.vocab_size, image_codebook=16, audio_levels=2, audio_codebook=8)
    return types.SimpleNamespace(vocab=vocab, text=text, image=FakeImage(), audio=FakeAudio())


def test_split_and_write(tmp_path):
    tk = bundle()
    v = tk.vocab
    hello = v.text_to_unified(tk.text.encode("hello ")).tolist()
    world = v.text_to_unified(tk.text.encode("world")).tolist()
    img = [v.image_offset + c for c in (1, 2, 3, 4)]
    aud = v.audio_to_unified(torch.tensor([[1, 2, 3], [4, 5, 6]])).tolist()
    ids = [v.bos] + hello + [v.boi] + img + [v.eoi] + world + [v.boa] + aud + [v.eoa] + [v.eos] + [v.pad] * 3
    spans = split_spans(ids, v)
    assert [s.kind for s in spans] == ["text", "image", "text", "audio"]
    detokenize(spans, tk)
    doc = Document(spans=spans, ids=ids, settings={"seed": 1}, timings={"decode_s": 0.1})
    assert doc.text == "hello world"
    doc.save(str(tmp_path / "doc"))
    meta = json.load(open(tmp_path / "doc" / "document.json"))
    assert [s["kind"] for s in meta["segments"]] == ["text", "image", "text", "audio"]
    assert np.asarray(Image.open(tmp_path / "doc" / "image_000.png")).shape == (8, 8, 3)
    wav, sr = sf.read(tmp_path / "doc" / "audio_000.wav")
    assert sr == 8000 and len(wav) == 240 and sf.info(tmp_path / "doc" / "audio_000.wav").subtype == "PCM_16"
    page = open(tmp_path / "doc" / "document.html").read()
    assert "<audio controls" in page and "<img" in page
    assert "image_000.png" in open(tmp_path / "doc" / "document.md").read()


def test_truncated_spans_are_marked_not_decoded():
    tk = bundle()
    v = tk.vocab
    ids = [v.boi, v.image_offset, v.image_offset]
    spans = detokenize(split_spans(ids, v), tk)
    assert len(spans) == 1 and spans[0].kind == "image" and not spans[0].complete and spans[0].image is None
