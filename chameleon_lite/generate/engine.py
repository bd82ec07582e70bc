"""The generation engine: prompts -> KV-cached prefill -> constrained decode loop -> routed documents.

    gen = Generator.from_dir("model/")
    docs = gen.generate([Prompt(text="Draw a red circle.", then="image")], GenerationConfig(max_new_tokens=80))

Per step the per-row :class:`~chameleon_lite.generate.state_machine.ModalityStateMachine` gives the allowed id
ranges (exact image length, audio levels in order, ``<eoa>`` on frame boundaries, ``<boi>`` banned near the
end); each row samples with the settings of the modality it is in (text / image / audio) through the fused
sampler; rows that have one choice (``<eoi>``) take it. Classifier-free guidance for image and audio spans
runs an unconditional row beside each conditional one in the same batch: it sees ``<bos>`` and the current
media span only (reset whenever its row opens a span), and the sampler combines both rows' logits.

The engine knows token ids and the tokenizers' encode/decode calls only; how spans become files lives in
document.py.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from chameleon_lite.bundle import GENERATION_FILE, PROMPT_FORMATS, prompt_format, read_generation
from chameleon_lite.data.sequence import Part, SequenceEncoder
from chameleon_lite.errors import ConfigError, UserError
from chameleon_lite.files import write_bytes_atomic
from chameleon_lite.generate.document import Document, detokenize, split_spans, turn_roles
from chameleon_lite.generate.state_machine import ModalityStateMachine, Mode
from chameleon_lite.hardware import cpu_has_fast_bf16
from chameleon_lite.model.io import Bundle, load_bundle
from chameleon_lite.ops import sample
from chameleon_lite.vocab import UnifiedVocab

THEN = (None, "text", "image", "audio", "media")


# ---------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class SamplingSettings:
    """How one modality is sampled. temperature 0 = greedy; top_k 0 = off; cfg_scale 1 = no guidance."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    cfg_scale: float = 1.0
    repetition_penalty: float = 1.0
    penalty_window: int = 64

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ConfigError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.cfg_scale >= 0:
            raise ConfigError(f"cfg_scale must be >= 0 (1 = off), got {self.cfg_scale}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.penalty_window < 1:
            raise ConfigError(f"penalty_window must be >= 1, got {self.penalty_window}")


def _text_default() -> SamplingSettings:
    return SamplingSettings(temperature=0.8, top_p=0.95)


@dataclasses.dataclass
class GenerationConfig:
    """max_new_tokens: per row, after the prompt; min_new_tokens: ``<eos>`` is banned before that many. stop: strings that end a row when its generated text contains
    them. max_audio_frames: cap per audio span (default: what fits). dtype: "auto" (bf16 on CPUs with native
    bf16, else fp32), "fp32" or "bf16". weights: with fp32 compute on the CPU, "bf16" keeps the weights in bf16
    (rounded once) and reads them through the weight-only kernel on decode steps, which halves the memory traffic
    that bounds a decode step; "fp32" keeps full-precision weights; "auto" is "bf16" on the CPU."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    seed: int = 0
    text: SamplingSettings = dataclasses.field(default_factory=_text_default)
    image: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    audio: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    stop: tuple[str, ...] = ()
    max_audio_frames: int | None = None
    allow_image: bool = True
    allow_audio: bool = True
    dtype: str = "auto"
    weights: str = "auto"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.weights not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"weights must be auto, fp32 or bf16, got {self.weights!r}")
        if self.max_audio_frames is not None and self.max_audio_frames < 1:
            raise ConfigError(f"max_audio_frames must be >= 1, got {self.max_audio_frames}")
        self.stop = tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty strings")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


KINDS = ("text", "image", "audio")


def sampling_defaults(model_dir: str | None = None) -> dict[str, SamplingSettings]:
    """Per kind (text, image, audio): the sampling settings a model is generated with when the caller names none.
    A model folder may hold its own in ``generation.json`` (per kind, any SamplingSettings fields, e.g.
    ``{"image": {"temperature": 0}}``; the fields it leaves out keep the built-in defaults)."""
    if not model_dir:
        return _apply_sampling({}, "")
    return _apply_sampling(read_generation(model_dir), os.path.join(model_dir, GENERATION_FILE))


def _apply_sampling(d: dict[str, Any], where: str) -> dict[str, SamplingSettings]:
    """The built-in defaults with ``d`` (generation.json's content) applied; errors name ``where``."""
    out = {"text": _text_default(), "image": SamplingSettings(), "audio": SamplingSettings()}
    fields = {f.name for f in dataclasses.fields(SamplingSettings)}
    prompt_format(d, where)
    for kind, given in d.items():
        if kind == "format":
            continue
        if kind not in KINDS or not isinstance(given, dict):
            raise ConfigError(
                f"{where}: {kind!r} is not a kind of span with settings; known: {list(KINDS)}, each an object"
            )
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ConfigError(f"{where}: unknown {kind} setting(s) {unknown}; known: {sorted(fields)}")
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in given.values()):
            raise ConfigError(f"{where}: {kind} settings must be numbers, got {given}")
        try:
            out[kind] = dataclasses.replace(out[kind], **given)
        except ConfigError as e:
            raise ConfigError(f"{where}: {kind}: {e}") from None
    return out


def write_sampling_defaults(model_dir: str, settings: dict[str, Any], fmt: str | None = None) -> str:
    """Write a model folder's ``generation.json`` (checked before it is written): ``settings`` per kind and the
    prompt format ``fmt`` (None keeps the one the folder has)."""
    path = os.path.join(model_dir, GENERATION_FILE)
    fmt = fmt or prompt_format(read_generation(model_dir), path)
    settings = {**settings, "format": fmt} if fmt != "plain" else dict(settings)
    _apply_sampling(settings, path)
    write_bytes_atomic(path, (json.dumps(settings, indent=2) + "\n").encode())
    return path


@dataclasses.dataclass
class Prompt:
    """What a row starts from: images, then audio clips, then text (or ``parts`` for any interleaving, or
    ``ids``: unified ids as they are, ``<bos>`` prepended when missing).

    Prompt media are bidirectional input spans. ``then`` opens a span the model must continue with:
    "image" appends ``<boi>``, "audio" ``<boa>``; "media" makes the model's first id ``<boi>`` or ``<boa>``, its
    choice (the prompt is a complete request such as "a red circle, then play C5 on a sine wave", not text to go
    on writing); None or "text" leaves the choice to the model.

    ``chat=True`` makes the prompt a user turn of a conversation (ARCHITECTURE §4): ``<user>`` prompt ``<eot>
    <assistant>``, after ``history`` (the unified ids of the earlier turns, each closed by ``<eot>``; see
    :func:`load_history`). The model answers in the assistant turn and the row ends at its ``<eot>``. An empty
    chat prompt is the unconditional turn ``<user><eot><assistant>`` the models are trained with for guidance.
    """

    text: str = ""
    images: Sequence[Any] = ()
    audios: Sequence[Any] = ()
    then: str | None = None
    parts: Sequence[Part] | None = None
    ids: Sequence[int] | None = None
    chat: bool = False
    history: Sequence[int] = ()

    def __post_init__(self) -> None:
        if self.then not in THEN:
            raise ConfigError(f"then must be one of {THEN}, got {self.then!r}")
        if (self.history or self.chat) and self.ids is not None:
            raise ConfigError("a chat prompt is text/images/audios or parts, not ids")
        if self.history and not self.chat:
            raise ConfigError("history is the earlier turns of a conversation: it needs chat=True")
        if (self.parts is not None) + (self.ids is not None) + bool(self.text or self.images or self.audios) > 1:
            raise ConfigError("give one of parts, ids or text/images/audios")
        if isinstance(self.images, (str, bytes)) or isinstance(self.audios, (str, bytes)):
            raise ConfigError("images and audios are lists of paths or arrays")

    def to_parts(self) -> list[Part]:
        if self.parts is not None:
            out = list(self.parts)
        else:
            out = [Part("image", x, bidirectional=True) for x in self.images]
            out += [Part("audio", x, bidirectional=True) for x in self.audios]
            if self.text:
                out.append(Part("text", self.text))
        if self.chat:
            out = [Part("turn", "user"), *out, Part("turn", "end"), Part("turn", "assistant")]
        return out


@dataclasses.dataclass
class StreamEvent:
    """One sampled token of one row, for streaming. ``text`` is the newly decodable text of a text token;
    ``span`` is (ids so far, ids in the span or None for audio) inside an image/audio span."""

    row: int
    step: int
    id: int
    kind: str  # "text" | "image" | "audio" | "special"
    text: str = ""
    span: tuple[int, int | None] | None = None
    finished: bool = False


def _resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.bfloat16 if name == "bf16" else torch.float32


def input_spans(ids: Sequence[int], vocab: UnifiedVocab) -> list[int]:
    """Span ids (0, or k for the k-th bidirectional span) of a conversation's unified ids: the picture and clip
    spans of user turns, which are inputs the model reads whole (as the conversation corpus marks them)."""
    out, role, k, inside = [0] * len(ids), None, 0, False
    for i, t in enumerate(ids):
        if inside:  # the span's body, between its markers (as SequenceEncoder marks input spans)
            inside = t not in (vocab.eoi, vocab.eoa)
            out[i] = k if inside else 0
        elif t == vocab.user:
            role = "user"
        elif t in (vocab.assistant, vocab.eot):
            role = None
        elif t in (vocab.boi, vocab.boa) and role == "user":
            k, inside = k + 1, True
    return out


# ---------------------------------------------------------------------------------------------- engine
_GREEDY = SamplingSettings(temperature=0.0)  # what a finished row "samples" (its id is ignored)


def _kind(v: UnifiedVocab, t: int) -> str:
    if v.text_offset <= t < v.image_offset:
        return "text"
    if v.image_offset <= t < v.audio_offset:
        return "image"
    return "audio" if t >= v.audio_offset else "special"


@dataclasses.dataclass
class _Run:
    """The state of one :meth:`Generator.generate` call: the encoded prompts, the per-row state machine, and what
    each row has produced so far."""

    cfg: GenerationConfig
    prompts: list[list[int]]  # unified ids of each prompt (starting with <bos>)
    spans: list[list[int]]  # span ids of those prompts (bidirectional input spans)
    sm: ModalityStateMachine
    use_cfg: bool  # classifier-free guidance: B unconditional rows follow the B conditional ones
    dtype: torch.dtype
    step: int = 0
    out: list[list[int]] = dataclasses.field(default_factory=list)
    finish: list[str] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    decoders: list[Any] = dataclasses.field(default_factory=list)
    uncond_prefix: list[list[int]] = dataclasses.field(default_factory=list)  # per row, before an open media span
    slots: list[int] = dataclasses.field(default_factory=list)  # the KV-cache row of each row (default 0..rows-1)
    cache_len: int = 0  # the cache length the run needs (prompt + new tokens + 1, at most the context)

    def __post_init__(self) -> None:
        self.slots = self.slots or list(range(self.rows))
        self.out = [[] for _ in self.prompts]
        self.finish = ["length"] * self.size
        self.texts = [""] * self.size
        self.decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in self.prompts]

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def rows(self) -> int:
        return 2 * self.size if self.use_cfg else self.size


