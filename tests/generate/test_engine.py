import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from toy import toy_model, toy_tokenizers

from chameleon_lite.cli import main
from chameleon_lite.errors import ConfigError, DataError, UserError
from chameleon_lite.generate import GenerationConfig, Generator, Prompt, SamplingSettings
from chameleon_lite.generate.document import split_spans
from chameleon_lite.generate.state_machine import ModalityStateMachine
from chameleon_lite.model.io import save_model_dir

FP32 = dict(dtype="fp32")


def _masked_argmax(logits: torch.Tensor, ranges: torch.Tensor) -> int:
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for lo, hi in ranges.tolist():
        keep[lo:hi] = True
    return int(torch.where(keep, logits, torch.tensor(float("-inf"))).argmax())


def _replay(gen, prompt_ids, new_ids, left):
    sm = ModalityStateMachine(gen.vocab, gen.image_tokens, 1, left)
    sm.feed_prompt(0, prompt_ids)
    for t in new_ids:
        yield sm.allowed_ranges()[0], sm.forced()[0]
        sm.advance(torch.tensor([t]))


def test_greedy_cached_decode_equals_full_forward(gen):
    """Each greedy id is the constrained argmax of a full (uncached) forward over prompt + ids so far."""
    cfg = GenerationConfig(
        max_new_tokens=30,
        text=SamplingSettings(temperature=0),
        image=SamplingSettings(temperature=0),
        audio=SamplingSettings(temperature=0),
        **FP32,
    )
    docs = gen.generate(
        [Prompt(text="Draw a red", then="image"), Prompt(text="A small blue square in the middle.")], cfg
    )
    for d in docs:
        seq = torch.tensor(d.prompt_ids + d.ids)
        L = len(seq)
        with torch.no_grad():
            full = gen.model(
                seq[None],
                torch.arange(L)[None],
                torch.zeros(1, L, dtype=torch.int32),
                torch.zeros(1, L, dtype=torch.int32),
            )[0].float()
        n = len(d.prompt_ids)
        for i, (ranges, forced) in enumerate(_replay(gen, d.prompt_ids, d.ids, 30)):
            want = int(forced) if forced >= 0 else _masked_argmax(full[n + i - 1], ranges)
            assert d.ids[i] == want, f"step {i}"


def test_cfg_combines_conditional_and_unconditional_rows(gen):
    """With CFG, image ids are the argmax of uncond + s * (cond - uncond), the uncond row holding <bos> <boi> + span."""
    s = 3.0
    cfg = GenerationConfig(
        max_new_tokens=gen.image_tokens + 1, image=SamplingSettings(temperature=0, cfg_scale=s), **FP32
    )
    d = gen.generate(Prompt(text="Draw a large red circle", then="image"), cfg)[0]
    assert d.timings["cfg_rows"] == 1
    v = gen.vocab
    img = d.ids[: gen.image_tokens]
    assert d.ids[gen.image_tokens] == v.eoi

    def last_logits(seq):
        t = torch.tensor(seq)[None]
        z = torch.zeros_like(t, dtype=torch.int32)
        with torch.no_grad():
            return gen.model(t, torch.arange(t.shape[1])[None], z, z)[0, -1].float()

    for i, tok in enumerate(img):
        cond = last_logits(d.prompt_ids + img[:i])
        unc = last_logits([v.bos, v.boi] + img[:i])
        z = unc + s * (cond - unc)
        lo, hi = v.image_range()
        assert tok == lo + int(z[lo:hi].argmax())


