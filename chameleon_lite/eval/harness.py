"""Cross-modal evaluation on held-out procedural prompts, judged by the deterministic checkers (no learned judge).

Tasks (each over ``n`` prompts drawn from a seed the training corpus never used):

- ``text_to_image``: an image prompt ("Draw a large red circle at the top left."), the image read back by
  :func:`~chameleon_lite.data.checkers.check_image`; exact = the same set of shapes; per attribute too.
- ``image_to_text``: a rendered picture as a bidirectional input span; the generated caption parsed by
  :func:`~chameleon_lite.data.checkers.parse_image_caption` and compared with the picture's truth.
- ``text_to_audio``: an audio prompt ("Play C5 E5 G5 on a square wave."), the clip read back by
  :func:`~chameleon_lite.data.checkers.check_audio`; exact = the same notes in order and the same timbre.
- ``audio_to_text``: a synthesized clip as input; the caption parsed and compared.
- ``interleaved``: the first sentence of an interleaved document; the continuation must be structurally valid
  (complete image spans of exactly N ids, audio spans of whole frames, ending with ``<eos>``) and each media span
  must show what the sentence before it describes.
- ``instruction``: a request for 1-3 media items in order ("a large red circle in the top left, then play C5 E5 G5
  on a square wave"), given as a complete request (the model's first id opens a picture or a clip: ``then="media"``);
  exact = structurally valid, exactly the requested items in that order, each read back exact.

Plus the tokenizers' reconstruction on the same held-out media (image PSNR and checker agreement; audio SI-SNR
and checker agreement) and the model's per-modality perplexity on validation shards when given.
Writes ``eval.json`` and ``report.html`` (sample grids, audio players) into ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from chameleon_lite import bundle
from chameleon_lite.data import procedural as P
from chameleon_lite.data.checkers import (
    check_audio,
    check_image,
    compare_audio,
    compare_image,
    parse_audio_caption,
    parse_image_caption,
)
from chameleon_lite.data.loader import PackedLoader
from chameleon_lite.data.procedural import CorpusConfig, to_pcm16, write_corpus, write_wav
from chameleon_lite.errors import ConfigError
from chameleon_lite.eval import TASKS
from chameleon_lite.eval.report import write_report
from chameleon_lite.files import EVAL, check_output_dir, read_json, write_bytes_atomic, write_json_atomic
from chameleon_lite.generate import GenerationConfig, Generator, Prompt, SamplingSettings
from chameleon_lite.generate.engine import write_sampling_defaults
from chameleon_lite.model.transformer import token_losses
from chameleon_lite.tokenizers.audio_train import evaluate as eval_audio
from chameleon_lite.tokenizers.image import ImageVQConfig
from chameleon_lite.tokenizers.image_train import evaluate as eval_image


@dataclasses.dataclass
class EvalConfig:
    model: str
    out: str
    n: int = 100
    seed: int = 12345
    tasks: tuple[str, ...] = TASKS
    batch: int = 8
    shards: str | None = None  # validation shards for per-modality perplexity
    ppl_batches: int = 8
    text_temperature: float = 0.0
    image_temperature: float = 0.0
    audio_temperature: float = 0.0
    image_cfg: float = 1.0  # classifier-free guidance scale (1 = off)
    audio_cfg: float = 1.0
    interleaved_tokens: int = 700
    samples_in_report: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"--n must be >= 1, got {self.n}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"unknown eval task(s) {unknown}; known: {list(TASKS)}")
        if self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if self.samples_in_report < 0:
            raise ConfigError(f"--samples must be >= 0, got {self.samples_in_report}")


@dataclasses.dataclass
class Item:
    """One evaluated prompt: what was asked, what came back, and the verdict."""

    task: str
    prompt: str
    truth: Any
    output_text: str = ""
    image: np.ndarray | None = None
    audio: np.ndarray | None = None
    input_path: str | None = None
    exact: bool = False
    attributes: dict[str, bool] = dataclasses.field(default_factory=dict)
    note: str = ""


# ---------------------------------------------------------------------------------------------- prompts
def _rng(cfg: EvalConfig, task: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, TASKS.index(task)])


def _write_png(path: str, img: np.ndarray) -> str:
    Image.fromarray(np.asarray(img, np.uint8), mode="RGB").save(path)
    return path


def _write_wav(path: str, wave: np.ndarray, sr: int) -> str:
    write_wav(path, to_pcm16(np.asarray(wave, np.float32)), sr)
    return path


def sampling_settings(cfg: EvalConfig) -> dict[str, Any]:
    """Per kind of span (text, image, audio): the SamplingSettings every task generates with."""

    return {
        "text": SamplingSettings(temperature=cfg.text_temperature),
        "image": SamplingSettings(temperature=cfg.image_temperature, cfg_scale=cfg.image_cfg),
        "audio": SamplingSettings(temperature=cfg.audio_temperature, cfg_scale=cfg.audio_cfg),
    }


def write_eval_sampling(model_dir: str, fmt: str | None = None) -> str:
    """Make the sampling the evaluation uses (greedy, no guidance, by default) the model folder's own defaults
    (``generation.json``), so what ``generate`` shows with this model is what the eval numbers measure. ``fmt``: its
    prompt format (None keeps the folder's)."""

    cfg = EvalConfig(model_dir, model_dir)
    settings = {k: dataclasses.asdict(v) for k, v in sampling_settings(cfg).items()}
    return write_sampling_defaults(model_dir, settings, fmt=fmt)


def _settings(cfg: EvalConfig, max_new_tokens: int) -> Any:
    return GenerationConfig(max_new_tokens=max_new_tokens, seed=cfg.seed, **sampling_settings(cfg))


def _batched(gen, prompts: list, settings, batch: int, desc: str, progress: bool) -> list:
    docs = []
    with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress) as bar:
        for i in range(0, len(prompts), batch):
            docs += gen.generate(prompts[i : i + batch], settings)
            bar.update(len(prompts[i : i + batch]))
    return docs


