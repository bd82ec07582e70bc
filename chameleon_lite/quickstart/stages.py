"""The quickstart's stages and its time budget (see :mod:`chameleon_lite.quickstart`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from typing import Any

from chameleon_lite import bundle
from chameleon_lite.data.procedural import write_corpus
from chameleon_lite.eval.harness import EvalConfig, run_eval, write_eval_sampling
from chameleon_lite.files import write_json_atomic, write_text_atomic
from chameleon_lite.generate import Generator, Prompt
from chameleon_lite.pipeline import Pipeline, Stage, stage_seconds
from chameleon_lite.pretokenize import pretokenize
from chameleon_lite.quickstart import BEFORE_PRETRAIN, CALIBRATION, DEMO_PROMPT, QuickstartConfig
from chameleon_lite.tokenizers import audio_train, image_train
from chameleon_lite.tokenizers.loader import vocab_from_tokenizer_dir
from chameleon_lite.tokenizers.text import TextTokenizer, iter_manifest_texts
from chameleon_lite.train import budget
from chameleon_lite.train.config import PretrainConfig
from chameleon_lite.train.export import export_run
from chameleon_lite.train.plotting import plot_run
from chameleon_lite.train.schedule import decay_start
from chameleon_lite.train.tokenizer_loop import train_audio_codec, train_image_vq
from chameleon_lite.train.trainer import train


def _copy_artifacts(src: str, dst: str, names: tuple[str, ...]) -> None:
    os.makedirs(dst, exist_ok=True)
    for n in names:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))


# ---------------------------------------------------------------------------------------------- the stages
def _corpus(cfg: QuickstartConfig) -> None:
    write_corpus(cfg.path("corpus"), cfg.corpus_docs, seed=cfg.seed, workers=cfg.workers)
    if cfg.tokenizer_subset:  # the tokenizers' documents: the manifest's first lines
        with open(cfg.path("corpus", "manifest.jsonl")) as f:
            head = [line for _, line in zip(range(cfg.tokenizer_subset), f)]
        write_text_atomic(cfg.tokenizer_manifest, "".join(head))


def _heldout(cfg: QuickstartConfig) -> None:
    write_corpus(cfg.path("heldout"), cfg.n_heldout, seed=cfg.seed + 1000, workers=cfg.workers)


def _text_tokenizer(cfg: QuickstartConfig) -> None:
    texts = iter_manifest_texts(cfg.tokenizer_manifest)
    TextTokenizer.train(texts, vocab_size=cfg.text_vocab).save(cfg.path("tokenizers"))


def _image_tokenizer(cfg: QuickstartConfig) -> None:
    out = cfg.path("image_vq")
    steps = cfg.image_train_steps
    train_image_vq(cfg.tokenizer_manifest, out, image_train.quickstart_config(steps, seed=cfg.seed))
    _copy_artifacts(out, cfg.path("tokenizers"), (bundle.IMAGE_WEIGHTS, bundle.IMAGE_CONFIG))


def _audio_tokenizer(cfg: QuickstartConfig) -> None:
    out = cfg.path("audio_codec")
    steps = cfg.audio_train_steps
    train_audio_codec(cfg.tokenizer_manifest, out, audio_train.quickstart_config(steps, seed=cfg.seed))
    _copy_artifacts(out, cfg.path("tokenizers"), (bundle.AUDIO_WEIGHTS, bundle.AUDIO_CONFIG))


def _vocab(cfg: QuickstartConfig) -> None:
    tok = cfg.path("tokenizers")
    vocab_from_tokenizer_dir(tok).save(os.path.join(tok, bundle.VOCAB_FILE))


def _tokenize(cfg: QuickstartConfig) -> None:
    manifest = cfg.path("corpus", "manifest.jsonl")
    pretokenize(
        manifest, cfg.path("tokenizers"), cfg.path("shards"), workers=cfg.workers, val_fraction=0.03, seed=cfg.seed
    )


def pretrain_config(
    cfg: QuickstartConfig, steps: int = 1, warmup: int = 0, stop_after: int = 0, decay_frac: float | None = None
) -> PretrainConfig:
    """The quickstart's pretraining run at ``steps`` steps (a WSD run decays over the last ``decay_frac`` of them:
    the quickstart's share until the last plan fixes it)."""
    return PretrainConfig(
        model=cfg.train_model,
        model_overrides=dict(cfg.train_overrides),
        data=cfg.path("shards", "train"),
        val_data=cfg.path("shards", "val"),
        out=cfg.path("run"),
        tokenizers=cfg.path("tokenizers"),
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        steps=steps,
        stop_after=stop_after,
        lr=cfg.lr,
        schedule=cfg.schedule,
        decay_frac=cfg.decay_frac if decay_frac is None else decay_frac,
        warmup=warmup,
        ckpt_every=max(25, steps // 10),
        val_every=max(25, steps // 15),
        val_batches=4,
        seed=cfg.seed,
        parallel="none",
        compile=cfg.compile,
    )


def _pretrain(cfg: QuickstartConfig) -> None:
    calib = cfg.path(CALIBRATION)
    first = calibrated_train_steps(cfg)
    warmup = min(50, first // 10)
    wsd = cfg.schedule == "wsd"

    def timed(phase: str, run_cfg: PretrainConfig) -> None:
        t0 = time.perf_counter()
        train(run_cfg)
        budget.add_seconds(calib, phase, time.perf_counter() - t0)

    steps = budget.replanned_steps(calib)
    if steps is None:
        # the warm-up's learning rates do not depend on the step count: run it, then fit the count to the step time
        # the run itself measured
        if warmup:
            timed("warmup", pretrain_config(cfg, first, warmup, stop_after=warmup))
        share = budget.PLAN_SHARE if wsd else budget.STEP_TIME_SHARE  # a WSD plan is corrected where it decays
        steps = budget.replan_steps(
            calib, cfg.path("run"), first, warmup, cfg.min_train_steps, cfg.max_train_steps, share=share
        )
    if not wsd:
        train(pretrain_config(cfg, steps, warmup))
        return
    final = budget.decay_plan(calib)
    if final is None:
        # nor does the stable phase's rate: run it, then fit the decay to the wall time left
        start = decay_start(steps, warmup, cfg.decay_frac)
        timed("stable", pretrain_config(cfg, steps, warmup, stop_after=start))
        final = budget.plan_decay(calib, start, warmup, cfg.max_train_steps)
    total, frac = final
    timed("decay", pretrain_config(cfg, total, warmup, decay_frac=frac))


def _curves(cfg: QuickstartConfig) -> None:
    plot_run(cfg.path("run"), title="quickstart: tiny preset on the procedural corpus")


def _export(cfg: QuickstartConfig) -> None:
    export_run(cfg.path("run"), cfg.path("model"), tokenizers_dir=cfg.path("tokenizers"))
    write_eval_sampling(cfg.path("model"))  # `generate --model` and the demo document sample as the eval does


def _evaluate(cfg: QuickstartConfig) -> None:
    shards = cfg.path("shards", "val")
    run_eval(
        EvalConfig(model=cfg.path("model"), out=cfg.path("eval"), n=cfg.eval_n, seed=cfg.seed + 2000, shards=shards)
    )


def _demo(cfg: QuickstartConfig) -> None:
    gen = Generator.from_dir(cfg.path("model"))
    settings = gen.default_config(max_new_tokens=400, seed=cfg.seed)
    gen.generate(Prompt(text=DEMO_PROMPT, then="media"), settings)[0].save(cfg.path("demo"))


def build_stages(cfg: QuickstartConfig) -> list[Stage]:
    def stage(name, fn, params, outputs=(), resumable=False) -> Stage:
        return Stage(name, functools.partial(fn, cfg), params, list(outputs), resumable)

    # the tokenizers' documents, when not the whole corpus (left out otherwise: earlier runs' stages keep their keys)
    subset = {"tokenizer_docs": cfg.tokenizer_subset} if cfg.tokenizer_subset else {}

    return [
        stage("corpus", _corpus, {"n": cfg.corpus_docs, "seed": cfg.seed, **subset}, [cfg.path("corpus")]),
        stage("heldout", _heldout, {"n": cfg.n_heldout, "seed": cfg.seed + 1000}, [cfg.path("heldout")]),
        stage(
            "text-tokenizer",
            _text_tokenizer,
            {"vocab": cfg.text_vocab, **subset},
            [cfg.path("tokenizers", bundle.TEXT_FILE)],
        ),  # fmt: skip
        # the whole training recipe, not only its step count: a changed recipe trains the tokenizer again rather
        # than resuming the old one's checkpoints with new settings
        stage(
            "image-tokenizer",
            _image_tokenizer,
            {**image_train.quickstart_config(cfg.image_train_steps, seed=cfg.seed).to_dict(), **subset},
            [cfg.path("image_vq")],
            True,
        ),
        stage(
            "audio-tokenizer",
            _audio_tokenizer,
            {**audio_train.quickstart_config(cfg.audio_train_steps, seed=cfg.seed).to_dict(), **subset},
            [cfg.path("audio_codec")],
            True,
        ),
        stage("vocab", _vocab, {}, [cfg.path("tokenizers", bundle.VOCAB_FILE)]),
        stage("tokenize", _tokenize, {}, [cfg.path("shards")], True),
        stage(
            "pretrain",
            _pretrain,
            {
                "budget_minutes": cfg.budget_minutes,
                "model": cfg.train_model,
                "overrides": cfg.train_overrides,
                "lr": cfg.lr,
                "compile": cfg.compile,
                "schedule": [cfg.schedule, cfg.decay_frac],
            },
            [cfg.path("run")],
            True,
        ),
        stage("curves", _curves, {}),
        stage("export", _export, {}, [cfg.path("model")]),
        stage("eval", _evaluate, {"n": cfg.eval_n}, [cfg.path("eval")]),
        stage("demo", _demo, {"prompt": DEMO_PROMPT}, [cfg.path("demo")]),
    ]


# ---------------------------------------------------------------------------------------------- time budget
def spent_minutes(cfg: QuickstartConfig, names: tuple[str, ...]) -> float:
    """Wall minutes the finished stages ``names`` took (a stage not finished counts 0)."""
    times = stage_seconds(cfg.out)
    return sum(times.get(n, 0.0) for n in names) / 60.0


def pretrain_minutes(cfg: QuickstartConfig, spent: float) -> float:
    """Minutes pretraining gets after ``spent`` minutes of earlier stages: what is left of the budget less the
    reserve for the stages after it, and never less than ``pretrain_share`` of the budget."""
    left = cfg.budget_minutes * (1.0 - cfg.reserve_share) - spent
    return max(cfg.budget_minutes * cfg.pretrain_share, left)


def calibrated_train_steps(cfg: QuickstartConfig) -> int:
    """The pretraining step count that fits :func:`pretrain_minutes` on this machine (measured once, then read
    back from calibration.json so a resumed run keeps its learning-rate schedule)."""
    key = {
        "model": cfg.train_model,
        "overrides": cfg.train_overrides,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "budget_minutes": cfg.budget_minutes,
        "pretrain_share": cfg.pretrain_share,
        "reserve_share": cfg.reserve_share,
        "compile": cfg.compile,
        "schedule": [cfg.schedule, cfg.decay_frac],
    }
    saved = budget.read_plan(cfg.path(CALIBRATION), key)
    if saved is not None:
        return int(saved["steps"])
    vocab = vocab_from_tokenizer_dir(cfg.path("tokenizers"))
    step_s = budget.measure_step_seconds(pretrain_config(cfg), vocab.size, shards=cfg.path("shards", "train"))
    spent = spent_minutes(cfg, BEFORE_PRETRAIN)
    minutes = pretrain_minutes(cfg, spent)
    steps = budget.fit_steps(minutes, step_s, cfg.min_train_steps, cfg.max_train_steps)
    rec = {
        "key": key,
        "step_seconds": round(step_s, 4),
        "steps": steps,
        "minutes_before": round(spent, 2),
        "pretrain_minutes": round(minutes, 2),
        "tokens_per_second": round(cfg.seq_len * cfg.batch_size / step_s, 1),
    }
    write_json_atomic(cfg.path(CALIBRATION), rec)
    print(
        f"pretraining: {step_s:.2f} s per step of {cfg.batch_size} x {cfg.seq_len} tokens on this machine -> "
        f"{steps} steps in {minutes:.1f} of the {cfg.budget_minutes:g} budget minutes ({spent:.1f} spent before)"
    )
    return steps


def quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run (or continue) the quickstart in ``cfg.out``; returns the stage wall times and where things are."""
    pipeline = Pipeline(cfg.out)  # refuses a folder that is not a quickstart's, before any work
    t0 = time.perf_counter()
    times = pipeline.run(build_stages(cfg))
    summary = {
        "config": dataclasses.asdict(cfg),
        "seconds_this_run": time.perf_counter() - t0,
        "stage_seconds_this_run": times,
        "model": cfg.path("model"),
        "eval": cfg.path("eval", "report.html"),
        "demo": cfg.path("demo", "document.html"),
        "curves": cfg.path("run", "curves.png"),
    }
    write_json_atomic(cfg.path("quickstart.json"), summary)
    return summary