@pytest.mark.parametrize("seed", range(12))
def test_random_generations_are_well_formed(gen, seed):
    """Property: whatever random weights and draws do, spans are well formed and no banned id appears."""
    v = gen.vocab
    torch.manual_seed(seed)
    g2 = Generator(toy_model(v, seed=seed), gen.tokenizers)
    prompts = [
        Prompt(text="Draw"),
        Prompt(text="Play", then="audio"),
        Prompt(text="x", then="image"),
        Prompt(text="The"),
    ]
    max_new = [7, 19, 40, 64][seed % 4]
    cfg = GenerationConfig(
        max_new_tokens=max_new,
        seed=seed,
        max_audio_frames=5,
        text=SamplingSettings(temperature=1.5),
        image=SamplingSettings(temperature=1.5, cfg_scale=2.0 if seed % 2 else 1.0),
        audio=SamplingSettings(temperature=1.5, top_k=3),
        **FP32,
    )
    for d in g2.generate(prompts, cfg):
        assert len(d.ids) <= max_new
        assert all(0 <= t < v.size and t != v.pad and t != v.bos for t in d.ids)
        full = d.prompt_ids + d.ids
        for s in split_spans(full, v):
            if s.kind == "image" and s.complete:
                assert len(s.ids) == g2.image_tokens
                assert all(v.image_offset <= t < v.audio_offset for t in s.ids)
            if s.kind == "audio" and s.complete:
                assert len(s.ids) % v.audio_levels == 0 and 0 < len(s.ids) // v.audio_levels <= 5
                v.unified_to_audio(s.ids)  # levels in order
        # a media span is never left open by the budget: <boi> is only allowed when the whole image fits
        if v.boi in full:
            last = len(full) - 1 - full[::-1].index(v.boi)
            assert v.eoi in full[last:]
        assert d.settings["finish_reason"] in ("eos", "length")


def test_output_folder_opens(gen, tmp_path):
    cfg = GenerationConfig(max_new_tokens=40, seed=3, **FP32)
    img = np.full((20, 20, 3), 200, np.uint8)
    d = gen.generate(Prompt(text="Look:", images=[img], then="image"), cfg)[0]
    out = d.save(str(tmp_path / "doc"))
    meta = json.load(open(os.path.join(out, "document.json")))
    assert meta["ids"] == d.ids and meta["settings"]["seed"] == 3 and "decode_s" in meta["timings"]
    assert meta["segments"][0]["kind"] == "image" and meta["segments"][0]["from_prompt"]
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    assert len(pngs) >= 2  # the prompt image and the generated one
    for f in pngs:
        assert Image.open(os.path.join(out, f)).size == (16, 16)
    html = open(os.path.join(out, "document.html")).read()
    assert "data:image/png;base64" in html
    a = gen.generate(
        Prompt(text="Play", then="audio"), GenerationConfig(max_new_tokens=12, max_audio_frames=4, **FP32)
    )[0]
    out = a.save(str(tmp_path / "aud"))
    wav, sr = sf.read(os.path.join(out, "audio_000.wav"))
    frames = len(next(x for x in a.spans if x.kind == "audio").ids) // 2
    assert sr == 16000 and 1 <= frames <= 4 and len(wav) == frames * 320 and np.isfinite(wav).all()


def test_same_seed_same_ids_and_rows_independent_of_batch(gen):
    cfg = GenerationConfig(max_new_tokens=25, seed=11, **FP32)
    p = Prompt(text="A small")
    one = gen.generate([p], cfg)[0].ids
    assert gen.generate([p], cfg)[0].ids == one
    assert gen.generate([p, Prompt(text="Play C4 then"), Prompt(text="x", then="image")], cfg)[0].ids == one
    assert gen.generate([p], GenerationConfig(max_new_tokens=25, seed=12, **FP32))[0].ids != one


def test_streaming_and_stop_strings(gen):
    events = []
    cfg = GenerationConfig(max_new_tokens=30, seed=1, **FP32)
    d = gen.generate(Prompt(text="The"), cfg, stream=events.append)[0]
    assert [e.id for e in events] == d.ids
    gen_text = "".join(s.text for s in d.spans if s.kind == "text" and not s.from_prompt)
    assert "".join(e.text for e in events) == gen_text
    img = gen.generate(
        Prompt(text="x", then="image"),
        GenerationConfig(max_new_tokens=gen.image_tokens + 1, **FP32),
        stream=events.append,
    )[0]
    spans = [e.span for e in events[len(d.ids) :] if e.span]
    assert spans[-1] == (gen.image_tokens, gen.image_tokens) and img.images
    stop = gen_text[3:5]
    if stop.strip():
        s = gen.generate(Prompt(text="The"), GenerationConfig(max_new_tokens=30, seed=1, stop=(stop,), **FP32))[0]
        assert s.settings["finish_reason"] == "stop" and len(s.ids) < len(d.ids)
        assert s.text.endswith(stop)


