"""The held-out eval of requests in a person's own words: reserved phrasing, reserved combinations, follow-ups,
out-of-scope questions, case and punctuation variants, and a sweep of the guidance scale.

Every request comes from :func:`chameleon_lite.data.grammar.sample_eval_case`, which words it only with the grammar
entries reserved for evaluation (a training corpus built with ``split="train"`` never emits them; the test of the
grammar enforces it), from a seed no corpus uses. Given the training corpora's manifests (``corpora``), the eval
checks them and reports what it found beside its numbers (:func:`~chameleon_lite.data.grammar.reserved_overlap`:
reserved entries, reserved combinations, eval requests word for word, the eval's seed).

Tasks (``n`` cases each; the judges are the procedural checkers for media and the grammar's parser for text):

- ``text_to_image``, ``text_to_audio``: one picture / one clip asked for; exact = the answer holds exactly that one
  item, complete, read back by the checker as asked (per attribute too), and the turn ended.
- ``reserved_combination``: an item whose attribute pair (e.g. a colour with a shape) no training corpus shows.
- ``multi_item``: 2-3 items in order; exact = every item, in order, right.
- ``caption``: a picture or clip given with a question; the answer's text is judged by meaning (:func:`meaning.
  same_meaning`: the whole grammar, not one phrasing), with no media in it.
- ``followup``: a request, the model's own answer, then an edit ("now make it blue", "play it an octave higher",
  "what did you just play?"); judged against the edited request, a ``describe`` against what the checker reads
  from the model's own first answer.
- ``out_of_scope``: a question the model cannot serve; right = a text answer with no picture or clip and no
  item described in it (the grammar's parser finds none).
- ``case_variants``: a text->image or text->audio request and the same request in lower case, UPPER case, Title
  Case and without punctuation; reported: how often a variant is judged as its original was (consistency) and
  each variant's accuracy.

A model trained on conversations (generation.json ``"format": "chat"``) is asked in a user turn; a model trained
on documents gets the request as a plain prompt (media tasks with ``then="media"``, as its own eval did) and has no
follow-up task. Writes ``eval.json``, ``items.jsonl`` (every request, answer and verdict) and ``report.html`` into
``out``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from chameleon_lite.data import grammar, meaning
from chameleon_lite.data import procedural as P
from chameleon_lite.data.checkers import check_audio, check_image, compare_audio, compare_image
from chameleon_lite.errors import ConfigError
from chameleon_lite.eval.harness import Item, _audio_budget, _batched, _write_png, _write_wav, judge_instruction
from chameleon_lite.eval.report import write_report
from chameleon_lite.files import EVAL, check_output_dir, read_json, write_bytes_atomic, write_json_atomic
from chameleon_lite.generate import Generator, Prompt
from chameleon_lite.generate.document import close_turn

TASKS = grammar.EVAL_TASKS + ("case_variants",)
VARIANTS = ("lower", "upper", "title", "no_punctuation")
DEFAULT_SEED = 424242  # no corpus of the project's recipes uses it; checked against the corpora given


@dataclasses.dataclass
class HeldoutConfig:
    model: str
    out: str
    n: int = 200
    seed: int = DEFAULT_SEED
    tasks: tuple[str, ...] = TASKS
    batch: int = 16
    corpora: tuple[str, ...] = ()  # manifests of the corpora the model was trained on, checked for overlap
    format: str | None = None  # "chat" | "plain"; None: the model's own (generation.json)
    cfg_scales: tuple[float, ...] = ()  # guidance scales swept on text->image and text->audio
    sweep_n: int = 100
    variants_n: int | None = None  # cases of case_variants (each asked five ways); None: n
    samples_in_report: int = 12
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n < 1 or self.sweep_n < 1 or self.batch < 1:
            raise ConfigError("n, sweep_n and batch must be >= 1")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"unknown held-out task(s) {unknown}; known: {list(TASKS)}")
        if self.format not in (None, "chat", "plain"):
            raise ConfigError(f"format must be chat or plain, got {self.format!r}")
        if any(not s >= 0 for s in self.cfg_scales):
            raise ConfigError(f"guidance scales must be >= 0, got {self.cfg_scales}")


# ---------------------------------------------------------------------------------------------- cases
def cases(task: str, n: int, seed: int) -> list[dict[str, Any]]:
    """The ``n`` held-out cases of ``task`` for ``seed`` (the same seed, the same cases)."""
    rng = np.random.default_rng([seed, TASKS.index(task)])
    if task == "case_variants":
        out = []
        for _ in range(n):
            case = grammar.sample_eval_case("text_to_image" if rng.random() < 0.5 else "text_to_audio", rng)
            out.append({**case, "task": task, "variants": {v: variant(case["request"], v) for v in VARIANTS}})
        return out
    return [grammar.sample_eval_case(task, rng) for _ in range(n)]


def variant(text: str, kind: str) -> str:
    """The request in lower case, UPPER case, Title Case, or without sentence punctuation."""
    if kind == "lower":
        return text.lower()
    if kind == "upper":
        return text.upper()
    if kind == "title":
        return text.title()
    return re.sub(r"\s+", " ", re.sub(r"[.,!?;:]", " ", text)).strip()


def _kind(spec: Any) -> str:
    return "image" if isinstance(spec, P.ImageSpec) else "audio"


# ---------------------------------------------------------------------------------------------- judges
class _Judge:
    """The model's shapes (image ids, audio levels, sample rate) the judges need."""

    def __init__(self, gen: Generator) -> None:
        tk = gen.tokenizers
        self.n_image = tk.image.tokens_per_image if tk.image is not None else 0
        self.nq = tk.vocab.audio_levels or 1
        self.sr = tk.audio.sample_rate if tk.audio is not None else None

    def media(self, doc, truth: list) -> tuple[bool, dict[str, bool], str]:
        """An answer that should be exactly the items ``truth`` in order."""
        valid, correct, note = judge_instruction(doc, truth, self.n_image, self.nq, self.sr)
        attrs = {"valid": valid, "items_correct": correct == len(truth)}
        media = [s for s in doc.spans if not s.from_prompt and s.kind in ("image", "audio")]
        if len(truth) == 1 and len(media) == 1 and valid:
            s, spec = media[0], truth[0]
            if s.kind == "image" and s.image is not None and isinstance(spec, P.ImageSpec):
                attrs.update(compare_image(check_image(s.image), spec).attributes)
            elif s.kind == "audio" and s.audio is not None and isinstance(spec, P.AudioSpec):
                attrs.update(compare_audio(check_audio(s.audio, self.sr), spec).attributes)
        return valid and correct == len(truth), attrs, note

    def text(self, doc, truth: list, reading=None) -> tuple[bool, dict[str, bool], str]:
        """A text answer naming ``truth`` by meaning (or, with ``reading``, what the checker read from the model's
        own earlier media); no media in it."""
        media = [s for s in doc.spans if not s.from_prompt and s.kind in ("image", "audio")]
        ended = doc.settings.get("finish_reason") in ("eot", "eos")
        said = doc.reply.strip()
        right = meaning.same_meaning(said, truth)
        if not right and reading is not None:
            got = meaning.parse(said)
            if len(got.items) == 1 and got.out_of_scope is None and _kind(got.items[0]) == _kind(truth[0]):
                cmp = compare_image if isinstance(got.items[0], P.ImageSpec) else compare_audio
                right = cmp(reading, got.items[0]).exact
        ok = right and not media and ended
        note = "" if ok else "; ".join(x for x, bad in (("media in answer", media), ("not ended", not ended)) if bad)
        return ok, {"meaning": right, "no_media": not media}, note

    def reading(self, doc, kind: str):
        """What the checker reads from the first generated item of ``kind`` (None when there is none)."""
        for s in doc.spans:
            if not s.from_prompt and s.kind == kind == "image" and s.image is not None:
                return check_image(s.image)
            if not s.from_prompt and s.kind == kind == "audio" and s.audio is not None:
                return check_audio(s.audio, self.sr)
        return None


