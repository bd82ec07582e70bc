"""`chameleon-lite quickstart`: the whole loop on the procedural corpus, on one CPU.

corpus → text BPE → image VQ → audio codec → vocab → shards → pretraining (tiny) → curves → export →
evaluation → a demo interleaved document. Every stage is resumable (see :mod:`chameleon_lite.pipeline`): an
interrupted quickstart continues where it stopped; stages that train continue from their own checkpoints.

Time budget: the tokenizer step counts below are the defaults for ``budget_minutes=30`` on 2 cores (another budget
scales them linearly, never below a floor and never beyond the tokenizers' full recipes; a longer budget also
writes a proportionally larger corpus). Pretraining gets what the budget has left when it starts (the measured
time of the stages before it, minus a reserve for the evaluation after it), and never less than
``pretrain_share`` of the budget: a few timed steps of the model on this machine turn those minutes into a first
step count, and the run's own warm-up (whose learning rates do not depend on the count) then refits it to the step
time it measured. Both are stored in ``calibration.json``, so a resumed quickstart keeps the schedule it started with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

from chameleon_lite import argtypes as at
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import write_json_atomic
from chameleon_lite.pipeline import Pipeline, Stage

DEFAULT_BUDGET_MINUTES = 30.0
# the share of pretraining's minutes planned as optimiser steps at the measured step time; the rest covers validation
# passes, checkpoints and the step time drifting up later in the run (on a shared 2-core EPYC the later steps of the
# default quickstart ran up to 25 % slower than its warm-up, and with a share of 0.92 the whole run took 31.3 min)
STEP_TIME_SHARE = 0.80
# the stages before pretraining, whose measured time comes out of its budget
BEFORE_PRETRAIN = ("corpus", "heldout", "text-tokenizer", "image-tokenizer", "audio-tokenizer", "vocab", "tokenize")
DEMO_PROMPT = "a large red circle in the top left, then play C5 E5 G5 on a square wave"


@dataclasses.dataclass
class QuickstartConfig:
    """Sizes of one quickstart. Training step counts are for ``budget_minutes`` = 30 and scale with it."""

    out: str = "runs/quickstart"
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    seed: int = 0
    n_docs: int = 6000
    n_heldout: int = 300
    workers: int = 2
    text_vocab: int = 1024
    image_steps: int = 1000
    audio_steps: int = 600
    # the tokenizers' full recipes (docs/image_tokenizer_eval.json, docs/audio_codec_eval.json): a longer budget
    # goes to pretraining once they are reached
    max_image_steps: int = 4000
    max_audio_steps: int = 3000
    pretrain_share: float = 0.5
    # minutes kept for the stages after pretraining (curves, export, evaluation, demo), as a share of the budget
    reserve_share: float = 0.08
    min_train_steps: int = 30
    max_train_steps: int = 20000
    train_model: str = "tiny"
    # torch.compile the model and loss as one graph: off, because on a 2-core AVX2-only EPYC the compiled step of
    # the tiny preset (8 x 512 tokens) measured 5.65 s against about 5.3 s eager; worth trying where it pays
    compile: bool = False
    seq_len: int = 512
    batch_size: int = 8
    eval_n: int = 40
    min_scale: float = 0.05

    def __post_init__(self) -> None:
        if not self.budget_minutes > 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {self.budget_minutes}")
        if not 0 < self.pretrain_share < 1:
            raise ConfigError(f"pretrain_share must be in (0, 1), got {self.pretrain_share}")
        if not 0 <= self.reserve_share < 1:
            raise ConfigError(f"reserve_share must be in [0, 1), got {self.reserve_share}")
        for name in (
            "n_docs",
            "n_heldout",
            "workers",
            "text_vocab",
            "image_steps",
            "audio_steps",
            "max_image_steps",
            "max_audio_steps",
            "min_train_steps",
            "max_train_steps",
            "eval_n",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def scale(self) -> float:
        return max(self.min_scale, self.budget_minutes / DEFAULT_BUDGET_MINUTES)

    def steps(self, base: int, cap: int) -> int:
        """A tokenizer's step count at this budget: ``base`` scaled, at least 20, at most ``cap``."""
        return min(cap, max(20, int(round(base * self.scale))))

    @property
    def image_train_steps(self) -> int:
        return self.steps(self.image_steps, self.max_image_steps)

    @property
    def audio_train_steps(self) -> int:
        return self.steps(self.audio_steps, self.max_audio_steps)

    @property
    def corpus_docs(self) -> int:
        """Training documents: ``n_docs`` at the default budget, more with a longer one (it trains for more
        tokens, so it gets more distinct pictures and clips instead of more passes over the same ones)."""
        return int(round(self.n_docs * max(1.0, self.scale)))

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)