def test_bad_input(gen, tk, tmp_path):
    with pytest.raises(UserError, match="context is 256 tokens"):
        gen.generate(Prompt(text="a b c d " * 200), GenerationConfig(**FP32))
    with pytest.raises(DataError, match="nope.png"):
        gen.generate(Prompt(text="x", images=[str(tmp_path / "nope.png")]))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="bad.png"):
        gen.generate(Prompt(text="x", images=[str(bad)]))
    with pytest.raises(DataError, match="missing.wav"):
        gen.generate(Prompt(text="x", audios=[str(tmp_path / "missing.wav")]))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(DataError, match="broken.wav"):
        gen.generate(Prompt(text="x", audios=[str(broken)]))
    other = toy_tokenizers(texts=["completely different words here"] * 30)
    with pytest.raises(ConfigError, match="vocabulary|ids"):
        Generator(gen.model, other)
    with pytest.raises(ConfigError, match="model folder not found"):
        Generator.from_dir(str(tmp_path / "no_model"))
    with pytest.raises(ConfigError, match="then"):
        Prompt(text="x", then="video")
    with pytest.raises(ConfigError, match="top_p"):
        SamplingSettings(top_p=0)


def test_generate_command(tmp_path, capsys):
    tk = toy_tokenizers(audio=False)
    tok_dir = str(tmp_path / "tok")
    tk.text.save(tok_dir)
    tk.image.save(tok_dir)
    model_dir = save_model_dir(toy_model(tk.vocab), tk.vocab, tok_dir, str(tmp_path / "model"))
    out = str(tmp_path / "out")
    rc = main(
        [
            "generate",
            "--model",
            model_dir,
            "--prompt",
            "Draw a",
            "--then",
            "image",
            "--max-new-tokens",
            "20",
            "--image-cfg",
            "2",
            "--out",
            out,
            "--dtype",
            "fp32",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "document.html" in text and "tokens/s" in text and "[image:" in text
    assert os.path.isfile(os.path.join(out, "image_000.png"))
    batch = str(tmp_path / "batch")  # a folder of samples is another kind of output than one document's
    rc = main(
        [
            "generate",
            "--model",
            model_dir,
            "--prompt",
            "x",
            "--batch",
            "2",
            "--max-new-tokens",
            "5",
            "--out",
            batch,
            "--quiet",
        ]
    )
    assert rc == 0 and os.path.isfile(os.path.join(batch, "sample_001", "document.json"))
    rc = main(
        [
            "generate",
            "--model",
            model_dir,
            "--prompt",
            "x",
            "--then",
            "media",
            "--max-new-tokens",
            "20",
            "--out",
            os.path.join(out, "media"),
            "--quiet",
        ]
    )  # a model without audio: its span is a picture
    assert rc == 0 and os.path.isfile(os.path.join(out, "media", "image_000.png"))
    assert main(["generate", "--model", model_dir, "--prompt", "x", "--then", "audio"]) == 1
    assert "no audio tokenizer" in capsys.readouterr().err
    assert main(["generate", "--model", model_dir, "--image", str(tmp_path / "none.png")]) == 1
    assert "none.png" in capsys.readouterr().err


def test_model_folder_sampling_defaults(tmp_path, capsys):
    """A model folder's generation.json sets what generate samples with when the caller names nothing: the Python
    API without a config, the command without sampling flags; a flag given wins; a bad file is a clear error."""
    from chameleon_lite.generate.engine import GENERATION_FILE, write_sampling_defaults

    tk = toy_tokenizers(audio=False)
    tok_dir = str(tmp_path / "tok")
    tk.text.save(tok_dir)
    tk.image.save(tok_dir)
    model_dir = save_model_dir(toy_model(tk.vocab), tk.vocab, tok_dir, str(tmp_path / "model"))
    assert Generator.from_dir(model_dir).sampling["image"] == SamplingSettings()  # no file: the built-in defaults
    write_sampling_defaults(model_dir, {"image": {"temperature": 0.0, "top_k": 7}, "text": {"top_k": 5}})
    g = Generator.from_dir(model_dir)
    assert g.sampling["image"] == SamplingSettings(temperature=0.0, top_k=7)
    assert g.sampling["text"] == SamplingSettings(temperature=0.8, top_p=0.95, top_k=5)  # the rest stay built-in
    doc = g.generate(Prompt(text="Draw", then="image"))[0]
    assert doc.settings["image"]["temperature"] == 0.0 and doc.settings["text"]["top_k"] == 5

    def settings(*flags):
        out = str(tmp_path / "out")
        assert (
            main(
                [
                    "generate",
                    "--model",
                    model_dir,
                    "--prompt",
                    "x",
                    "--max-new-tokens",
                    "3",
                    "--out",
                    out,
                    "--quiet",
                    "--dtype",
                    "fp32",
                    *flags,
                ]
            )
            == 0
        )
        return json.load(open(os.path.join(out, "document.json")))["settings"]

    got = settings()
    assert got["image"]["temperature"] == 0.0 and got["image"]["top_k"] == 7 and got["text"]["top_k"] == 5
    got = settings("--image-temperature", "0.5", "--text-top-k", "0", "--audio-cfg", "2")
    assert (got["image"]["temperature"], got["image"]["top_k"], got["text"]["top_k"], got["audio"]["cfg_scale"]) == (
        0.5,
        7,
        0,
        2.0,
    )

    path = os.path.join(model_dir, GENERATION_FILE)
    for text, message in [
        ("{", "not valid JSON"),
        ('{"video": {}}', "'video' is not a kind"),
        ('{"image": {"temp": 1}}', "unknown image setting"),
        ('{"text": {"top_p": 0}}', "top_p"),
        ('{"audio": {"temperature": "hot"}}', "must be numbers"),
        ('{"image": 1}', "each an object"),
    ]:
        with open(path, "w") as f:
            f.write(text)
        with pytest.raises(ConfigError, match=message):
            Generator.from_dir(model_dir)
        assert main(["generate", "--model", model_dir, "--prompt", "x", "--out", str(tmp_path / "bad")]) == 1
        err = capsys.readouterr().err
        assert GENERATION_FILE in err and "Traceback" not in err


def test_then_media_opens_a_span_of_the_models_choice(gen):
    v = gen.vocab
    for seed in range(6):
        d = gen.generate(
            Prompt(text="Draw", then="media"), GenerationConfig(max_new_tokens=gen.image_tokens + 8, seed=seed, **FP32)
        )[0]
        assert d.ids[0] in (v.boi, v.boa), d.ids[:3]
        assert [s.kind for s in d.spans if not s.from_prompt][0] in ("image", "audio")
    # room for a clip but not a picture: the clip it is
    d = gen.generate(Prompt(text="Draw", then="media"), GenerationConfig(max_new_tokens=v.audio_levels + 2, **FP32))[0]
    assert d.ids[0] == v.boa
    with pytest.raises(UserError, match="none fits"):
        gen.generate(Prompt(text="Draw", then="media"), GenerationConfig(max_new_tokens=v.audio_levels + 1, **FP32))


def test_prompt_ids_min_new_tokens_and_span_budget(gen):
    v = gen.vocab
    with pytest.raises(ConfigError, match="one of"):
        Prompt(text="x", ids=[1, 2])
    with pytest.raises(Exception, match=str(v.size)):
        gen.generate(Prompt(ids=[v.size + 5]), GenerationConfig(**FP32))
    text_ids = gen.tokenizers.text.encode("Draw a red")
    d = gen.generate(Prompt(ids=text_ids), GenerationConfig(max_new_tokens=3, **FP32))[0]
    assert d.prompt_ids[0] == v.bos and d.prompt_ids[1:] == list(text_ids)
    # a prompt that opens an image span needs room for the whole span plus <eoi>
    with pytest.raises(UserError, match="needs"):
        gen.generate(Prompt(text="x", then="image"), GenerationConfig(max_new_tokens=gen.image_tokens, **FP32))
    with pytest.raises(ConfigError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=4, min_new_tokens=5)
    # <eos> can not come before min_new_tokens: a model that always prefers <eos> still runs 8 tokens, then stops
    import copy

    model = copy.deepcopy(gen.model)
    head = model._head

    def eos_loving_head(h):
        out = head(h)
        out[..., v.eos] += 1e4
        return out

    model._head = eos_loving_head
    g2 = Generator(model, gen.tokenizers)
    for seed in range(3):
        d = g2.generate(Prompt(text="x"), GenerationConfig(max_new_tokens=12, min_new_tokens=8, seed=seed, **FP32))[0]
        assert v.eos not in d.ids[:8] and d.ids[8] == v.eos and d.settings["finish_reason"] == "eos"
    d = g2.generate(Prompt(text="x"), GenerationConfig(max_new_tokens=12, **FP32))[0]
    assert d.ids == [v.eos]


def test_weight_precision_setting(tk):
    """weights="fp32" decodes with the model's own weights; "bf16" (the CPU default) rounds them once and reads bf16
    copies on decode steps; greedy ids of both agree on a model whose weights already are bf16 values."""
    with pytest.raises(ConfigError, match="weights"):
        GenerationConfig(weights="int8")
    model = toy_model(tk.vocab)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    g = Generator(model, tk)
    greedy = SamplingSettings(temperature=0)
    runs = {}
    for weights in ("fp32", "bf16"):
        cfg = GenerationConfig(
            max_new_tokens=24, text=greedy, image=greedy, audio=greedy, dtype="fp32", weights=weights
        )
        d = g.generate(Prompt(text="A small blue square", then="image"), cfg)[0]
        assert d.timings["weights"] == ("bf16" if weights == "bf16" else "float32")
        runs[weights] = d.ids
    assert "weight_bf16" in g.model.layers["0"].attention.wqkv._buffers
    assert runs["fp32"] == runs["bf16"]


def test_a_row_that_fills_the_context_while_others_go_on(gen):
    """A row whose prompt + new tokens fill the whole context ends; the rows beside it go on, as they would alone
    (a finished row rewrites its own last cache slot, never one past the cache)."""
    v = gen.vocab
    long = Prompt(ids=[v.bos] + [v.text_offset + 5] * (gen.context - 7))
    cfg = GenerationConfig(max_new_tokens=12, min_new_tokens=6, seed=4, **FP32)
    b, a = gen.generate([Prompt(text="A small"), long], cfg)  # (draws depend on the row: B is row 0 both times)
    assert len(a.prompt_ids) + len(a.ids) == gen.context and a.settings["finish_reason"] == "length"
    assert b.ids == gen.generate([Prompt(text="A small")], cfg)[0].ids


def test_runs_joining_a_shared_cache_at_any_step_give_their_own_documents(gen):
    """The continuous-batching primitive: runs prefilled into free slots of one KV cache while others decode, and
    stepped together by decode_runs, draw the ids each draws alone (fp32, greedy and sampled, with and without
    guidance), and leave the slots of the others untouched."""
    cfgs = [
        GenerationConfig(max_new_tokens=20, seed=3, **FP32),
        GenerationConfig(max_new_tokens=gen.image_tokens + 4, seed=5, **FP32),
        GenerationConfig(max_new_tokens=gen.image_tokens + 2, seed=7, image=SamplingSettings(cfg_scale=2.0), **FP32),
    ]
    prompts = [Prompt(text="A small"), Prompt(text="Play C4 then"), Prompt(text="x", then="image")]
    alone = [gen.generate(p, c)[0].ids for p, c in zip(prompts, cfgs)]
    gen.model.setup_cache(8, gen.context)
    free, live, logits, done = [7, 5, 2, 1, 0], [], {}, {}
    joins = {0: 0, 3: 1, 6: 2}  # step -> prompt that joins then
    for step in range(200):
        if step in joins:
            k = joins[step]
            run = gen.plan([prompts[k]], cfgs[k])
            run.slots = [free.pop() for _ in range(run.rows)]
            logits[k] = gen.prefill(run)
            live.append((k, run))
        batch = []
        for k, run in list(live):
            ids, done_before = gen.sample_step(run, logits[k])
            if bool(run.sm.done().all()):
                done[k] = run.out[0]
                live.remove((k, run))
                free.extend(run.slots)
            else:
                batch.append((k, run, ids, done_before))
        if batch:
            for (k, *_), lg in zip(batch, gen.decode_runs([b[1:] for b in batch])):
                logits[k] = lg
        if not live and len(done) == len(prompts):
            break
    assert [done[k] for k in range(len(prompts))] == alone