# ---------------------------------------------------------------------------------------------- tasks
def eval_text_to_image(gen, cfg: EvalConfig, n_image: int) -> list[Item]:
    rng = _rng(cfg, "text_to_image")
    specs = [P.sample_image_spec(rng) for _ in range(cfg.n)]
    texts = [P.image_prompt(s, int(rng.integers(len(P.IMAGE_PROMPTS)))) for s in specs]
    docs = _batched(
        gen,
        [Prompt(text=t, then="image") for t in texts],
        _settings(cfg, n_image + 2),
        cfg.batch,
        "text→image",
        cfg.progress,
    )
    items = []
    for spec, text, doc in zip(specs, texts, docs):
        it = Item("text_to_image", text, spec)
        if doc.images:
            it.image = doc.images[0]
            m = compare_image(check_image(it.image), spec)
            it.exact, it.attributes = m.exact, m.attributes
        else:
            it.note = "no complete image"
        items.append(it)
    return items


def eval_image_to_text(gen, cfg: EvalConfig, inputs: str) -> list[Item]:
    rng = _rng(cfg, "image_to_text")
    specs = [P.sample_image_spec(rng) for _ in range(cfg.n)]
    side = gen.tokenizers.image.image_size  # drawn at the size the model sees, as the corpus draws them
    paths = [
        _write_png(os.path.join(inputs, f"image_{i:04d}.png"), P.render_image(s, side)) for i, s in enumerate(specs)
    ]
    docs = _batched(
        gen, [Prompt(images=[p], then="text") for p in paths], _settings(cfg, 48), cfg.batch, "image→text", cfg.progress
    )
    items = []
    for spec, path, doc in zip(specs, paths, docs):
        it = Item("image_to_text", "(picture)", spec, output_text=doc.text.strip(), input_path=path)
        m = compare_image(parse_image_caption(it.output_text), spec)
        it.exact, it.attributes = m.exact, m.attributes
        items.append(it)
    return items


def _audio_budget(gen, seconds: float = 2.2) -> int:
    tok = gen.tokenizers.audio
    return int(math.ceil(seconds * tok.frame_rate)) * tok.num_levels + 2


def eval_text_to_audio(gen, cfg: EvalConfig) -> list[Item]:
    rng = _rng(cfg, "text_to_audio")
    specs = [P.sample_audio_spec(rng) for _ in range(cfg.n)]
    texts = [P.audio_prompt(s, int(rng.integers(len(P.AUDIO_PROMPTS)))) for s in specs]
    docs = _batched(
        gen,
        [Prompt(text=t, then="audio") for t in texts],
        _settings(cfg, _audio_budget(gen)),
        cfg.batch,
        "text→audio",
        cfg.progress,
    )
    sr = gen.tokenizers.audio.sample_rate
    items = []
    for spec, text, doc in zip(specs, texts, docs):
        it = Item("text_to_audio", text, spec)
        if doc.audios:
            it.audio = doc.audios[0]
            m = compare_audio(check_audio(it.audio, sr), spec)
            it.exact, it.attributes = m.exact, m.attributes
        else:
            it.note = "no complete clip"
        items.append(it)
    return items


