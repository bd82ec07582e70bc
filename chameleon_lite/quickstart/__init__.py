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
time it measured; with the default warmup-stable-decay schedule the count is fit once more where the decay begins,
to the wall time left. All three are stored in ``calibration.json``, so a resumed quickstart keeps the schedule it
started with.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

from chameleon_lite.errors import ConfigError

DEFAULT_BUDGET_MINUTES = 30.0
CALIBRATION = "calibration.json"  # the pretraining plan (chameleon_lite.train.budget)
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
    # the tokenizers train on the corpus's first ``tokenizer_docs`` documents (0: all of it); the transformer always
    # trains on all of it. The procedural corpus is the same prefix whatever its size, so a larger corpus with
    # tokenizer_docs = 6000 keeps the tokenizers of the 6000-document corpus exactly (docs/speedrun.md)
    tokenizer_docs: int = 0
    n_heldout: int = 300
    workers: int = 2
    text_vocab: int = 1024
    # the split of the 30 minutes (docs/speedrun.md): the tokenizers cap what the model can be judged to do (a
    # picture the image tokenizer garbles is wrong whatever the transformer wrote). Image steps are cheap (about
    # 0.12 s on 2 cores) and still pay at 2000 (31.0 dB, 79 % of pictures read back right, against 27.8 dB and 52 %
    # at 1000); the codec's 1000 steps bought 12.8 dB instead of 11.4 dB and no agreement over its 600 steps (one
    # seed; its 600-step recipe, audio_train.quickstart_config, was measured over three).
    image_steps: int = 2500
    audio_steps: int = 600
    # the tokenizers' full recipes (docs/image_tokenizer_eval.json, docs/audio_codec_eval.json): a longer budget
    # goes to pretraining once they are reached
    max_image_steps: int = 4000
    max_audio_steps: int = 3000
    pretrain_share: float = 0.5
    # minutes kept for the stages after pretraining (curves, export, evaluation, demo), as a share of the budget
    reserve_share: float = 0.1
    min_train_steps: int = 30
    max_train_steps: int = 20000
    train_model: str = "tiny"
    # fields of the preset the quickstart changes, and the peak learning rate (docs/speedrun.md): at equal wall time
    # on 2 cores, 4 layers of the tiny preset's width reach a lower validation loss than its 8 (they take 1.6x the
    # steps); AdamW at 4e-3 learned faster than at 2e-3 (8 layers), and at 6e-3 than at 4e-3 (4 layers: every
    # modality's perplexity lower, audio -> text 49.5 -> 72.5 % in the same minutes)
    train_overrides: dict = dataclasses.field(default_factory=lambda: {"n_layers": 4})
    lr: float = 6e-3
    # the learning-rate schedule: "wsd" holds the peak rate and decays it linearly over the last ``decay_frac`` of
    # the steps, whose count is fit once more where the decay begins, to the wall time left (train/budget.py), so
    # the run uses its whole budget; "cosine" fixes the count after the warm-up with a safety margin (the default
    # of this recipe before; docs/speedrun.md)
    schedule: str = "wsd"
    decay_frac: float = 0.3
    # torch.compile the model and loss as one graph: off. On a 2-core AVX2-only EPYC the compiled step of the tiny
    # preset (8 x 512 tokens) measured 5.65 s against about 5.3 s eager; on a 2-core AVX-512 EPYC the compiled
    # 4-layer step is 5 % faster but its ~35 s compilation takes back what that buys in 25 minutes (docs/speedrun.md)
    compile: bool = False
    seq_len: int = 512
    batch_size: int = 8
    eval_n: int = 200  # prompts per task of the quickstart's own eval
    min_scale: float = 0.05

    def __post_init__(self) -> None:
        if not self.budget_minutes > 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {self.budget_minutes}")
        if not 0 < self.pretrain_share < 1:
            raise ConfigError(f"pretrain_share must be in (0, 1), got {self.pretrain_share}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not isinstance(self.train_overrides, dict):
            raise ConfigError(f"train_overrides must be a dict of model preset fields, got {self.train_overrides!r}")
        if self.tokenizer_docs < 0:
            raise ConfigError(f"tokenizer_docs must be >= 0 (0: the whole corpus), got {self.tokenizer_docs}")
        if self.schedule not in ("cosine", "wsd"):
            raise ConfigError(f"schedule must be cosine or wsd, got {self.schedule!r}")
        if not 0 < self.decay_frac < 1:
            raise ConfigError(f"decay_frac must be in (0, 1), got {self.decay_frac}")
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

    @property
    def tokenizer_subset(self) -> int:
        """``tokenizer_docs`` when it leaves documents out, else 0 (the tokenizers read the whole corpus)."""
        return self.tokenizer_docs if 0 < self.tokenizer_docs < self.corpus_docs else 0

    @property
    def tokenizer_manifest(self) -> str:
        """The manifest the three tokenizers train on: the corpus's, or its first ``tokenizer_docs`` documents."""
        if self.tokenizer_subset:
            return self.path("corpus", f"first_{self.tokenizer_subset}.jsonl")
        return self.path("corpus", "manifest.jsonl")

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)


# the stages (torch, the tokenizers, the trainer) are loaded on first use, so that the command's module, which
# ``--help`` imports, stays light
_STAGES = (
    "build_stages",
    "calibrated_train_steps",
    "pretrain_config",
    "pretrain_minutes",
    "quickstart",
    "spent_minutes",
)


def __getattr__(name: str):
    if name not in _STAGES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.stages"), name)
    globals()[name] = value
    return value
