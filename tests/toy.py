"""Small, fast stand-ins for tests: a trained toy BPE, an untrained small image VQ tokenizer, a toy audio codec
with the AudioTokenizer interface, and a random-weight model over their vocabulary."""

from __future__ import annotations

import numpy as np
import torch

from chameleon_lite.data.audio_files import load_audio
from chameleon_lite.tokenizers.image import ImageTokenizer, ImageVQModel, preset
from chameleon_lite.tokenizers.loader import Tokenizers
from chameleon_lite.tokenizers.text import TextTokenizer
from chameleon_lite.vocab import UnifiedVocab

SMALL_IMAGE = dict(image_size=16, channels=(8, 8, 8), dec_channels=(8, 8, 8), codebook_size=16, codebook_dim=4)
TEXTS = [
    "Draw a large red circle at the top left.",
    "A small blue square in the middle.",
    "Play C4 then E4 with a sine.",
    "The picture shows a green triangle.",
] * 20


class ToyAudio:
    """One frame per 320 samples at 16 kHz, two levels of 8 codes; decode makes a tone per frame."""

    num_levels, codebook_size, sample_rate, frame_rate = 2, 8, 16000, 50

    def encode(self, value):
        # files go through the library's reader, so bad files raise the errors the real codec raises
        x = load_audio(value, self.sample_rate)[0] if isinstance(value, str) else np.asarray(value, np.float32)
        frames = len(x) // 320
        q = (np.abs(x[: frames * 320]).reshape(frames, 320).mean(1) * 1000).astype(np.int64)
        return torch.from_numpy(np.stack([q % 8, (q // 8) % 8]))

    def decode(self, codes):
        codes = torch.as_tensor(codes)
        t = np.arange(320) / 16000.0
        return np.concatenate([0.1 * np.sin(2 * np.pi * (200 + 50 * int(c)) * t) for c in codes[0]]).astype(np.float32)


def small_image_tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    model = ImageVQModel(preset("tiny", **SMALL_IMAGE)).train()
    with torch.no_grad():  # one training-mode pass runs the k-means initialisation of the codebook
        model(torch.rand(8, 3, 16, 16) * 2 - 1)
    return ImageTokenizer(model.eval(), autocast=None)


def toy_tokenizers(texts=TEXTS, audio: bool = True) -> Tokenizers:
    text = TextTokenizer.train(iter(texts), vocab_size=300, progress=False)
    image = small_image_tokenizer()
    vocab = UnifiedVocab(
        text_size=text.vocab_size, image_codebook=16, audio_levels=2 if audio else 0, audio_codebook=8 if audio else 0
    )
    return Tokenizers(vocab=vocab, text=text, image=image, audio=ToyAudio() if audio else None)


def toy_model(vocab: UnifiedVocab, seed: int = 0, **overrides):
    from chameleon_lite.model.config import preset as model_preset
    from chameleon_lite.model.transformer import build_model

    cfg = model_preset(
        "debug",
        vocab_size=vocab.size,
        vocab_hash=vocab.hash,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=128,
        max_seq_len=256,
        **overrides,
    )
    return build_model(cfg, seed=seed).eval()