def eval_audio_to_text(gen, cfg: EvalConfig, inputs: str) -> list[Item]:
    rng = _rng(cfg, "audio_to_text")
    sr = gen.tokenizers.audio.sample_rate
    specs = [P.sample_audio_spec(rng) for _ in range(cfg.n)]
    paths = [
        _write_wav(os.path.join(inputs, f"audio_{i:04d}.wav"), P.synthesize_audio(s, sr), sr)
        for i, s in enumerate(specs)
    ]
    docs = _batched(
        gen, [Prompt(audios=[p], then="text") for p in paths], _settings(cfg, 40), cfg.batch, "audio→text", cfg.progress
    )
    items = []
    for spec, path, doc in zip(specs, paths, docs):
        it = Item("audio_to_text", "(clip)", spec, output_text=doc.text.strip(), input_path=path)
        m = compare_audio(parse_audio_caption(it.output_text), spec)
        it.exact, it.attributes = m.exact, m.attributes
        items.append(it)
    return items


def _structure_problems(doc, n_image: int, nq: int) -> list[str]:
    """What makes a generated document structurally invalid (empty list: valid)."""
    # a document ends at <eos>; an answer in a conversation at the <eot> that closes its turn
    ended = doc.settings.get("finish_reason", "eos") in ("eos", "eot") if isinstance(doc.settings, dict) else True
    media = [s for s in doc.spans if not s.from_prompt and s.kind in ("image", "audio")]
    problems = []
    if not ended:
        problems.append("no <eos> or <eot>")
    if not media:
        problems.append("no media span")
    for s in media:
        if not s.complete:
            problems.append(f"incomplete {s.kind} span")
        elif s.kind == "image" and len(s.ids) != n_image:
            problems.append(f"image span of {len(s.ids)} ids")
        elif s.kind == "audio" and len(s.ids) % nq:
            problems.append(f"audio span of {len(s.ids)} ids (not whole frames)")
    return problems


def judge_interleaved(doc, first_text: str, n_image: int, nq: int, sr: int | None) -> tuple[bool, int, int, str]:
    """(structurally valid, media spans correct, media spans, note) for one generated interleaved document.

    Valid: it ended with ``<eos>``, holds at least one media span, every image span has exactly ``n_image`` ids
    and every audio span whole frames, and no span was cut off. A media span is correct when the checker reads
    from it exactly what the sentence before it (the prompt for the first one) describes.
    """

    spans = [s for s in doc.spans if not s.from_prompt]
    problems = _structure_problems(doc, n_image, nq)
    correct, before = 0, first_text
    for s in spans:
        if s.kind == "text":
            before = s.text or ""
            continue
        if s.kind == "image" and s.image is not None:
            correct += compare_image(check_image(s.image), parse_image_caption(before)).exact
        elif s.kind == "audio" and s.audio is not None:
            correct += compare_audio(check_audio(s.audio, sr), parse_audio_caption(before)).exact
        before = ""
    n_media = sum(s.kind in ("image", "audio") for s in spans)
    return not problems, correct, n_media, "; ".join(problems)


def eval_interleaved(gen, cfg: EvalConfig, n_image: int) -> tuple[list[Item], dict[str, Any]]:
    rng = _rng(cfg, "interleaved")
    firsts = []
    for _ in range(cfg.n):
        spec = P.sample_image_spec(rng) if rng.random() < 0.5 else P.sample_audio_spec(rng)
        firsts.append(P.interleaved_text(spec, first=True))
    docs = _batched(
        gen,
        [Prompt(text=t) for t in firsts],
        _settings(cfg, cfg.interleaved_tokens),
        cfg.batch,
        "interleaved",
        cfg.progress,
    )
    nq = gen.tokenizers.vocab.audio_levels or 1
    sr = gen.tokenizers.audio.sample_rate if gen.tokenizers.audio is not None else None
    items, spans_ok, spans_all = [], 0, 0
    for text, doc in zip(firsts, docs):
        valid, ok, total, note = judge_interleaved(doc, text, n_image, nq, sr)
        spans_ok += ok
        spans_all += total
        it = Item(
            "interleaved",
            text,
            None,
            output_text=doc.text.strip(),
            exact=valid and ok == total,
            attributes={"valid": valid, "spans_correct": total > 0 and ok == total},
            note=note,
        )
        it.image = doc.images[0] if doc.images else None
        items.append(it)
    return items, {
        "spans": spans_all,
        "spans_correct": spans_ok,
        "span_accuracy": spans_ok / spans_all if spans_all else 0.0,
    }


