"""Modality-untied weights (Mixture-of-Transformers): each modality's tokens go through their own copies of the
chosen parts, routed by id range; attention stays global; every copy trains and exports; a dense model is unchanged."""

from __future__ import annotations

import re

import pytest
import torch

from chameleon_lite.errors import ConfigError
from chameleon_lite.model.config import preset
from chameleon_lite.model.transformer import build_model, per_modality, route_of

STARTS = dict(image_start=600, audio_start=800)


def _batch(ids: torch.Tensor):
    B, L = ids.shape
    z = torch.zeros(B, L, dtype=torch.int32)
    return ids, torch.arange(L).expand(B, L), z, z


COPY = re.compile(r"\.(wqkv|wo|q_norm|k_norm|feed_forward|attention_norm|ffn_norm)\.(\d)\.")


def _copy_of(untied_model, modality: int):
    """The dense model whose weights are ``modality``'s copies of the untied model's."""
    state = {}
    for k, v in untied_model.state_dict().items():
        hit = COPY.search(k)
        if hit is None:
            state[k] = v
        elif int(hit.group(2)) == modality:
            state[COPY.sub(r".\1.", k)] = v
    dense = build_model(preset("debug"), seed=1)
    dense.load_state_dict(state)
    return dense.eval()


@pytest.mark.parametrize("modality, lo, hi", [(0, 16, 600), (1, 600, 800), (2, 800, 1024)])
def test_a_one_modality_sequence_runs_that_modalitys_copies(modality, lo, hi):
    m = build_model(preset("debug", untied="all", **STARTS), seed=0).eval()
    ids = torch.randint(lo, hi, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(m(*_batch(ids)), _copy_of(m, modality)(*_batch(ids)), rtol=1e-5, atol=1e-5)


def test_per_modality_routes_rows_and_keeps_every_copy_in_the_graph():
    cfg = preset("debug", untied="ffn", **STARTS)
    ids = torch.tensor([[3, 700, 900, 20, 650]])
    route = route_of(ids, cfg)
    assert [r.tolist() for r in route.index] == [[0, 3], [1, 4], [2]]
    ws = [torch.nn.Linear(4, 2) for _ in range(3)]
    x = torch.randn(1, 5, 4)
    y = per_modality(ws, x, route)
    for pos, m in ((0, 0), (1, 1), (2, 2), (3, 0), (4, 1)):
        torch.testing.assert_close(y[0, pos], ws[m](x[0, pos]))
    text_only = route_of(torch.tensor([[3, 20]]), cfg)
    per_modality(ws, torch.randn(1, 2, 4), text_only).sum().backward()
    assert ws[2].weight.grad is not None and float(ws[2].weight.grad.abs().sum()) == 0  # absent: zero, not None


def test_training_backward_reaches_every_copy_and_the_cache_matches_the_forward():
    m = build_model(preset("debug", untied="all", **STARTS), seed=0)
    ids = torch.randint(16, 1024, (2, 24))
    m(*_batch(ids)).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    m.setup_cache(2, 32)
    with torch.no_grad():
        full = m(*_batch(ids))
        last = m.prefill(ids[:, :20])
        step = m.decode_step(ids[:, 20:])
    torch.testing.assert_close(last, full[:, 19], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step, full[:, 20:], rtol=1e-4, atol=1e-5)


def test_parameters_grow_flops_do_not():
    dense, untied = preset("debug"), preset("debug", untied="all", **STARTS)
    assert untied.num_params() == sum(p.numel() for p in build_model(untied).parameters()) > dense.num_params()
    assert untied.flops_per_token(256) == dense.flops_per_token(256)
    assert preset("debug", untied="ffn,norms", **STARTS).untied_parts == ("ffn", "norms")


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(untied="ffn"), "needs 0 < image_start"),
        (dict(untied="mlp", **STARTS), "subset of"),
        (dict(untied="ffn", image_start=900, audio_start=800), "needs 0 < image_start"),
    ],
)
def test_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        preset("debug", **bad)


def test_the_engine_generates_a_picture_and_a_clip_with_an_untied_model():
    """Prefill and decode steps through the Generator route each new token to its modality's copies."""
    from toy import toy_model, toy_tokenizers

    from chameleon_lite.generate import GenerationConfig, Generator, Prompt

    tk = toy_tokenizers()
    v = tk.vocab
    gen = Generator(toy_model(tk.vocab, untied="all", image_start=v.image_offset, audio_start=v.audio_offset), tk)
    docs = gen.generate([Prompt(text="a red circle", then="image"), Prompt(text="play", then="audio")],
                        GenerationConfig(max_new_tokens=gen.image_tokens + 8, seed=1))  # fmt: skip
    kinds = [[s.kind for s in d.spans if not s.from_prompt] for d in docs]
    assert kinds[0][0] == "image" and kinds[1][0] == "audio"
