"""The research benches' arithmetic: the scaling law fit recovers a known law, and the dense-vs-untied comparison
finds the step at which a curve reaches a target."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from scaling_ladder import fit_interaction, fit_law, modality_documents, rung_config, write_corpora  # noqa: E402
from untied_vs_dense import first_step_at  # noqa: E402


def test_the_law_fit_recovers_known_exponents():
    law = dict(E=0.5, A=40.0, alpha=0.35, B=300.0, beta=0.3)
    points = [
        (n, d, law["E"] + law["A"] * n ** -law["alpha"] + law["B"] * d ** -law["beta"])
        for n in (5e4, 2e5, 6e5, 2e6, 5e6)
        for d in (1e5, 3e5, 1e6, 3e6)
    ]
    fit = fit_law(points)
    assert fit["rms_relative_error"] < 1e-3
    assert math.isclose(fit["alpha"], 0.35, abs_tol=0.03) and math.isclose(fit["beta"], 0.3, abs_tol=0.03)


def test_rungs_and_the_step_at_a_target():
    assert rung_config("256x6") == {"dim": 256, "n_layers": 6, "n_heads": 4, "n_kv_heads": 4, "ffn_dim": 704}
    curve = [(0, 3.0), (100, 2.0), (200, 1.0)]
    assert first_step_at(curve, 1.5) == 150.0
    assert first_step_at(curve, 0.5) is None and first_step_at(curve, 4.0) == 0.0


def test_the_interaction_fit_recovers_a_sign_change():
    ns = [5e4, 2e5, 6e5, 2e6, 5e6]
    fit = fit_interaction(ns, [-0.05 + 20.0 * n**-0.5 for n in ns])
    assert fit["rms_error"] < 1e-3 and math.isclose(fit["alpha"], 0.5, abs_tol=0.02)
    assert math.isclose(fit["C"], 0.05, rel_tol=0.05) and math.isclose(fit["crossover_params"], 1.6e5, rel_tol=0.1)


@pytest.fixture
def vocab():
    from chameleon_lite.vocab import UnifiedVocab

    return UnifiedVocab(text_size=50, image_codebook=16, audio_codebook=8, audio_levels=2)


def test_a_document_splits_into_its_modalities(vocab):
    v = vocab
    t, i, a = v.text_offset, v.image_offset, v.audio_offset
    doc = np.array([v.bos, t + 1, t + 2, v.boi, i, i + 1, v.eoi, t + 3, v.boa, a, a + 9, v.eoa, v.eos])
    parts = modality_documents(doc, v)
    assert parts["text"].tolist() == [v.bos, t + 1, t + 2, t + 3, v.eos]
    assert parts["image"].tolist() == [v.bos, v.boi, i, i + 1, v.eoi, v.eos]
    assert parts["audio"].tolist() == [v.bos, v.boa, a, a + 9, v.eoa, v.eos]
    # a picture alone: no text document (specials are not text to learn); an unclosed span runs to the end
    only = modality_documents(np.array([v.bos, v.boi, i, i + 2]), v)
    assert set(only) == {"image"} and only["image"].tolist() == [v.bos, v.boi, i, i + 2, v.eos]


def test_the_mixture_holds_equal_tokens_of_both_modalities(vocab, tmp_path):
    from chameleon_lite.data.shards import ShardSet, ShardWriter

    v = vocab
    t, i = v.text_offset, v.image_offset
    for split in ("train", "val"):
        with ShardWriter(str(tmp_path / "src" / split), v) as w:
            for k in range(12):  # 3 text tokens and 12 image tokens (+ markers) each
                w.add(np.array([v.bos, t + k % 5, t + 1, t + 2, v.boi, *([i + k % 16] * 12), v.eoi, v.eos]), [])
    folders = write_corpora(str(tmp_path / "src" / "train"), str(tmp_path / "src" / "val"), str(tmp_path / "c"),
                            [("text", "image")])  # fmt: skip
    assert set(folders) == {"text", "image", "text+image"}
    uni_text, uni_image = (
        ShardSet(os.path.join(folders["text"], "train")),
        ShardSet(os.path.join(folders["image"], "train")),
    )
    assert len(uni_text) == len(uni_image) == 12 and uni_text.n_tokens == 12 * 5 and uni_image.n_tokens == 12 * 16
    mix = ShardSet(os.path.join(folders["text+image"], "train"))
    assert mix.meta["repeats"] == {"text": 3, "image": 1}  # 60 text tokens x 3 ~ 192 image tokens
    lengths = sorted(mix.doc_lengths.tolist())
    assert lengths == [5] * 36 + [16] * 12
    assert len(ShardSet(os.path.join(folders["text+image"], "val"))) == 24  # validation: each side once