def judge_instruction(doc, specs: list, n_image: int, nq: int, sr: int | None) -> tuple[bool, int, str]:
    """(structurally valid, requested items read back exact in order, note) for one answer to an instruction."""

    problems = _structure_problems(doc, n_image, nq)
    media = [s for s in doc.spans if not s.from_prompt and s.kind in ("image", "audio")]
    kinds = ["image" if isinstance(s, P.ImageSpec) else "audio" for s in specs]
    if [s.kind for s in media] != kinds:
        problems.append(f"media {[s.kind for s in media]} where {kinds} were asked for")
    correct = 0
    for s, spec in zip(media, specs):
        if s.kind == "image" and s.image is not None and isinstance(spec, P.ImageSpec):
            correct += compare_image(check_image(s.image), spec).exact
        elif s.kind == "audio" and s.audio is not None and isinstance(spec, P.AudioSpec):
            correct += compare_audio(check_audio(s.audio, sr), spec).exact
    return not problems, correct, "; ".join(problems)


def eval_instruction(gen, cfg: EvalConfig, n_image: int) -> tuple[list[Item], dict[str, Any]]:
    rng = _rng(cfg, "instruction")
    lo, hi = P.CorpusConfig().instruction_media
    requests = []
    for _ in range(cfg.n):
        specs = [
            P.sample_image_spec(rng) if rng.random() < 0.5 else P.sample_audio_spec(rng)
            for _ in range(int(rng.integers(lo, hi + 1)))
        ]
        requests.append((specs, P.instruction_text(specs, rng)))
    docs = _batched(
        gen,
        [Prompt(text=t, then="media") for _, t in requests],
        _settings(cfg, cfg.interleaved_tokens),
        cfg.batch,
        "instruction",
        cfg.progress,
    )
    nq = gen.tokenizers.vocab.audio_levels or 1
    sr = gen.tokenizers.audio.sample_rate if gen.tokenizers.audio is not None else None
    items, ok_all, asked = [], 0, 0
    for (specs, text), doc in zip(requests, docs):
        valid, ok, note = judge_instruction(doc, specs, n_image, nq, sr)
        ok_all += ok
        asked += len(specs)
        it = Item(
            "instruction",
            text,
            specs,
            output_text=doc.text.strip(),
            exact=valid and ok == len(specs),
            attributes={"valid": valid, "items_correct": ok == len(specs)},
            note=note,
        )
        it.image = doc.images[0] if doc.images else None
        items.append(it)
    return items, {"items": asked, "items_correct": ok_all, "item_accuracy": ok_all / asked if asked else 0.0}


# ---------------------------------------------------------------------------------------------- summaries
def summarize(items: list[Item]) -> dict[str, Any]:
    n = len(items)
    out: dict[str, Any] = {"n": n, "exact": sum(i.exact for i in items) / n if n else 0.0}
    keys = sorted({k for i in items for k in i.attributes})
    out["attributes"] = {k: sum(bool(i.attributes.get(k)) for i in items) / n for k in keys}
    return out


def tokenizer_reconstruction(model_dir: str, out: str, n: int, seed: int, progress: bool) -> dict[str, Any]:
    """Reconstruction of held-out procedural media by the model's own tokenizers."""

    folder = os.path.join(out, "heldout_media")
    # media-only documents, half image and half audio, so that every modality gets n items even for small n; the
    # pictures drawn at the size the image tokenizer reads (the corpus's size for its own tokenizers), not resized
    side = CorpusConfig().image_size
    if os.path.exists(os.path.join(model_dir, bundle.IMAGE_CONFIG)):
        side = ImageVQConfig.from_dict(
            read_json(os.path.join(model_dir, bundle.IMAGE_CONFIG), "image tokenizer config")
        ).image_size
    side = side if 32 <= side <= 1024 else CorpusConfig().image_size  # the corpus's bounds; else resized as usual
    media = CorpusConfig(image_size=side, task_weights={"caption_to_image": 1.0, "caption_to_audio": 1.0})
    manifest = write_corpus(folder, max(2 * n, 16), seed=seed, config=media, progress=progress)
    res: dict[str, Any] = {}
    if os.path.exists(os.path.join(model_dir, bundle.IMAGE_CONFIG)):
        r = eval_image(model_dir, manifest, n=n, progress=progress)
        res["image"] = {k: r[k] for k in r if isinstance(r[k], (int, float, str))}
    if os.path.exists(os.path.join(model_dir, bundle.AUDIO_CONFIG)):
        r = eval_audio(model_dir, manifest, n=n, progress=progress)
        res["audio"] = {k: r[k] for k in r if isinstance(r[k], (int, float, str))}
    return res


