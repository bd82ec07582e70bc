import json

import pytest
import torch

import chameleon_lite.model.transformer as transformer_mod
from chameleon_lite.errors import ConfigError
from chameleon_lite.model import PRESETS, ModelConfig, Transformer, build_model, preset, token_losses
from chameleon_lite.ops.attention import attention_mask_reference

# Expected sizes of the presets (the ranges), checked on the meta device.
PARAM_RANGES = {
    "debug": (0.7e6, 1.5e6),
    "tiny": (10e6, 25e6),
    "small": (80e6, 140e6),
    "base": (0.9e9, 1.3e9),
    "7b": (6.7e9, 7.3e9),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_param_counts(name):
    cfg = preset(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == cfg.num_params()
    lo, hi = PARAM_RANGES[name]
    assert lo <= n <= hi, f"{name}: {n / 1e6:.1f}M parameters"


def test_7b_has_chameleon_shapes():
    cfg = preset("7b")
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.vocab_size) == (4096, 32, 32, 11008, 65536)


def test_config_json_round_trip(tmp_path):
    cfg = preset("debug", vocab_size=777, vocab_hash="abc", norm_placement="post", tie_embeddings=True)
    path = str(tmp_path / "config.json")
    cfg.save(path)
    assert ModelConfig.load(path) == cfg
    assert json.loads(open(path).read())["vocab_hash"] == "abc"


@pytest.mark.parametrize(
    "bad",
    [
        dict(dim=130, n_heads=4),
        dict(n_heads=4, n_kv_heads=3),
        dict(norm_placement="middle"),
        dict(vocab_size=0),
        dict(norm_eps=-1.0),
        dict(qk_norm="yes"),
        dict(qk_norm_type="layer"),
        dict(qk_norm_eps=0.0),
        dict(dim=96, n_heads=32, n_kv_heads=32),
    ],
)
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        preset("debug", **bad)


def test_config_rejects_unknown_keys_and_presets(tmp_path):
    with pytest.raises(ConfigError, match="unknown model config key"):
        ModelConfig.from_dict({"dimm": 3})
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("huge")
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        ModelConfig.load(str(p))


def _batch(B=2, L=24, V=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    doc = torch.zeros(B, L, dtype=torch.int32)
    doc[:, L // 2 :] = 1
    pos = torch.cat([torch.arange(L // 2), torch.arange(L - L // 2)]).expand(B, L).contiguous()
    span = torch.zeros(B, L, dtype=torch.int32)
    span[:, 3:7] = 1
    return ids, pos, doc, span


def _model(**over):
    torch.manual_seed(0)
    return build_model(preset("debug", **over), seed=0)


@pytest.mark.parametrize(
    "over",
    [{}, {"norm_placement": "post"}, {"tie_embeddings": True}, {"qk_norm": False}, {"qk_norm_type": "head_layernorm"}],
)
def test_forward_shapes_and_backward(over):
    m = _model(**over)
    ids, pos, doc, span = _batch()
    logits = m(ids, pos, doc, span)
    assert logits.shape == (2, 24, 1024) and logits.dtype == torch.float32
    ce, lse = token_losses(logits, ids)
    assert torch.allclose(
        ce, torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none"), atol=1e-5
    )
    assert torch.allclose(lse, torch.logsumexp(logits, dim=-1), atol=1e-5)
    (ce.mean() + 1e-4 * (lse**2).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("terms", ["both", "ce", "lse"])
def test_token_losses_gradient_is_autograds_in_every_chunking(dtype, terms, monkeypatch):
    """The chunked loss with its one-pass backward against autograd of cross_entropy and logsumexp in fp64: chunks
    of one row, of rows that do not divide N, and one chunk for all; either term alone (the other's gradient is
    None) or both; the gradient comes back in the logits' dtype."""
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 7, 50, generator=g)).to(dtype)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    w = torch.randn(3, 7, generator=g, dtype=torch.float64)

    def objective(ce, lse):
        return {"both": (ce * w).sum() + 1e-2 * lse.square().sum(), "ce": (ce * w).sum(), "lse": lse.sum()}[terms]

    ref_in = logits.double().requires_grad_()
    ce_ref = torch.nn.functional.cross_entropy(ref_in.transpose(1, 2), targets, reduction="none")
    objective(ce_ref, torch.logsumexp(ref_in, -1)).backward()
    for chunk_bytes in (1, 4 * 50 * 4, 1 << 30):  # 1 row, 4 rows (21 = 5 x 4 + 1), everything
        monkeypatch.setattr(transformer_mod, "LOSS_CHUNK_BYTES", chunk_bytes)
        x = logits.clone().requires_grad_()
        ce, lse = token_losses(x, targets)
        assert ce.dtype == lse.dtype == torch.float32 and ce.shape == lse.shape == (3, 7)
        torch.testing.assert_close(ce.double(), ce_ref.detach(), atol=1e-5, rtol=1e-5)
        objective(ce.double(), lse.double()).backward()
        assert x.grad.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(x.grad.double(), ref_in.grad, atol=tol, rtol=tol)


def test_head_layernorm_is_a_per_head_layernorm():
    """Chameleon's q/k norm: mean and variance over head_dim, then a gain and a bias of each head's own."""
    m = _model(qk_norm_type="head_layernorm", n_heads=4, n_kv_heads=2)
    norm = m.layers["0"].attention.q_norm
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, 4, 32)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    want = (x - mu) / torch.sqrt(var + 1e-5) * norm.weight.view(4, 32) + norm.bias.view(4, 32)
    torch.testing.assert_close(norm(x), want, rtol=1e-5, atol=1e-5)
    assert m.config.num_params() == sum(p.numel() for p in m.parameters())
    assert tuple(m.layers["0"].attention.k_norm.weight.shape) == (2 * 32,)


def test_packed_documents_are_independent():
    """A packed second document gives the same logits as that document alone (positions restart, no leakage)."""
    m = _model()
    ids, pos, doc, span = _batch(B=1)
    full = m(ids, pos, doc, span)
    half = ids.shape[1] // 2
    alone = m(ids[:, half:], pos[:, half:], torch.zeros(1, half, dtype=torch.int32), span[:, half:])
    torch.testing.assert_close(full[:, half:], alone, rtol=1e-5, atol=1e-5)


def test_bidirectional_span_changes_only_its_span():
    m = _model()
    ids, pos, doc, _ = _batch(B=1)
    none = torch.zeros_like(doc)
    span = none.clone()
    span[:, 3:7] = 1
    a, b = m(ids, pos, doc, none), m(ids, pos, doc, span)
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, 3:6], b[:, 3:6], atol=1e-4)
    mask = attention_mask_reference(doc, span)
    assert mask[0, 3, 6] and not mask[0, 2, 6]


def test_meta_build_is_deterministic_per_seed():
    a, b = _model(), _model()
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


@pytest.mark.parametrize("n_kv_heads", [2, 4])
def test_cached_decode_matches_full_forward(n_kv_heads):
    """prefill(prompt) + one-token decode steps give the logits of one full causal forward, per row with
    different prompt lengths (right-padded prompts)."""
    m = _model(n_kv_heads=n_kv_heads).eval()
    B, L = 3, 20
    ids = torch.randint(0, 1024, (B, L), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(L).expand(B, L)
    zeros = torch.zeros(B, L, dtype=torch.int32)
    with torch.no_grad():
        full = m(ids, pos, zeros, zeros)
        m.setup_cache(B, 32)
        lens = torch.tensor([8, 5, 11])
        prompt = ids[:, :11].clone()
        last = m.prefill(prompt, lens)
        torch.testing.assert_close(last, full[torch.arange(B), lens - 1], rtol=1e-5, atol=1e-5)
        cur = lens.clone()
        for _ in range(6):
            nxt = ids[torch.arange(B), cur].unsqueeze(1)
            out = m.decode_step(nxt)
            torch.testing.assert_close(out[:, 0], full[torch.arange(B), cur], rtol=1e-5, atol=1e-5)
            cur += 1
        assert m.cache_lens.tolist() == cur.tolist()


def test_multi_token_decode_and_bidirectional_prompt():
    """A decode of several tokens at once equals single steps; a prompt span read bidirectionally matches the
    full forward with the same span ids."""
    m = _model().eval()
    L = 16
    ids = torch.randint(0, 1024, (1, L), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(L).unsqueeze(0)
    doc = torch.zeros(1, L, dtype=torch.int32)
    span = doc.clone()
    span[:, 2:6] = 1
    with torch.no_grad():
        full = m(ids, pos, doc, span)
        m.setup_cache(1, L)
        m.prefill(ids[:, :10], span_ids=span[:, :10])
        out = m.decode_step(ids[:, 10:14])
        torch.testing.assert_close(out, full[:, 10:14], rtol=1e-5, atol=1e-5)


def test_cache_errors():
    m = _model().eval()
    with pytest.raises(ConfigError, match="setup_cache"):
        m.decode_step(torch.zeros(1, 1, dtype=torch.long))
    m.setup_cache(1, 4)
    with torch.no_grad():
        m.prefill(torch.zeros(1, 4, dtype=torch.long))
        with pytest.raises(ConfigError, match="cache full"):
            m.decode_step(torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ConfigError, match="max_seq_len"):
        m.setup_cache(1, 10**6)
    m.setup_cache(3, 4)
    with torch.no_grad():
        for rows in ([0, 3], [1, 1], [-1, 0], [0]):
            with pytest.raises(ConfigError, match=r"prefill rows must be 2 distinct cache rows in \[0, 3\)"):
                m.prefill(torch.zeros(2, 4, dtype=torch.long), rows=torch.tensor(rows))


@pytest.mark.parametrize("tie", [True, False])
def test_bf16_weights_decode_matches_full_forward(tie):
    """use_bf16_weights: decode steps read bf16 copies through the weight-only kernel and longer inputs the same
    copies widened, so a full forward and the cached decode compute the same function; the fp32 weights are not
    touched, and dropping the copies gives the model back exactly."""
    m = _model(tie_embeddings=tie).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    B, L = 2, 14
    ids = torch.randint(0, 1024, (B, L), generator=torch.Generator().manual_seed(3))
    zeros = torch.zeros(B, L, dtype=torch.int32)
    with torch.no_grad():
        exact = m(ids, torch.arange(L).expand(B, L), zeros, zeros)
    m.use_bf16_weights(True)
    assert set(m.state_dict()) == set(before)  # the copies are not checkpoint state
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # the fp32 weights are left as they are
    assert m.layers["0"].feed_forward.w2.weight_bf16.dtype == torch.bfloat16
    with torch.no_grad():
        full = m(ids, torch.arange(L).expand(B, L), zeros, zeros)
        m.setup_cache(B, L)
        m.prefill(ids[:, :9])
        for t in range(9, L):
            out = m.decode_step(ids[:, t : t + 1])
            torch.testing.assert_close(out[:, 0], full[:, t], rtol=1e-4, atol=1e-4)
        assert not torch.equal(full, exact)  # the copies are in use for long inputs too
    m.use_bf16_weights(False)
    assert "weight_bf16" not in m.layers["0"].attention.wqkv._buffers and "head_bf16" not in m._buffers
    with torch.no_grad():
        assert torch.equal(m(ids, torch.arange(L).expand(B, L), zeros, zeros), exact)
    with pytest.raises(ConfigError, match="float32"):
        m.to(torch.bfloat16).use_bf16_weights(True)