def _refusal(doc) -> tuple[bool, dict[str, bool], str]:
    """Right: a text answer that ended its turn, with no picture or clip and no made-up item described in it."""
    media = [s for s in doc.spans if not s.from_prompt and s.kind in ("image", "audio")]
    said = doc.reply.strip()
    invents = bool(meaning.parse(said).items) if said else False
    ended = doc.settings.get("finish_reason") in ("eot", "eos")
    ok = not media and bool(said) and not invents and ended
    problems = (
        ("media in answer", media),
        ("no text", not said),
        ("describes an item", invents),
        ("not ended", not ended),
    )
    note = "; ".join(x for x, bad in problems if bad)
    return ok, {"no_media": not media, "text": bool(said), "no_invented_item": not invents}, note


# ---------------------------------------------------------------------------------------------- driver
class _Run:
    def __init__(self, cfg: HeldoutConfig, gen: Generator, inputs: str) -> None:
        self.cfg, self.gen, self.inputs = cfg, gen, inputs
        self.chat = (cfg.format or gen.format) == "chat"
        self.judge = _Judge(gen)
        self.base = gen.default_config(seed=cfg.seed)
        self.n_inputs = 0

    def budget(self, items: list) -> int:
        per = {"image": self.judge.n_image + 2}
        if self.gen.tokenizers.audio is not None:
            per["audio"] = _audio_budget(self.gen)
        return 32 + sum(per.get(_kind(s), 0) for s in items)

    def settings(self, max_new_tokens: int, scale: float | None = None):
        cfg = dataclasses.replace(self.base, max_new_tokens=min(max_new_tokens, self.gen.context - 64))
        if scale is not None:
            cfg.image = dataclasses.replace(cfg.image, cfg_scale=scale)
            cfg.audio = dataclasses.replace(cfg.audio, cfg_scale=scale)
        return cfg

    def prompt(self, text: str, media_task: bool, images=(), audios=(), history=()) -> Prompt:
        if self.chat:
            return Prompt(text=text, images=images, audios=audios, chat=True, history=history)
        return Prompt(text=text, images=images, audios=audios, then="media" if media_task else None)

    def generate(self, prompts: list[Prompt], max_new_tokens: int, desc: str, scale: float | None = None) -> list:
        return _batched(
            self.gen, prompts, self.settings(max_new_tokens, scale), self.cfg.batch, desc, self.cfg.progress
        )

    def input_file(self, spec: Any) -> str:
        i, self.n_inputs = self.n_inputs, self.n_inputs + 1
        if isinstance(spec, P.ImageSpec):
            side = self.gen.tokenizers.image.image_size
            return _write_png(os.path.join(self.inputs, f"image_{i:04d}.png"), P.render_image(spec, side))
        sr = self.judge.sr
        return _write_wav(os.path.join(self.inputs, f"audio_{i:04d}.wav"), P.synthesize_audio(spec, sr), sr)

    # ---- tasks
    def media_task(self, task: str, cs: list[dict], scale: float | None = None) -> list[Item]:
        budget = max(self.budget(c["truth"]) for c in cs)
        docs = self.generate([self.prompt(c["request"], True) for c in cs], budget, task, scale)
        return [self._media_item(task, c["request"], c["truth"], d) for c, d in zip(cs, docs)]

    def _media_item(self, task: str, request: str, truth: list, doc) -> Item:
        it = Item(task, request, [dataclasses.asdict(s) for s in truth], output_text=doc.reply.strip())
        it.exact, it.attributes, it.note = self.judge.media(doc, truth)
        it.image = doc.images[0] if doc.images else None
        it.audio = doc.audios[0] if doc.audios else None
        return it

    def caption(self, cs: list[dict]) -> list[Item]:
        prompts = []
        for c in cs:
            path = self.input_file(c["input"])
            img, aud = ([path], []) if isinstance(c["input"], P.ImageSpec) else ([], [path])
            p = self.prompt(c["request"], False, img, aud)
            prompts.append(p if self.chat else dataclasses.replace(p, then="text"))
            c["path"] = path
        docs = self.generate(prompts, 64, "caption")
        items = []
        for c, d in zip(cs, docs):
            it = Item("caption", c["request"], dataclasses.asdict(c["input"]), output_text=d.reply.strip())
            it.input_path = c["path"]
            it.exact, it.attributes, it.note = self.judge.text(d, c["truth"])
            items.append(it)
        return items

    def followup(self, cs: list[dict]) -> list[Item]:
        firsts = self.generate(
            [self.prompt(c["first_request"], True) for c in cs],
            max(self.budget([c["first"]]) for c in cs),
            "follow-up 1",
        )
        live = [(c, d) for c, d in zip(cs, firsts) if d.settings.get("finish_reason") in ("eot", "eos")]
        budget = max((self.budget(c["truth"]) for c in cs), default=64)
        seconds = self.generate(
            [self.prompt(c["request"], True, history=close_turn(d.conversation, self.gen.vocab)) for c, d in live],
            budget,
            "follow-up 2",
        )
        answers = {id(c): d for (c, _), d in zip(live, seconds)}
        items = []
        for c, first in zip(cs, firsts):
            edit = c["edit"]
            it = Item("followup", f"{c['first_request']} → {c['request']}", [dataclasses.asdict(s) for s in c["truth"]])
            it.attributes = {"edit": edit.op}  # replaced below; kept when the first answer never ended
            doc = answers.get(id(c))
            if doc is None:
                it.note = "first answer did not end its turn"
                it.attributes = {}
                items.append(it)
                continue
            it.output_text = doc.reply.strip()
            if edit.op == "describe":
                it.exact, it.attributes, it.note = self.judge.text(
                    doc, c["truth"], self.judge.reading(first, _kind(c["first"]))
                )
            else:
                it.exact, it.attributes, it.note = self.judge.media(doc, c["truth"])
                it.image = doc.images[0] if doc.images else None
                it.audio = doc.audios[0] if doc.audios else None
            it.attributes = {**it.attributes, f"op_{edit.op}": it.exact}
            items.append(it)
        return items

    def out_of_scope(self, cs: list[dict]) -> list[Item]:
        docs = self.generate([self.prompt(c["request"], False) for c in cs], 96, "out of scope")
        items = []
        for c, d in zip(cs, docs):
            it = Item("out_of_scope", c["request"], dataclasses.asdict(c["out_of_scope"]), output_text=d.reply.strip())
            it.exact, it.attributes, it.note = _refusal(d)
            it.image = d.images[0] if d.images else None
            items.append(it)
        return items

    def case_variants(self, cs: list[dict]) -> tuple[list[Item], dict[str, Any]]:
        texts = [[c["request"]] + [c["variants"][v] for v in VARIANTS] for c in cs]
        flat = [t for ts in texts for t in ts]
        budget = max(self.budget(c["truth"]) for c in cs)
        docs = self.generate([self.prompt(t, True) for t in flat], budget, "case variants")
        items, same, right = [], dict.fromkeys(VARIANTS, 0), dict.fromkeys(("original",) + VARIANTS, 0)
        for k, c in enumerate(cs):
            got = [
                self._media_item("case_variants", t, c["truth"], d) for t, d in zip(texts[k], docs[5 * k : 5 * k + 5])
            ]
            for name, it in zip(("original",) + VARIANTS, got):
                right[name] += it.exact
                if name != "original":
                    same[name] += it.exact == got[0].exact
            first = got[0]
            first.attributes = {
                "all_same": all(g.exact == first.exact for g in got),
                **{v: g.exact for v, g in zip(VARIANTS, got[1:])},
            }
            items.append(first)
        n = len(cs)
        extra = {
            "consistency": sum(same.values()) / (n * len(VARIANTS)),
            "consistency_by_variant": {v: same[v] / n for v in VARIANTS},
            "accuracy_by_variant": {v: right[v] / n for v in right},
        }
        return items, extra


