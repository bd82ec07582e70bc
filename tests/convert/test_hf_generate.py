"""Generation with converted weights through this project's engine, against transformers on the same tiny random
Chameleon: greedy text token for token, the text tokenizer's ids, the image tokenizer's codes, and a picture drawn
with classifier-free guidance through the release-format VQGAN decoder (command line included)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from chameleon_lite.cli import main
from chameleon_lite.convert.hf_chameleon import convert_from_hf, invert_map, read_vocab_map, vq_loader
from chameleon_lite.generate import GenerationConfig, Generator, Prompt, SamplingSettings
from chameleon_lite.tokenizers.image import to_model_input

transformers = pytest.importorskip("transformers")
from hf_fixture import build_hf_folder, write_release_vqgan  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    vmap = build_hf_folder(str(d / "hf"), n_kv_heads=2, seed=7)
    ckpt = write_release_vqgan(str(d / "hf"), str(d / "release"))
    convert_from_hf(str(d / "hf"), str(d / "ours"), vqgan=vq_loader(ckpt))
    hf = transformers.ChameleonForConditionalGeneration.from_pretrained(str(d / "hf")).eval()
    u2h = read_vocab_map(str(d / "ours"))
    h2u = invert_map(u2h, hf.config.vocab_size)
    return d, hf, vmap, u2h, h2u, ckpt


def test_engine_greedy_text_matches_transformers_generate(converted):
    d, hf, vmap, u2h, h2u, _ = converted
    gen = Generator.from_dir(str(d / "ours"))
    prompt = [1] + list(range(90, 120))
    # the engine's text mode allows text ids and <eos> (banned here for 64 tokens); transformers' generate masks
    # the image codes: the specials neither side may write in text are suppressed on its side too
    suppress = [vmap[n] for n in ("<pad>", "<s>", "<racm3:break>", "<eoss>")]
    with torch.no_grad():
        want = hf.generate(
            torch.tensor([prompt]), max_new_tokens=64, min_new_tokens=64, do_sample=False, suppress_tokens=suppress
        )[0, len(prompt) :].tolist()
    cfg = GenerationConfig(
        max_new_tokens=64, min_new_tokens=64, text=SamplingSettings(temperature=0.0), allow_image=False,
        dtype="fp32", weights="fp32",
    )  # fmt: skip
    doc = gen.generate(Prompt(ids=h2u[torch.tensor(prompt)].tolist()), cfg)[0]
    got = u2h[torch.tensor(doc.ids)].tolist()  # the generated ids (the prompt's are doc.prompt_ids)
    assert got == want


def test_text_tokenizer_gives_chameleons_ids(converted):
    from tokenizers import Tokenizer

    d, _, _, u2h, _, _ = converted
    theirs = Tokenizer.from_file(str(d / "hf" / "tokenizer.json"))
    gen = Generator.from_dir(str(d / "ours"))
    for text in ("a large red circle in the top left", "What colour is it? 0123 <s> IMGIMGAZ"):
        ours = gen.vocab.text_to_unified(gen.tokenizers.text.encode(text))
        want = theirs.encode(text, add_special_tokens=False).ids
        if "<s>" not in text:
            assert u2h[ours].tolist() == want
        else:  # Chameleon's tokenizer matches its specials inside text; ours never does: user text stays text
            assert gen.vocab.modality(ours).eq(0).all() and all(i >= gen.vocab.text_offset for i in ours.tolist())
        assert gen.tokenizers.text.decode(gen.vocab.unified_to_text(ours).tolist()) == text


def test_picture_codes_match_transformers(converted):
    d, hf, _, u2h, _, _ = converted
    gen = Generator.from_dir(str(d / "ours"))
    tok = gen.tokenizers.image
    rgb = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ours = tok.to_unified(tok.encode_rgb(rgb), gen.vocab)
    with torch.no_grad():
        want = hf.model.get_image_tokens(to_model_input(rgb))
    assert torch.equal(u2h[ours], want)


def test_engine_draws_a_picture_with_guidance(converted, tmp_path):
    d, *_ = converted
    gen = Generator.from_dir(str(d / "ours"))
    cfg = GenerationConfig(max_new_tokens=80, image=SamplingSettings(temperature=1.0, top_k=8, cfg_scale=3.0), seed=3)
    doc = gen.generate(Prompt(text="a large red circle", then="image"), cfg)[0]
    images = [s for s in doc.spans if s.kind == "image" and not s.from_prompt]
    assert len(images) == 1 and images[0].image.shape == (16, 16, 3) and len(images[0].ids) == 64
    rc = main(["generate", "--model", str(d / "ours"), "--prompt", "a circle", "--then", "image",
               "--image-cfg", "2", "--max-new-tokens", "80", "--out", str(tmp_path / "doc")])  # fmt: skip
    assert rc == 0 and any(f.endswith(".png") for f in os.listdir(tmp_path / "doc"))


def test_cli_converts_with_the_release_decoder_and_refuses_a_foreign_one(converted, tmp_path, capsys):
    d, _, _, _, _, ckpt = converted
    assert main(["convert", "from-hf", str(d / "hf"), "--out", str(tmp_path / "m"), "--vqgan", ckpt]) == 0
    assert "wrote" in capsys.readouterr().out
    build_hf_folder(str(tmp_path / "other"), seed=11)
    other = write_release_vqgan(str(tmp_path / "other"), str(tmp_path / "other_release"))
    capsys.readouterr()
    assert main(["convert", "from-hf", str(d / "hf"), "--out", str(tmp_path / "m2"), "--vqgan", other]) == 1
    err = capsys.readouterr().err
    assert "not the image tokenizer these weights were trained with" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "m2")


def test_loading_in_bf16_holds_no_fp32_copy_and_generates_the_same(converted):
    """A 7B model in bf16 needs 14 GB: ``from_dir(dtype="bf16")`` loads the weights in bf16 directly, and generates
    what a model loaded in fp32 and run in bf16 generates."""
    d, *_ = converted
    a = Generator.from_dir(str(d / "ours"), dtype="bf16")
    assert {p.dtype for p in a.model.parameters()} == {torch.bfloat16}
    b = Generator.from_dir(str(d / "ours"))
    assert {p.dtype for p in b.model.parameters()} == {torch.float32}
    cfg = GenerationConfig(max_new_tokens=24, text=SamplingSettings(temperature=0.0), dtype="bf16")
    assert a.generate("a large red", cfg)[0].ids == b.generate("a large red", cfg)[0].ids
    with pytest.raises(Exception, match="dtype must be auto, fp32 or bf16"):
        Generator.from_dir(str(d / "ours"), dtype="fp16")


def test_a_1024_token_picture_with_guidance(tmp_path):
    """Chameleon's picture: 32x32 = 1024 codes between <racm3:break> and <eoss>, drawn through the state machine
    with classifier-free guidance (a conditional and an unconditional row) and decoded to a PNG-ready array."""
    build_hf_folder(str(tmp_path / "hf"), seed=4, vq_resolution=64, context=2048)
    ckpt = write_release_vqgan(str(tmp_path / "hf"), str(tmp_path / "release"))
    convert_from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), vqgan=vq_loader(ckpt))
    gen = Generator.from_dir(str(tmp_path / "ours"))
    assert gen.image_tokens == 1024
    cfg = GenerationConfig(max_new_tokens=1030, image=SamplingSettings(temperature=1.0, cfg_scale=3.0), seed=1)
    doc = gen.generate(Prompt(text="a red circle", then="image"), cfg)[0]
    (image,) = [s for s in doc.spans if s.kind == "image"]
    assert len(image.ids) == 1024 and image.image.shape == (64, 64, 3) and image.complete
    assert doc.timings["cfg_rows"] == 1  # the unconditional row ran beside the conditional one
    boi, eoi = gen.vocab.boi, gen.vocab.eoi
    assert doc.prompt_ids[-1] == boi and doc.ids[1024] == eoi  # then="image" ends the prompt with the marker


def test_a_checkpoint_without_the_encoder_takes_the_release_vqgan_whole(converted, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d, _, _, _, _, ckpt = converted
    import shutil

    src = shutil.copytree(d / "hf", tmp_path / "hf")
    path = os.path.join(src, "model.safetensors")
    save_file({k: v for k, v in load_file(path).items() if not k.startswith("model.vqmodel.")}, path)
    capsys.readouterr()
    assert main(["convert", "from-hf", str(src), "--out", str(tmp_path / "no_vq")]) == 1
    err = capsys.readouterr().err
    assert "holds no image tokenizer" in err and "--vqgan" in err and err.count("\n") == 1
    assert main(["convert", "from-hf", str(src), "--out", str(tmp_path / "m"), "--vqgan", ckpt]) == 0
    gen = Generator.from_dir(str(tmp_path / "m"))
    assert gen.tokenizers.image.model.decoder is not None and gen.image_tokens == 64