def perplexity(model, shards: str, batches: int, seq_len: int, batch_size: int = 4) -> dict[str, float]:
    """Per-modality perplexity of the model's next-token predictions on ``batches`` rows of validation shards."""

    loader = PackedLoader(shards, seq_len, batch_size, rank=0, world_size=1, seed=0)
    vocab = loader.vocab
    sums, counts = np.zeros(3), np.zeros(3)
    with torch.inference_mode():
        for _, b in zip(range(batches), loader):
            logits = model(b["input_ids"], b["positions"], b["doc_ids"], b["span_ids"])
            ce, _ = token_losses(logits, b["targets"])
            mod = vocab.modality(b["targets"]).long()
            mask = b["loss_mask"].bool()
            for m in range(3):
                sel = mask & (mod == m)
                sums[m] += float(ce[sel].sum())
                counts[m] += int(sel.sum())
    names = ("text", "image", "audio")
    return {names[m]: float(math.exp(sums[m] / counts[m])) for m in range(3) if counts[m]}


# ---------------------------------------------------------------------------------------------- driver
def run_eval(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate the model folder ``cfg.model``; writes eval.json and report.html into ``cfg.out``."""

    check_output_dir(cfg.out, EVAL)
    os.makedirs(cfg.out, exist_ok=True)
    # eval.json first, marking the folder as this command's (an interrupted run may be rerun into it)
    write_json_atomic(os.path.join(cfg.out, "eval.json"), {"model": os.path.abspath(cfg.model), "finished": False})
    inputs = os.path.join(cfg.out, "inputs")
    os.makedirs(inputs, exist_ok=True)
    gen = Generator.from_dir(cfg.model)
    tk = gen.tokenizers
    n_image = tk.image.tokens_per_image if tk.image is not None else 0
    results: dict[str, Any] = {"model": os.path.abspath(cfg.model), "config": dataclasses.asdict(cfg), "tasks": {}}
    items: dict[str, list[Item]] = {}
    t_all = time.perf_counter()
    for task in cfg.tasks:
        needs = {
            "text_to_image": ("image",),
            "image_to_text": ("image",),
            "text_to_audio": ("audio",),
            "audio_to_text": ("audio",),
            "instruction": ("image", "audio"),
        }.get(task, ())
        missing = [m for m in needs if getattr(tk, m) is None]
        if missing:
            log(f"{task}: skipped (the model has no {' or '.join(missing)} tokenizer)")
            continue
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if task == "text_to_image":
            items[task] = eval_text_to_image(gen, cfg, n_image)
        elif task == "image_to_text":
            items[task] = eval_image_to_text(gen, cfg, inputs)
        elif task == "text_to_audio":
            items[task] = eval_text_to_audio(gen, cfg)
        elif task == "audio_to_text":
            items[task] = eval_audio_to_text(gen, cfg, inputs)
        elif task == "interleaved":
            items[task], extra = eval_interleaved(gen, cfg, n_image)
        else:
            items[task], extra = eval_instruction(gen, cfg, n_image)
        res = {**summarize(items[task]), **extra, "seconds": time.perf_counter() - t0}
        results["tasks"][task] = res
        log(f"{task}: exact {res['exact']:.1%} of {res['n']} ({res['seconds']:.0f} s)")
    results["tokenizers"] = tokenizer_reconstruction(cfg.model, cfg.out, min(cfg.n, 200), cfg.seed + 1, cfg.progress)
    if cfg.shards:
        results["perplexity"] = perplexity(
            gen.model, cfg.shards, cfg.ppl_batches, min(512, gen.model.config.max_seq_len)
        )
    results["seconds"] = time.perf_counter() - t_all
    write_bytes_atomic(os.path.join(cfg.out, "eval.json"), json.dumps(results, indent=2, default=str).encode())
    write_report(
        cfg.out,
        results,
        items,
        sample_rate=tk.audio.sample_rate if tk.audio is not None else None,
        limit=cfg.samples_in_report,
    )
    return results
