"""Cross-modal attention maps: the probabilities are the attention the model runs, the maps land where the
sequence allows, the report and the coverage measurement are written, and bad requests get one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from chameleon_lite import ops
from chameleon_lite.cli import main
from chameleon_lite.explain.maps import (
    MediaSpan,
    Word,
    coverage_share,
    grid_coverage,
    media_spans,
    on_grid,
    per_frame,
    word_map,
    words_of,
)
from chameleon_lite.model.config import preset
from chameleon_lite.model.transformer import build_model
from chameleon_lite.ops.attention import modality_attention_reference


def test_probabilities_times_values_are_the_attention_output():
    """Packed documents of ragged lengths, a bidirectional span, GQA 2:1."""
    g = torch.Generator().manual_seed(0)
    B, L, Hq, Hkv, D = 2, 13, 4, 2, 8
    q, k, v = (torch.randn(B, L, h, D, generator=g) for h in (Hq, Hkv, Hkv))
    doc = torch.tensor([[0] * 5 + [1] * 8, [0] * 13], dtype=torch.int32)
    span = torch.zeros(B, L, dtype=torch.int32)
    span[1, 3:7] = 1
    p = ops.modality_attention_probs(q, k, doc, span)
    assert p.shape == (B, Hq, L, L)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.repeat_interleave(2, dim=2))
    torch.testing.assert_close(out, modality_attention_reference(q, k, v, doc, span), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.sum(-1), torch.ones(B, Hq, L))
    assert float(p[0, :, 6, :5].abs().sum()) == 0  # no reading across documents
    assert bool((p[1, :, 3, 6] > 0).all())  # inside the bidirectional span a token reads ahead


def test_model_attention_probs_leave_the_forward_unchanged():
    m = build_model(preset("debug"), seed=0).eval()
    ids = torch.randint(0, 1000, (1, 20))
    pos, z = torch.arange(20).unsqueeze(0), torch.zeros(1, 20, dtype=torch.int32)
    logits, probs = m.attention_probs(ids, pos, z, z)
    with torch.no_grad():
        torch.testing.assert_close(logits, m(ids, pos, z, z))
    assert len(probs) == 4 and probs[0].shape == (1, 4, 20, 20)
    assert torch.equal(probs[0][0, 0].triu(1), torch.zeros(20, 20))  # causal
    assert all(b.attention.probs is None for b in m.layers.values())  # recording is off again


def test_word_maps_take_the_direction_the_sequence_allows():
    probs = [torch.rand(2, 10, 10).tril() for _ in range(3)]
    span = MediaSpan("image", 2, 6, 0)
    after, before = Word("circle", (7, 8)), Word("draw", (1,))
    m, d = word_map(probs, after, span)
    assert d == "reads" and m.shape == (3, 4)
    assert np.allclose(m[0], probs[0][:, [7, 8], 2:6].mean(dim=(0, 1)).numpy())
    m, d = word_map(probs, before, span)
    assert d == "read by" and np.allclose(m[1], probs[1][:, 2:6, 1].mean(0).numpy())
    with pytest.raises(ValueError, match="inside"):
        word_map(probs, Word("x", (3,)), span)


def test_grids_frames_and_the_coverage_share():
    assert on_grid(np.arange(4.0), (2, 2)).tolist() == [[0, 1], [2, 3]]
    assert on_grid(np.ones(3), (2, 2))[1, 1] == 0  # a span cut short: the missing cells are zero
    assert per_frame(np.arange(6.0), 2).tolist() == [1, 5, 9]
    cov = grid_coverage(np.pad(np.ones((4, 4)), ((0, 4), (0, 4))), (2, 2))
    assert cov.tolist() == [[1, 0], [0, 0]]
    assert coverage_share(np.ones((2, 2)), cov) == (0.25, 0.25)  # uniform attention: the uniform share
    assert coverage_share(np.array([[3.0, 0], [0, 0]]), cov)[0] == 1.0


def test_media_spans_and_words_on_the_shipped_model():
    from chameleon_lite.generate import Generator, Prompt

    gen = Generator.from_dir(os.path.join(os.path.dirname(ops.__file__), "..", "assets", "demo_model"))
    ids, spans = gen.encode_prompt(Prompt(text="a large red circle", then="image"))
    ids = ids + gen.vocab.image_to_unified(torch.zeros(gen.image_tokens, dtype=torch.int64)).tolist()
    (span,) = media_spans(ids, gen.vocab)
    assert span.kind == "image" and span.end - span.start == gen.image_tokens
    words = words_of(ids, gen.vocab, gen.tokenizers.text)
    assert [w.text for w in words] == ["a", "large", "red", "circle"]
    assert words_of(ids, gen.vocab, gen.tokenizers.text, ["circle"])[0].positions == words[-1].positions


def test_explain_command_writes_maps_for_a_picture_and_a_clip(tmp_path, capsys):
    out = tmp_path / "pic"
    assert main(["explain", "--prompt", "a large red circle at the top left", "--then", "image",
                 "--max-new-tokens", "80", "--out", str(out)]) == 0  # fmt: skip
    d = json.loads((out / "explain.json").read_text())
    assert [m["word"] for m in d["maps"]] == ["large", "red", "circle", "top", "left"]
    assert all((out / m["png"]).exists() and m["direction"] == "read by" for m in d["maps"])
    assert "circle" in (out / "report.html").read_text()
    clip = tmp_path / "clip"
    assert main(["explain", "--prompt", "play C5 on a sine wave", "--then", "audio", "--words", "sine",
                 "--max-new-tokens", "60", "--out", str(clip)]) == 0  # fmt: skip
    (m,) = json.loads((clip / "explain.json").read_text())["maps"]
    assert m["span"] == "audio0" and (clip / m["png"]).exists()


def test_measure_writes_shares_against_the_uniform_baseline(tmp_path):
    assert main(["explain", "--measure", "4", "--seed", "3", "--out", str(tmp_path / "m")]) == 0
    d = json.loads((tmp_path / "m" / "explain.json").read_text())
    for direction in ("reads", "read by"):
        r = d["directions"][direction]
        assert r["words"] > 0 and len(r["share"]) == 9 and 0 < r["uniform"][-1] < 1
    assert (tmp_path / "m" / "measure.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "{o}"], "give --prompt"),
        (["--prompt", "a red circle", "--then", "image", "--max-new-tokens", "0", "--out", "{o}"],
         "no picture or clip"),
        (["--prompt", "a red circle", "--then", "image", "--words", "zebra", "--max-new-tokens", "70", "--out", "{o}"],
         "none of the words"),
    ],
)  # fmt: skip
def test_bad_requests_get_one_line(tmp_path, capsys, argv, message):
    assert main(["explain", *[a.replace("{o}", str(tmp_path / "o")) for a in argv]]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_folder_not_ours_is_never_replaced(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert main(["explain", "--measure", "1", "--out", str(tmp_path / "o")]) == 1
    assert "is not an attention-map report" in capsys.readouterr().err
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"