class Generator:
    """A model plus the tokenizers it was trained with. ``generate`` is the Python face of `chameleon-lite generate`."""

    def __init__(
        self,
        model: Any,
        tokenizers: Any,
        device: str | torch.device = "cpu",
        sampling: dict[str, SamplingSettings] | None = None,
        fmt: str = "plain",
    ) -> None:
        cfg = model.config
        vocab = tokenizers.vocab
        if cfg.vocab_hash and cfg.vocab_hash != vocab.hash:
            raise ConfigError(
                f"the tokenizers define vocabulary {vocab.hash} but the model was trained on {cfg.vocab_hash}"
            )
        if cfg.vocab_size != vocab.size:
            raise ConfigError(f"the tokenizers define {vocab.size} ids but the model has {cfg.vocab_size}")
        have = getattr(tokenizers, "codes_hash", "")
        if cfg.codes_hash and have and have != cfg.codes_hash:
            raise ConfigError(
                f"the tokenizers make other codes (codes hash {have}) than the model was trained on ({cfg.codes_hash}); "
                "use the tokenizers the model was trained with"
            )
        self.model = model.eval()
        self.tokenizers = tokenizers
        self.vocab = vocab
        self.device = torch.device(device)
        self.encoder = SequenceEncoder(tokenizers)
        self._dtype: torch.dtype | None = None
        self._bf16_weights = False
        self.sampling = sampling or sampling_defaults()  # per kind: what generate() samples with when given no config
        if fmt not in PROMPT_FORMATS:
            raise ConfigError(f"format must be one of {list(PROMPT_FORMATS)}, got {fmt!r}")
        self.format = fmt  # "chat": the model was trained on conversations; `generate` wraps prompts as user turns

    @classmethod
    def from_dir(cls, model_dir: str, device: str | torch.device = "cpu", dtype: str = "fp32") -> Generator:
        """Load an exported model folder (model.safetensors, config.json, the tokenizer artifacts and, if it has
        one, generation.json), each of its files read once. ``dtype`` ("fp32", "bf16" or "auto" as
        :class:`GenerationConfig` resolves it): the weights as loaded; a generation in bf16 then never holds an fp32
        copy (a 7B model takes 14 GB, not 28 + 14)."""
        if dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"dtype must be auto, fp32 or bf16, got {dtype!r}")
        bundle = load_bundle(model_dir, device=device, dtype=_resolve_dtype(dtype))
        return cls.from_bundle(bundle, device=device)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | torch.device = "cpu") -> Generator:
        """A Generator over a loaded model folder; its generation.json gives the sampling defaults."""
        where = os.path.join(bundle.path, GENERATION_FILE)
        sampling = _apply_sampling(bundle.generation, where)
        fmt = prompt_format(bundle.generation, where)
        return cls(bundle.model, bundle.tokenizers, device=device, sampling=sampling, fmt=fmt)

    def default_config(self, **kw: Any) -> GenerationConfig:
        """A GenerationConfig with this model's sampling defaults (its folder's ``generation.json``, if any)."""
        return GenerationConfig(**{**{k: dataclasses.replace(v) for k, v in self.sampling.items()}, **kw})

    @property
    def context(self) -> int:
        return int(self.model.config.max_seq_len)

    @property
    def image_tokens(self) -> int:
        return int(self.tokenizers.image.tokens_per_image) if self.tokenizers.image is not None else 0

    def _use_dtype(self, dtype: torch.dtype, weights: str = "fp32") -> None:
        """Compute dtype of the weights (the RoPE tables stay fp32) and, for fp32 on the CPU, whether the model
        reads bf16 copies of its weights (``weights="bf16"`` or "auto"; the fp32 weights stay as they are)."""
        if self._dtype != dtype:
            for p in self.model.parameters():
                p.data = p.data.to(dtype)
            self._dtype = dtype
        bf16w = dtype == torch.float32 and self.device.type == "cpu" and weights in ("auto", "bf16")
        if bf16w != self._bf16_weights:
            self.model.use_bf16_weights(bf16w)
            self._bf16_weights = bf16w

    # ---- prompts -----------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt | str) -> tuple[list[int], list[int]]:
        """-> (unified ids starting with <bos>, span ids) of one prompt; media errors name the file."""
        if isinstance(prompt, str):
            prompt = Prompt(text=prompt)
        if prompt.ids is not None:
            ids = [int(t) for t in prompt.ids]
            self.vocab.check_ids(ids, what="prompt")
            ids = ids if ids[:1] == [self.vocab.bos] else [self.vocab.bos] + ids
            spans = [0] * len(ids)
        elif prompt.chat:
            if not self.vocab.conversation_ready:
                raise ConfigError("the model's vocabulary has no conversation tokens (<user> <assistant> <eot>)")
            head = [int(t) for t in prompt.history]
            self.vocab.check_ids(head, what="conversation history")
            head = head if head[:1] == [self.vocab.bos] else [self.vocab.bos] + head
            enc = self.encoder.encode(prompt.to_parts(), bos=False, eos=False)
            head_spans = input_spans(head, self.vocab)
            shift = max(head_spans, default=0)
            ids = head + enc.ids.tolist()
            spans = head_spans + [x + shift if x else 0 for x in enc.span_ids().tolist()]
        else:
            enc = self.encoder.encode(prompt.to_parts(), bos=True, eos=False)
            ids, spans = enc.ids.tolist(), enc.span_ids().tolist()
        if prompt.then in ("image", "audio"):
            tok = self.tokenizers.image if prompt.then == "image" else self.tokenizers.audio
            if tok is None:
                raise ConfigError(f"then={prompt.then!r} but the model has no {prompt.then} tokenizer")
            ids.append(self.vocab.boi if prompt.then == "image" else self.vocab.boa)
            spans.append(0)
        return ids, spans

    # ---- generation --------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompts: Prompt | str | Sequence[Prompt | str],
        config: GenerationConfig | None = None,
        stream: Callable[[StreamEvent], None] | None = None,
    ) -> list[Document]:
        """Generate one document per prompt, all prompts in one batch (no ``config``: :meth:`default_config`).
        Returns Documents whose ``settings["finish_reason"]`` is "eos", "eot" (a conversation's answer ended its
        turn), "length" or "stop"."""
        cfg = config or self.default_config()
        prompts = [prompts] if isinstance(prompts, (Prompt, str)) else list(prompts)
        if not prompts:
            raise ConfigError("no prompts given")
        t_start = time.perf_counter()
        run = self.plan(prompts, cfg)
        self._use_dtype(run.dtype, cfg.weights)
        self.model.setup_cache(run.rows, run.cache_len, dtype=run.dtype)
        logits = self.prefill(run)
        t_prefill = time.perf_counter()
        t_first = None
        while True:
            ids, done_before = self.sample_step(run, logits, stream)
            t_first = t_first or time.perf_counter()
            if bool(run.sm.done().all()):
                break
            logits = self.decode_runs([(run, ids, done_before)])[0]
        t_end = time.perf_counter()
        docs = self.documents(run)
        timings = self._timings(run, t_start, t_prefill, t_first or t_end, t_end, time.perf_counter())
        for d in docs:
            d.timings = dict(timings)
        return docs

    def documents(self, run: _Run) -> list[Document]:
        """The documents of a finished (or stopped) run, one per prompt."""
        return [
            self._document(run.prompts[b], run.out[b], run.finish[b], run.cfg, run.texts[b]) for b in range(run.size)
        ]

    def sample_step(
        self, run: _Run, logits: torch.Tensor, stream: Callable[[StreamEvent], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample each row's next id from ``logits`` [rows, V], advance the state machine and record (and stream)
        the ids -> (ids [B], which rows were done before this step)."""
        done_before = run.sm.done().clone()
        modes = [run.sm.row_mode(b) for b in range(run.size)]
        ids = self._sample_next(run, logits, modes)
        run.sm.advance(ids)
        self._record(run, ids, done_before, modes, stream)
        run.step += 1
        return ids, done_before

    def plan(self, prompts: list[Prompt | str], cfg: GenerationConfig) -> _Run:
        """Encode the prompts, check they leave room to generate and set up the state machine (no cache: the caller
        sets up the KV cache, or gives the run slots of a shared one in ``run.slots``)."""
        encoded = [self.encode_prompt(p) for p in prompts]
        lens = [len(ids) for ids, _ in encoded]
        for i, n in enumerate(lens):
            if n >= self.context:
                raise UserError(
                    f"prompt {i} is {n} tokens long; the model's context is {self.context} tokens "
                    "(it needs room for at least one new token)"
                )
        left = [min(cfg.max_new_tokens, self.context - n) for n in lens]
        sm = ModalityStateMachine(
            self.vocab,
            self.image_tokens,
            len(prompts),
            left,
            max_audio_frames=cfg.max_audio_frames,
            allow_image=cfg.allow_image,
            allow_audio=cfg.allow_audio,
        )
        chat = [isinstance(p, Prompt) and p.chat for p in prompts]
        for b, (ids, _) in enumerate(encoded):
            if chat[b]:
                sm.set_conversation(b)
            sm.feed_prompt(b, ids)
            if isinstance(prompts[b], Prompt) and prompts[b].then == "media":
                sm.require_media(b)
            if left[b] < sm.ids_needed(b):
                raise UserError(
                    f"prompt {b} opens a {sm.row_mode(b).name.lower()} span that needs {sm.ids_needed(b)} new "
                    f"tokens, but only {left[b]} fit (max_new_tokens={cfg.max_new_tokens}, context {self.context})"
                )
        use_cfg = (cfg.image.cfg_scale != 1.0 and sm.allow_image) or (cfg.audio.cfg_scale != 1.0 and sm.allow_audio)
        run = _Run(cfg, [ids for ids, _ in encoded], [sp for _, sp in encoded], sm, use_cfg, _resolve_dtype(cfg.dtype))
        # what an unconditional (CFG) row holds before its media span: <bos>, and for a conversation the empty user
        # turn the conversation corpus drops the condition to
        v = self.vocab
        run.uncond_prefix = [[v.bos, v.user, v.eot, v.assistant] if c else [v.bos] for c in chat]
        run.cache_len = min(self.context, max(n + k for n, k in zip(lens, left)) + 1)
        return run

    def prefill(self, run: _Run) -> torch.Tensor:
        """Logits [rows, vocab] after the prompts, written into the run's cache slots: the conditional rows, then
        (CFG) the unconditional rows, which hold <bos> + the media span the prompt leaves open."""
        seqs, span_rows = list(run.prompts), list(run.spans)
        if run.use_cfg:
            for b in range(run.size):
                u = run.uncond_prefix[b] + self._open_span(run.prompts[b], run.sm, b)
                seqs.append(u)
                span_rows.append([0] * len(u))
        inp = torch.full((run.rows, max(len(s) for s in seqs)), self.vocab.pad, dtype=torch.int64)
        spn = torch.zeros(inp.shape, dtype=torch.int32)
        for r, (s, sp) in enumerate(zip(seqs, span_rows)):
            inp[r, : len(s)] = torch.tensor(s)
            spn[r, : len(sp)] = torch.tensor(sp, dtype=torch.int32)
        plen = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
        slots = torch.tensor(run.slots, dtype=torch.int64, device=self.device)
        return self.model.prefill(inp.to(self.device), plen.to(self.device), spn.to(self.device), rows=slots)

    def _sample_next(self, run: _Run, logits: torch.Tensor, modes: list[Mode]) -> torch.Tensor:
        """int64 [B] next ids: each row sampled with its mode's settings among the ids its state allows (CFG mixes
        in the unconditional rows inside media spans); a row with one allowed id gets it. Sampling runs on the
        CPU, so the same seed gives the same document on any device."""
        cfg, B = run.cfg, run.size
        table = {Mode.TEXT: cfg.text, Mode.IMAGE: cfg.image, Mode.AUDIO: cfg.audio, Mode.DONE: _GREEDY}
        sets = [table[m] for m in modes]
        allowed = run.sm.allowed_ranges()
        if run.step < cfg.min_new_tokens:  # no <eos> yet: drop it from the range that starts with it
            at_eos = allowed[..., 0] == self.vocab.eos
            allowed[..., 0] = torch.where(at_eos, allowed[..., 0] + 1, allowed[..., 0])
        kw: dict[str, Any] = {
            name: torch.tensor([getattr(s, name) for s in sets], dtype=dtype)
            for name, dtype in (
                ("temperature", torch.float32),
                ("top_k", torch.int64),
                ("top_p", torch.float32),
                ("min_p", torch.float32),
            )
        }
        if any(s.repetition_penalty != 1.0 for s in sets):
            pen = torch.full((B, max(s.penalty_window for s in sets)), -1, dtype=torch.int64)
            for b, s in enumerate(sets):
                recent = run.out[b][-s.penalty_window :]
                if recent and s.repetition_penalty != 1.0:
                    pen[b, : len(recent)] = torch.tensor(recent)
            kw.update(penalty_ids=pen, repetition_penalty=torch.tensor([s.repetition_penalty for s in sets]))
        logits = logits.float().cpu()
        if run.use_cfg:
            scale = [s.cfg_scale if m in (Mode.IMAGE, Mode.AUDIO) else 1.0 for s, m in zip(sets, modes)]
            kw.update(uncond_logits=logits[B:], cfg_scale=torch.tensor(scale, dtype=torch.float32))
        ids = sample(logits[:B], seed=cfg.seed, step=run.step, allowed_ranges=allowed, **kw)
        forced = run.sm.forced()
        return torch.where(forced >= 0, forced, ids)

    def _record(
        self,
        run: _Run,
        ids: torch.Tensor,
        done_before: torch.Tensor,
        modes: list[Mode],
        stream: Callable[[StreamEvent], None] | None,
    ) -> None:
        """Append each live row's new id, decode its text, apply the stop strings, and stream the events."""
        v = self.vocab
        for b in range(run.size):
            if done_before[b]:
                continue
            t = int(ids[b])
            run.out[b].append(t)
            if t == v.eos:
                run.finish[b] = "eos"
            elif t == v.eot and run.sm.chat[b]:
                run.finish[b] = "eot"  # the assistant's turn is over
            text = ""
            if modes[b] == Mode.TEXT and v.text_offset <= t < v.image_offset:
                text = run.decoders[b].decode(self.tokenizers.text.token_bytes(t - v.text_offset))
                run.texts[b] += text
                if run.cfg.stop and any(s in run.texts[b] for s in run.cfg.stop):
                    run.sm.stop(b)
                    run.finish[b] = "stop"
            if stream is not None:
                finished = bool(run.sm.done()[b])
                stream(StreamEvent(b, run.step, t, _kind(v, t), text, run.sm.span_progress(b), finished=finished))

    def decode_runs(self, steps: Sequence[tuple[_Run, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """One decode step of runs that share the KV cache, each ``(run, new ids [B], rows done before this step)``
        -> each run's logits [rows, V]. Cache rows [0, highest slot] step together: a row done before this step, and
        a slot no run holds, writes a pad over its own last slot (never past it: a row that filled the cache whole
        has no slot after its last one) and keeps its length."""
        v, dev = self.vocab, self.device
        hi = max(max(run.slots) for run, _, _ in steps) + 1
        feed = torch.full((hi,), v.pad, dtype=torch.int64)
        frozen = torch.ones(hi, dtype=torch.bool)
        slot_rows = [torch.tensor(run.slots) for run, _, _ in steps]
        for (run, ids, done_before), slots in zip(steps, slot_rows):
            f = torch.where(done_before, v.pad, ids)
            feed[slots] = torch.cat([f, f]) if run.use_cfg else f
            frozen[slots] = torch.cat([done_before, done_before]) if run.use_cfg else done_before
        lens = self.model.cache_lens
        frozen = frozen.to(dev)
        lens_before = lens[:hi].clone()
        lens[:hi][frozen] = (lens_before[frozen] - 1).clamp(min=0)
        for run, ids, done_before in steps:
            if not run.use_cfg:
                continue
            for b in range(run.size):
                if int(ids[b]) in (v.boi, v.boa) and not done_before[b]:
                    # the unconditional row restarts at its prefix + the marker
                    lens[run.slots[run.size + b]] = len(run.uncond_prefix[b])
        logits = self.model.decode_step(feed.view(hi, 1).to(dev))[:, -1]
        lens[:hi][frozen] = lens_before[frozen]
        return [logits[slots.to(dev)] for slots in slot_rows]

    def _timings(self, run: _Run, t_start: float, t_prefill: float, t_first: float, t_end: float, t_detok: float):
        n_new = sum(len(o) for o in run.out)
        dtype = str(run.dtype).replace("torch.", "")
        return {
            "prefill_s": t_prefill - t_start,
            "time_to_first_token_s": t_first - t_start,
            "decode_s": t_end - t_prefill,
            "new_tokens": n_new,
            "decode_tokens_per_s": (n_new - run.size) / max(t_end - t_first, 1e-9) if n_new > run.size else 0.0,
            "detokenize_s": t_detok - t_end,
            "batch": run.size,
            "cfg_rows": run.rows - run.size,
            "dtype": dtype,
            "weights": "bf16" if self._bf16_weights else dtype,
        }

    def _open_span(self, ids: list[int], sm: ModalityStateMachine, b: int) -> list[int]:
        """The media span a prompt ends inside (marker + ids so far), or [] when it ends in text."""
        mode = sm.row_mode(b)
        if mode not in (Mode.IMAGE, Mode.AUDIO):
            return []
        marker = self.vocab.boi if mode == Mode.IMAGE else self.vocab.boa
        start = max(i for i, t in enumerate(ids) if t == marker)
        return ids[start:]

    def _document(
        self, prompt_ids: list[int], new_ids: list[int], finish: str, cfg: GenerationConfig, text: str
    ) -> Document:
        v = self.vocab
        opened = prompt_ids[-1] in (v.boi, v.boa) if prompt_ids else False
        head = prompt_ids[:-1] if opened else prompt_ids
        prompt_spans = split_spans(head, v)
        for s in prompt_spans:
            s.from_prompt = True
        turns = turn_roles(v)
        role = next((turns[t] for t in reversed(head) if t in turns), None)  # the turn the answer is written in
        gen_spans = split_spans(([prompt_ids[-1]] if opened else []) + new_ids, v, role=role)
        spans = detokenize(prompt_spans + gen_spans, self.tokenizers)
        if finish == "stop":
            for s in reversed(spans):
                if s.kind == "text" and not s.from_prompt and s.text:
                    cut = min((s.text.find(x) + len(x) for x in cfg.stop if x in s.text), default=len(s.text))
                    s.text = s.text[:cut]
                    break
        settings = {**cfg.to_dict(), "finish_reason": finish, "vocab_hash": v.hash, "chat": role is not None}
        return Document(spans=spans, ids=new_ids, prompt_ids=prompt_ids, settings=settings)