def _copy_artifacts(src: str, dst: str, names: tuple[str, ...]) -> None:
    os.makedirs(dst, exist_ok=True)
    for n in names:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))


def build_stages(cfg: QuickstartConfig) -> list[Stage]:
    from chameleon_lite import bundle
    from chameleon_lite.tokenizers.loader import vocab_from_tokenizer_dir

    corpus, heldout, tok = cfg.path("corpus"), cfg.path("heldout"), cfg.path("tokenizers")
    manifest = os.path.join(corpus, "manifest.jsonl")
    shards, run, model_dir = cfg.path("shards"), cfg.path("run"), cfg.path("model")

    def make_corpus() -> None:
        from chameleon_lite.data.procedural import write_corpus

        write_corpus(corpus, cfg.corpus_docs, seed=cfg.seed, workers=cfg.workers)

    def make_heldout() -> None:
        from chameleon_lite.data.procedural import write_corpus

        write_corpus(heldout, cfg.n_heldout, seed=cfg.seed + 1000, workers=cfg.workers)

    def text_tokenizer() -> None:
        from chameleon_lite.tokenizers.text import TextTokenizer, iter_manifest_texts

        TextTokenizer.train(iter_manifest_texts(manifest), vocab_size=cfg.text_vocab).save(tok)

    def image_tokenizer() -> None:
        from chameleon_lite.tokenizers import image_train
        from chameleon_lite.train.tokenizer_loop import train_image_vq

        out = cfg.path("image_vq")
        train_image_vq(manifest, out, image_train.quickstart_config(steps=cfg.image_train_steps, seed=cfg.seed))
        _copy_artifacts(out, tok, (bundle.IMAGE_WEIGHTS, bundle.IMAGE_CONFIG))

    def audio_tokenizer() -> None:
        from chameleon_lite.tokenizers import audio_train
        from chameleon_lite.train.tokenizer_loop import train_audio_codec

        out = cfg.path("audio_codec")
        train_audio_codec(manifest, out, audio_train.quickstart_config(steps=cfg.audio_train_steps, seed=cfg.seed))
        _copy_artifacts(out, tok, (bundle.AUDIO_WEIGHTS, bundle.AUDIO_CONFIG))

    def vocab() -> None:
        vocab_from_tokenizer_dir(tok).save(os.path.join(tok, bundle.VOCAB_FILE))

    def tokenize() -> None:
        from chameleon_lite.pretokenize import pretokenize

        pretokenize(manifest, tok, shards, workers=cfg.workers, val_fraction=0.03, seed=cfg.seed)

    def pretrain() -> None:
        from chameleon_lite.train.config import PretrainConfig
        from chameleon_lite.train.trainer import train

        first = calibrated_train_steps(cfg, tok, os.path.join(shards, "train"))
        warmup = min(50, first // 10)

        def run_steps(steps: int, stop_after: int = 0) -> None:
            train(
                PretrainConfig(
                    model=cfg.train_model,
                    data=os.path.join(shards, "train"),
                    val_data=os.path.join(shards, "val"),
                    out=run,
                    tokenizers=tok,
                    seq_len=cfg.seq_len,
                    batch_size=cfg.batch_size,
                    steps=steps,
                    stop_after=stop_after,
                    lr=2e-3,
                    warmup=warmup,
                    ckpt_every=max(25, steps // 10),
                    val_every=max(25, steps // 15),
                    val_batches=4,
                    seed=cfg.seed,
                    parallel="none",
                    compile=cfg.compile,
                )
            )

        steps = replanned_steps(cfg)
        if steps is None:
            # the warm-up's learning rates do not depend on the step count: run it, then fit the count to the step
            # time the run itself measured (a timed step outside the run misses its loader, statistics and noise)
            if warmup:
                run_steps(first, stop_after=warmup)
            steps = replan_train_steps(cfg, run, first, warmup)
        run_steps(steps)

    def curves() -> None:
        from chameleon_lite.train.plotting import plot_run

        plot_run(run, title="quickstart: tiny preset on the procedural corpus")

    def export() -> None:
        from chameleon_lite.eval.harness import write_eval_sampling
        from chameleon_lite.train.export import export_run

        export_run(run, model_dir, tokenizers_dir=tok)
        write_eval_sampling(model_dir)  # `generate --model` and the demo document sample as the eval does

    def evaluate() -> None:
        from chameleon_lite.eval.harness import EvalConfig, run_eval

        run_eval(
            EvalConfig(
                model=model_dir,
                out=cfg.path("eval"),
                n=cfg.eval_n,
                seed=cfg.seed + 2000,
                shards=os.path.join(shards, "val"),
            )
        )

    def demo() -> None:
        from chameleon_lite.generate import Generator, Prompt

        gen = Generator.from_dir(model_dir)
        doc = gen.generate(
            Prompt(text=DEMO_PROMPT, then="media"), gen.default_config(max_new_tokens=400, seed=cfg.seed)
        )[0]
        doc.save(cfg.path("demo"))

    return [
        Stage("corpus", make_corpus, {"n": cfg.corpus_docs, "seed": cfg.seed}, [corpus]),
        Stage("heldout", make_heldout, {"n": cfg.n_heldout, "seed": cfg.seed + 1000}, [heldout]),
        Stage("text-tokenizer", text_tokenizer, {"vocab": cfg.text_vocab}, [os.path.join(tok, bundle.TEXT_FILE)]),
        Stage(
            "image-tokenizer", image_tokenizer, {"steps": cfg.image_train_steps}, [cfg.path("image_vq")], resumable=True
        ),
        Stage(
            "audio-tokenizer",
            audio_tokenizer,
            {"steps": cfg.audio_train_steps},
            [cfg.path("audio_codec")],
            resumable=True,
        ),
        Stage("vocab", vocab, {}, [os.path.join(tok, bundle.VOCAB_FILE)]),
        Stage("tokenize", tokenize, {}, [shards], resumable=True),
        Stage(
            "pretrain",
            pretrain,
            {"budget_minutes": cfg.budget_minutes, "model": cfg.train_model, "compile": cfg.compile},
            [run],
            resumable=True,
        ),
        Stage("curves", curves, {}),
        Stage("export", export, {}, [model_dir]),
        Stage("eval", evaluate, {"n": cfg.eval_n}, [cfg.path("eval")]),
        Stage("demo", demo, {"prompt": DEMO_PROMPT}, [cfg.path("demo")]),
    ]


def measure_step_seconds(
    model_name: str,
    vocab_size: int,
    seq_len: int,
    batch_size: int,
    steps: int = 5,
    compile: bool = False,
    shards: str | None = None,
) -> float:
    """Median wall time of one optimiser step of the model, in this process's thread setting and with the dtype the
    trainer picks on this CPU; ``compile`` as the trainer compiles (the first two steps, allocation and compilation,
    excluded). The batches are the first of ``shards`` when given (their packed documents are what the attention
    kernel skips over, so they time what training will), else random ids in one document per row."""
    import torch

    from chameleon_lite.hardware import fast_cpu_dtype
    from chameleon_lite.model.transformer import build_model
    from chameleon_lite.train.config import PretrainConfig
    from chameleon_lite.train.trainer import make_loss_terms

    # the model exactly as the trainer configures it (its context covers a packed row's positions, which continue a
    # document begun in the row before and so can pass seq_len)
    mcfg = PretrainConfig(model=model_name, seq_len=seq_len, batch_size=batch_size).model_config(vocab_size, "")
    model = build_model(mcfg, seed=0).train()
    loss_terms = make_loss_terms(model, compile_whole=compile)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if shards:
        from chameleon_lite.data.loader import PackedLoader

        b = next(iter(PackedLoader(shards, seq_len, batch_size, seed=0)))
        args = (
            b["input_ids"],
            b["positions"],
            b["doc_ids"].to(torch.int32),
            b["span_ids"].to(torch.int32),
            b["targets"],
        )
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)
        zeros = torch.zeros(batch_size, seq_len, dtype=torch.int32)
        args = (ids[:, :-1], torch.arange(seq_len).expand(batch_size, seq_len), zeros, zeros, ids[:, 1:])
    dtype = fast_cpu_dtype()
    warmup = 2  # the first steps allocate (and compile): slower than the rest
    times = []
    for _ in range(steps + warmup):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            ce, _ = loss_terms(*args)
        ce.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    timed = sorted(times[warmup:])
    return timed[len(timed) // 2]


def stage_seconds(out: str) -> dict[str, float]:
    """Wall seconds of every finished stage of the quickstart in ``out``, from the pipeline's markers."""
    times = {}
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if name.startswith(".stage-") and name.endswith(".done"):
            try:
                with open(os.path.join(out, name)) as f:
                    times[name[len(".stage-") : -len(".done")]] = float(json.load(f).get("seconds", 0.0))
            except (OSError, ValueError):
                pass
    return times


def spent_minutes(cfg: QuickstartConfig, names: tuple[str, ...]) -> float:
    """Wall minutes the finished stages ``names`` took (a stage not finished counts 0)."""
    times = stage_seconds(cfg.out)
    return sum(times.get(n, 0.0) for n in names) / 60.0


def pretrain_minutes(cfg: QuickstartConfig, spent: float) -> float:
    """Minutes pretraining gets after ``spent`` minutes of earlier stages: what is left of the budget less the
    reserve for the stages after it, and never less than ``pretrain_share`` of the budget."""
    left = cfg.budget_minutes * (1.0 - cfg.reserve_share) - spent
    return max(cfg.budget_minutes * cfg.pretrain_share, left)


def calibrated_train_steps(cfg: QuickstartConfig, tokenizers_dir: str, shards: str | None = None) -> int:
    """The pretraining step count that fits :func:`pretrain_minutes` on this machine (measured once, then read
    back from calibration.json so a resumed run keeps its learning-rate schedule)."""
    from chameleon_lite.tokenizers.loader import vocab_from_tokenizer_dir

    path = cfg.path("calibration.json")
    key = {
        "model": cfg.train_model,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "budget_minutes": cfg.budget_minutes,
        "pretrain_share": cfg.pretrain_share,
        "reserve_share": cfg.reserve_share,
        "compile": cfg.compile,
    }
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return int(saved["steps"])
    vocab = vocab_from_tokenizer_dir(tokenizers_dir)
    step_s = measure_step_seconds(
        cfg.train_model, vocab.size, cfg.seq_len, cfg.batch_size, compile=cfg.compile, shards=shards
    )
    spent = spent_minutes(cfg, BEFORE_PRETRAIN)
    minutes = pretrain_minutes(cfg, spent)
    steps = _fit_steps(cfg, minutes, step_s)
    rec = {
        "key": key,
        "step_seconds": round(step_s, 4),
        "steps": steps,
        "minutes_before": round(spent, 2),
        "pretrain_minutes": round(minutes, 2),
        "tokens_per_second": round(cfg.seq_len * cfg.batch_size / step_s, 1),
    }
    _write_calibration(cfg, rec)
    print(
        f"pretraining: {step_s:.2f} s per step of {cfg.batch_size} x {cfg.seq_len} tokens on this machine -> "
        f"{steps} steps in {minutes:.1f} of the {cfg.budget_minutes:g} budget minutes ({spent:.1f} spent before)"
    )
    return steps


def _write_calibration(cfg: QuickstartConfig, rec: dict[str, Any]) -> None:

    write_json_atomic(cfg.path("calibration.json"), rec)


def _fit_steps(cfg: QuickstartConfig, minutes: float, step_s: float, floor: int = 0) -> int:
    """Optimiser steps of ``step_s`` seconds in STEP_TIME_SHARE of ``minutes``, within the config's bounds."""
    return int(min(cfg.max_train_steps, max(cfg.min_train_steps, floor, 60.0 * minutes * STEP_TIME_SHARE / step_s)))


def replanned_steps(cfg: QuickstartConfig) -> int | None:
    """The step count fixed after the warm-up (see :func:`replan_train_steps`), or None before that."""
    path = cfg.path("calibration.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        steps = json.load(f).get("replanned_steps")
    return int(steps) if steps is not None else None


def measured_step_seconds(run: str, upto: int) -> float | None:
    """Median ``step_time`` of the run's steps before ``upto`` (its first step, which allocates, left out when
    there are others), from its metrics.jsonl; None when it logged none."""
    from chameleon_lite.train.metrics import METRICS_FILE

    path = os.path.join(run, METRICS_FILE)
    times: dict[int, float] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if "step_time" in r and r.get("step", upto) < upto:
                    times[int(r["step"])] = float(r["step_time"])
    if len(times) > 1:
        times.pop(min(times))
    if not times:
        return None
    timed = sorted(times.values())
    return timed[len(timed) // 2]


def replan_train_steps(cfg: QuickstartConfig, run: str, first: int, warmup: int) -> int:
    """After ``warmup`` steps of a run planned for ``first``: the step count that fits the pretraining minutes at
    the median step time the run measured (never fewer than the warm-up), recorded in calibration.json so a
    resumed quickstart keeps it."""
    path = cfg.path("calibration.json")
    with open(path) as f:
        rec = json.load(f)
    step_s = measured_step_seconds(run, warmup) if warmup else None
    if step_s is None:
        steps = first
    else:
        steps = _fit_steps(cfg, rec["pretrain_minutes"], step_s, floor=warmup)
        print(
            f"pretraining: the warm-up ran at {step_s:.2f} s per step (timed beforehand: {rec['step_seconds']:.2f} s) -> "
            f"{steps} steps instead of {first}"
        )
    rec.update(replanned_steps=steps, warmup=warmup, run_step_seconds=None if step_s is None else round(step_s, 4))
    _write_calibration(cfg, rec)
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


def _run(args) -> int:
    cfg = QuickstartConfig(
        out=args.out, budget_minutes=args.budget_minutes, seed=args.seed, workers=args.workers, compile=args.compile
    )
    summary = quickstart(cfg)
    print(f"quickstart finished ({summary['seconds_this_run'] / 60:.1f} min this run)")
    for key in ("model", "curves", "eval", "demo"):
        print(f"  {key:7s} {summary[key]}")
    print(
        f'try: chameleon-lite generate --model {summary["model"]} --prompt "{DEMO_PROMPT}" --then media --out {cfg.path("try")}'
    )
    return 0


def register(cli) -> None:
    p = cli.command("quickstart", "corpus → tokenizers → shards → pretraining → export → eval → demo, resumable", _run)
    p.add_argument("--out", default="runs/quickstart", metavar="DIR", help="working folder (default runs/quickstart)")
    p.add_argument(
        "--budget-minutes",
        type=at.float_range(1.0, 100000.0),
        default=DEFAULT_BUDGET_MINUTES,
        help="scales the training stages (default 30, tuned for 2 CPU cores)",
    )
    p.add_argument("--seed", type=at.seed, default=0, help="seed of the corpus and of every training stage (default 0)")
    p.add_argument(
        "--workers",
        type=at.int_range(1, 256),
        default=2,
        help="worker processes for corpus writing and pretokenizing (default 2)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the pretraining step (slower on some CPUs)")