def _summary(items: list[Item]) -> dict[str, Any]:
    n = len(items)
    out: dict[str, Any] = {"n": n, "exact": sum(i.exact for i in items) / n if n else 0.0}
    keys = sorted({k for i in items for k, v in i.attributes.items() if isinstance(v, bool)})
    out["attributes"] = {k: sum(i.attributes.get(k) is True for i in items) / n for k in keys}
    return out


NEEDS = {"text_to_image": ("image",), "text_to_audio": ("audio",), "out_of_scope": ()}  # others: both


def run_heldout(cfg: HeldoutConfig, log: Callable[[str], None] = print, gen: Generator | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (or the Generator ``gen`` given for it) on the held-out requests; writes eval.json,
    items.jsonl and report.html into ``cfg.out``."""
    check_output_dir(cfg.out, EVAL)
    os.makedirs(cfg.out, exist_ok=True)
    write_json_atomic(os.path.join(cfg.out, "eval.json"), {"model": os.path.abspath(cfg.model), "finished": False})
    inputs = os.path.join(cfg.out, "inputs")
    os.makedirs(inputs, exist_ok=True)
    gen = gen or Generator.from_dir(cfg.model)
    run = _Run(cfg, gen, inputs)
    t_all = time.perf_counter()
    results: dict[str, Any] = {
        "suite": "heldout",
        "model": os.path.abspath(cfg.model),
        "format": "chat" if run.chat else "plain",
        "config": dataclasses.asdict(cfg),
        "sampling": {k: dataclasses.asdict(v) for k, v in gen.sampling.items()},
        "grammar": grammar.grammar_size(),
        "tasks": {},
    }
    count = {"case_variants": cfg.variants_n or cfg.n}
    all_cases = {t: cases(t, count.get(t, cfg.n), cfg.seed) for t in cfg.tasks}
    texts = [c.get("first_request", "") for cs in all_cases.values() for c in cs]
    texts += [c["request"] for cs in all_cases.values() for c in cs]
    results["overlap"] = [grammar.reserved_overlap(m, [t for t in texts if t], [cfg.seed]) for m in cfg.corpora]
    for o in results["overlap"]:
        log(f"overlap with {o['manifest']}: {'clean' if o['clean'] else 'NOT clean'} ({_overlap_line(o)})")
    results["recipe_seeds"] = _recipe_seeds(cfg.model, cfg.seed)
    if results["recipe_seeds"]["seeds"]:
        used = results["recipe_seeds"]["eval_seed_used"]
        log(f"corpus seeds in the model's RECIPE.json: {results['recipe_seeds']['seeds']}; eval seed used: {used}")
    items: dict[str, list[Item]] = {}
    for task in cfg.tasks:
        cs = all_cases[task]
        if task == "followup" and not run.chat:
            log("followup: skipped (the model is not a conversation model: no earlier turn to refer to)")
            continue
        missing = [m for m in NEEDS.get(task, ("image", "audio")) if getattr(gen.tokenizers, m) is None]
        if missing:
            log(f"{task}: skipped (the model has no {' or '.join(missing)} tokenizer)")
            continue
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if task in ("text_to_image", "text_to_audio", "reserved_combination", "multi_item"):
            items[task] = run.media_task(task, cs)
        elif task == "caption":
            items[task] = run.caption(cs)
            extra["by_kind"] = _by(items[task], [_kind(c["input"]) for c in cs])
        elif task == "followup":
            items[task] = run.followup(cs)
            extra["by_edit"] = _by(items[task], [c["edit"].op for c in cs])
        elif task == "out_of_scope":
            items[task] = run.out_of_scope(cs)
        else:
            items[task], extra = run.case_variants(cs)
        res = {**_summary(items[task]), **extra, "seconds": time.perf_counter() - t0}
        results["tasks"][task] = res
        log(f"{task}: exact {res['exact']:.1%} of {res['n']} ({res['seconds']:.0f} s)")
    if cfg.cfg_scales and gen.tokenizers.image is not None and gen.tokenizers.audio is not None:
        results["cfg_sweep"] = _sweep(run, cfg, log)
    results["seconds"] = time.perf_counter() - t_all
    write_bytes_atomic(os.path.join(cfg.out, "eval.json"), json.dumps(results, indent=2, default=str).encode())
    lines = [
        json.dumps({"task": t, "request": i.prompt, "answer": i.output_text, "exact": i.exact, "note": i.note,
                    "attributes": i.attributes, "truth": i.truth}, default=str)
        for t, its in items.items() for i in its
    ]  # fmt: skip
    write_bytes_atomic(os.path.join(cfg.out, "items.jsonl"), ("\n".join(lines) + "\n").encode())
    tk = gen.tokenizers
    sr = tk.audio.sample_rate if tk.audio is not None else None
    write_report(cfg.out, results, items, sample_rate=sr, limit=cfg.samples_in_report)
    return results


def _recipe_seeds(model: str, seed: int) -> dict[str, Any]:
    """The corpus seeds a model folder's RECIPE.json records for its training stages, and whether ``seed`` is one."""
    path = os.path.join(model, "RECIPE.json")
    seeds: set[int] = set()
    if os.path.isfile(path):
        rec = read_json(path, "model recipe")
        stages = rec.get("stages") if isinstance(rec.get("stages"), dict) else {}
        for st in [x for v in stages.values() for x in (v if isinstance(v, list) else [v])]:
            corpus = st.get("corpus") if isinstance(st, dict) else None
            if isinstance(corpus, dict) and isinstance(corpus.get("seed"), int):
                seeds.add(corpus["seed"])
            qs = st.get("config") if isinstance(st, dict) else None
            if isinstance(qs, dict) and isinstance(qs.get("seed"), int):  # the quickstart: corpus seed and seed+1000
                seeds.update((qs["seed"], qs["seed"] + 1000))
    return {"seeds": sorted(seeds), "eval_seed_used": seed in seeds}


def _by(items: list[Item], keys: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, list[bool]] = {}
    for it, k in zip(items, keys):
        out.setdefault(k, []).append(it.exact)
    return {k: {"n": len(v), "exact": sum(v) / len(v)} for k, v in sorted(out.items())}


def _overlap_line(o: dict[str, Any]) -> str:
    keys = ("reserved_entries", "reserved_signatures", "reserved_combinations", "eval_texts_in_corpus")
    return ", ".join(f"{k} {o[k]}" for k in keys) + f", eval seed used: {o['eval_seed_used']}"


def _sweep(run: _Run, cfg: HeldoutConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """text->image and text->audio at each guidance scale, on the first ``sweep_n`` cases of each."""
    rows = []
    for scale in cfg.cfg_scales:
        row: dict[str, Any] = {"scale": scale}
        for task in ("text_to_image", "text_to_audio"):
            its = run.media_task(task, cases(task, cfg.sweep_n, cfg.seed), scale=scale)
            row[task] = sum(i.exact for i in its) / len(its)
        rows.append(row)
        log(f"guidance {scale:g}: text->image {row['text_to_image']:.1%}, text->audio {row['text_to_audio']:.1%}")
    best = {t: max(rows, key=lambda r: r[t])["scale"] for t in ("text_to_image", "text_to_audio")}
    return {"n": cfg.sweep_n, "rows": rows, "best": best}
