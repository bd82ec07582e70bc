"""Tiny transformers Chameleon checkpoints built in the test (random weights, no download): a byte-level BPE, a
vocabulary map with the image tokens in a shuffled order, and a ChameleonForConditionalGeneration saved with
``save_pretrained`` exactly as the field's checkpoints are laid out."""

from __future__ import annotations

import json
import os

import torch

from chameleon_lite.convert.hf_chameleon import image_name_of

K_IMAGE = 64
TEXTS = [
    "a large red circle in the top left",
    "draw a small blue square at the bottom right, then play a tone",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "what colour is the triangle? It is green.",
] * 20


def bpe_json(vocab_size: int = 320) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator(TEXTS, trainer)
    return json.loads(tk.to_str())


def build_hf_folder(
    folder: str,
    *,
    swin_norm: bool = False,
    n_kv_heads: int = 4,
    tie: bool = False,
    seed: int = 0,
    dim: int = 64,
    layers: int = 2,
    heads: int = 4,
    ffn: int = 128,
    vq_resolution: int = 16,
    context: int = 512,
) -> dict:
    """Write a tiny transformers Chameleon folder; returns its vocabulary map. Layout like Chameleon's: a few
    specials, the image tokens (codes shuffled against ids), the image markers, then the BPE."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    bpe = bpe_json()
    g = torch.Generator().manual_seed(seed)
    vmap = {"<pad>": 0, "<s>": 1, "</s>": 2, "<reserved0003>": 3}
    perm = torch.randperm(K_IMAGE, generator=g).tolist()
    for j, code in enumerate(perm):
        vmap[image_name_of(code)] = 4 + j
    for name in ("<eoss>", "<racm3:break>", "<image>"):
        vmap[name] = len(vmap)
    off = len(vmap)
    for tok, i in bpe["model"]["vocab"].items():
        vmap[tok] = off + i
    size = len(vmap) + 5  # padded past the tokenizer, as large checkpoints are
    bpe["model"]["vocab"] = {t: off + i for t, i in bpe["model"]["vocab"].items()}
    bpe["added_tokens"] = [
        {"id": i, "content": n, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for n, i in vmap.items() if i < off
    ]  # fmt: skip
    cfg = ChameleonConfig(
        vocab_size=size,
        hidden_size=dim,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=context,
        swin_norm=swin_norm,
        tie_word_embeddings=tie,
        vocabulary_map=vmap,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        vq_config={
            "embed_dim": 8, "num_embeddings": K_IMAGE, "latent_channels": 32, "resolution": vq_resolution,
            "base_channels": 32,
            "channel_multiplier": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
        },
    )  # fmt: skip
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and "vqmodel" not in name:  # norms start at 1/0: make them matter
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(bpe, f, ensure_ascii=False)
    return vmap


def write_release_vqgan(hf_folder: str, out_folder: str, seed: int = 5) -> str:
    """A release-format ``vqgan.ckpt`` + ``vqgan.yaml`` (as Meta's Chameleon ships its image tokenizer) whose encoder
    side is the transformers checkpoint's ``model.vqmodel.*`` and whose decoder is random: returns the ckpt path."""
    import yaml
    from safetensors.torch import load_file

    from chameleon_lite.tokenizers.chameleon_vq import ChameleonVQConfig, ChameleonVQGAN

    with open(os.path.join(hf_folder, "config.json")) as f:
        vq = json.load(f)["vq_config"]
    model = ChameleonVQGAN(ChameleonVQConfig.from_dict(vq))
    torch.manual_seed(seed)
    for p in model.decoder.parameters():
        torch.nn.init.normal_(p, 0.0, 0.05)
    state = model.state_dict()
    for k, v in load_file(os.path.join(hf_folder, "model.safetensors")).items():
        if k.startswith("model.vqmodel."):
            state[k[len("model.vqmodel.") :]] = v
    os.makedirs(out_folder, exist_ok=True)
    ckpt = os.path.join(out_folder, "vqgan.ckpt")
    torch.save({"state_dict": {**state, "loss.logvar": torch.zeros(())}, "global_step": 1}, ckpt)
    dd = {
        "double_z": False, "z_channels": vq["latent_channels"], "resolution": vq["resolution"], "in_channels": 3,
        "out_ch": 3, "ch": vq["base_channels"], "ch_mult": list(vq["channel_multiplier"]),
        "num_res_blocks": vq["num_res_blocks"], "attn_resolutions": list(vq.get("attn_resolutions") or []),
        "dropout": 0.0,
    }  # fmt: skip
    doc = {"model": {"params": {"embed_dim": vq["embed_dim"], "n_embed": vq["num_embeddings"], "ddconfig": dd}}}
    with open(os.path.join(out_folder, "vqgan.yaml"), "w") as f:
        yaml.safe_dump(doc, f)
    return ckpt
