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

from chameleon_lite.data.sequence import Part, SequenceEncoder
from chameleon_lite.errors import ConfigError, UserError
from chameleon_lite.generate.document import Document, detokenize, split_spans
from chameleon_lite.generate.state_machine import ModalityStateMachine, Mode

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


GENERATION_FILE = "generation.json"
KINDS = ("text", "image", "audio")


def sampling_defaults(model_dir: str | None = None) -> dict[str, SamplingSettings]:
    """Per kind (text, image, audio): the sampling settings a model is generated with when the caller names none.
    A model folder may hold its own in ``generation.json`` (per kind, any SamplingSettings fields, e.g.
    ``{"image": {"temperature": 0}}``; the fields it leaves out keep the built-in defaults)."""
    path = os.path.join(model_dir, GENERATION_FILE) if model_dir else ""
    if not path or not os.path.exists(path):
        return _apply_sampling({}, "")
    from chameleon_lite.files import read_json

    return _apply_sampling(read_json(path, "generation settings"), path)


def _apply_sampling(d: dict[str, Any], where: str) -> dict[str, SamplingSettings]:
    """The built-in defaults with ``d`` (generation.json's content) applied; errors name ``where``."""
    out = {"text": _text_default(), "image": SamplingSettings(), "audio": SamplingSettings()}
    fields = {f.name for f in dataclasses.fields(SamplingSettings)}
    for kind, given in d.items():
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


def write_sampling_defaults(model_dir: str, settings: dict[str, dict[str, float]]) -> str:
    """Write a model folder's ``generation.json`` (checked before it is written)."""
    from chameleon_lite.files import write_bytes_atomic

    path = os.path.join(model_dir, GENERATION_FILE)
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
    """

    text: str = ""
    images: Sequence[Any] = ()
    audios: Sequence[Any] = ()
    then: str | None = None
    parts: Sequence[Part] | None = None
    ids: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.then not in THEN:
            raise ConfigError(f"then must be one of {THEN}, got {self.then!r}")
        if (self.parts is not None) + (self.ids is not None) + bool(self.text or self.images or self.audios) > 1:
            raise ConfigError("give one of parts, ids or text/images/audios")
        if isinstance(self.images, (str, bytes)) or isinstance(self.audios, (str, bytes)):
            raise ConfigError("images and audios are lists of paths or arrays")

    def to_parts(self) -> list[Part]:
        if self.parts is not None:
            return list(self.parts)
        out = [Part("image", x, bidirectional=True) for x in self.images]
        out += [Part("audio", x, bidirectional=True) for x in self.audios]
        if self.text:
            out.append(Part("text", self.text))
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
    from chameleon_lite.hardware import cpu_has_fast_bf16

    if name == "auto":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.bfloat16 if name == "bf16" else torch.float32


# ---------------------------------------------------------------------------------------------- engine
class Generator:
    """A model plus the tokenizers it was trained with. ``generate`` is the Python face of `chameleon-lite generate`."""

    def __init__(
        self,
        model: Any,
        tokenizers: Any,
        device: str | torch.device = "cpu",
        sampling: dict[str, SamplingSettings] | None = None,
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

    @classmethod
    def from_dir(cls, model_dir: str, device: str | torch.device = "cpu") -> Generator:
        """Load an exported model folder (model.safetensors, config.json and the tokenizer artifacts)."""
        from chameleon_lite.model.io import load_model
        from chameleon_lite.tokenizers.loader import Tokenizers

        if not os.path.isdir(model_dir):
            raise ConfigError(f"{model_dir}: model folder not found")
        tokenizers = Tokenizers.load(model_dir, device=str(device))
        model = load_model(model_dir, device=device, tokenizers=tokenizers)  # each file of the folder read once
        return cls(model, tokenizers, device=device, sampling=sampling_defaults(model_dir))

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
        """Compute dtype of the weights (the RoPE tables stay fp32) and, for fp32 on the CPU, whether decode steps
        read bf16 copies of them (``weights="bf16"``; the fp32 weights are then rounded to bf16 values for good)."""
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
        """Generate one document per prompt, all prompts in one batch (no ``config``: :meth:`default_config`). Returns Documents whose
        ``settings["finish_reason"]`` is "eos", "length" or "stop"."""
        cfg = config or self.default_config()
        if isinstance(prompts, (Prompt, str)):
            prompts = [prompts]
        if not prompts:
            raise ConfigError("no prompts given")
        t_start = time.perf_counter()
        v, B = self.vocab, len(prompts)
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
            v,
            self.image_tokens,
            B,
            left,
            max_audio_frames=cfg.max_audio_frames,
            allow_image=cfg.allow_image,
            allow_audio=cfg.allow_audio,
        )
        for b, (ids, _) in enumerate(encoded):
            sm.feed_prompt(b, ids)
            if isinstance(prompts[b], Prompt) and prompts[b].then == "media":
                sm.require_media(b)
            need = {Mode.IMAGE: self.image_tokens - int(sm.count[b]) + 1, Mode.AUDIO: v.audio_levels + 1}.get(
                Mode(int(sm.mode[b])), 1
            )
            if left[b] < need:
                raise UserError(
                    f"prompt {b} opens a {Mode(int(sm.mode[b])).name.lower()} span that needs {need} new tokens, "
                    f"but only {left[b]} fit (max_new_tokens={cfg.max_new_tokens}, context {self.context})"
                )
        use_cfg = (cfg.image.cfg_scale != 1.0 and sm.allow_image) or (cfg.audio.cfg_scale != 1.0 and sm.allow_audio)
        rows = 2 * B if use_cfg else B
        dtype = _resolve_dtype(cfg.dtype)
        self._use_dtype(dtype, cfg.weights)
        dev = self.device
        max_len = min(self.context, max(n + k for n, k in zip(lens, left)) + 1)
        self.model.setup_cache(rows, max_len, dtype=dtype)

        # prefill: conditional rows, then (CFG) unconditional rows that hold <bos> + the open media span
        seqs = [ids for ids, _ in encoded]
        span_rows = [sp for _, sp in encoded]
        if use_cfg:
            for b in range(B):
                u = [v.bos] + self._open_span(seqs[b], sm, b)
                seqs.append(u)
                span_rows.append([0] * len(u))
        L = max(len(s) for s in seqs)
        inp = torch.full((rows, L), v.pad, dtype=torch.int64)
        spn = torch.zeros(rows, L, dtype=torch.int32)
        for r, (s, sp) in enumerate(zip(seqs, span_rows)):
            inp[r, : len(s)] = torch.tensor(s)
            spn[r, : len(sp)] = torch.tensor(sp, dtype=torch.int32)
        plen = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
        logits = self.model.prefill(inp.to(dev), plen.to(dev), spn.to(dev))
        t_prefill = time.perf_counter()

        table = {
            Mode.TEXT: cfg.text,
            Mode.IMAGE: cfg.image,
            Mode.AUDIO: cfg.audio,
            Mode.DONE: SamplingSettings(temperature=0.0),
        }
        out: list[list[int]] = [[] for _ in range(B)]
        finish = ["length"] * B
        decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(B)]
        texts = [""] * B
        t_first = None
        step = 0
        while True:
            done_before = sm.done().clone()
            modes = [Mode(int(m)) for m in sm.modality()]
            sets = [table[m] for m in modes]
            allowed = sm.allowed_ranges()
            if step < cfg.min_new_tokens:  # no <eos> yet: drop it from the range that starts with it
                at_eos = allowed[..., 0] == v.eos
                allowed[..., 0] = torch.where(at_eos, allowed[..., 0] + 1, allowed[..., 0])
            kw: dict[str, Any] = dict(
                temperature=torch.tensor([s.temperature for s in sets], dtype=torch.float32),
                top_k=torch.tensor([s.top_k for s in sets], dtype=torch.int64),
                top_p=torch.tensor([s.top_p for s in sets], dtype=torch.float32),
                min_p=torch.tensor([s.min_p for s in sets], dtype=torch.float32),
            )
            if any(s.repetition_penalty != 1.0 for s in sets):
                w = max(s.penalty_window for s in sets)
                pen = torch.full((B, w), -1, dtype=torch.int64)
                for b, s in enumerate(sets):
                    recent = out[b][-s.penalty_window :]
                    if recent and s.repetition_penalty != 1.0:
                        pen[b, : len(recent)] = torch.tensor(recent)
                kw.update(
                    penalty_ids=pen,
                    repetition_penalty=torch.tensor([s.repetition_penalty for s in sets], dtype=torch.float32),
                )
            cond = logits[:B].float()
            if use_cfg:
                kw.update(
                    uncond_logits=logits[B:].float(),
                    cfg_scale=torch.tensor(
                        [s.cfg_scale if m in (Mode.IMAGE, Mode.AUDIO) else 1.0 for s, m in zip(sets, modes)],
                        dtype=torch.float32,
                    ),
                )
            from chameleon_lite.ops import sample

            ids = sample(cond.cpu(), seed=cfg.seed, step=step, allowed_ranges=allowed, **kw)
            forced = sm.forced()
            ids = torch.where(forced >= 0, forced, ids)
            if t_first is None:
                t_first = time.perf_counter()
            modes_before = modes
            sm.advance(ids)
            for b in range(B):
                if done_before[b]:
                    continue
                t = int(ids[b])
                out[b].append(t)
                if t == v.eos:
                    finish[b] = "eos"
                ev_text = ""
                if modes_before[b] == Mode.TEXT and v.text_offset <= t < v.image_offset:
                    ev_text = decoders[b].decode(self.tokenizers.text.token_bytes(t - v.text_offset))
                    texts[b] += ev_text
                    if cfg.stop and any(s in texts[b] for s in cfg.stop):
                        sm.mode[b] = int(Mode.DONE)
                        finish[b] = "stop"
                if stream is not None:
                    kind = (
                        "text"
                        if ev_text or (v.text_offset <= t < v.image_offset)
                        else (
                            "image"
                            if v.image_offset <= t < v.audio_offset
                            else "audio"
                            if t >= v.audio_offset
                            else "special"
                        )
                    )
                    span = None
                    if int(sm.mode[b]) in (Mode.IMAGE, Mode.AUDIO):
                        span = (int(sm.count[b]), self.image_tokens if int(sm.mode[b]) == Mode.IMAGE else None)
                    stream(
                        StreamEvent(
                            row=b, step=step, id=t, kind=kind, text=ev_text, span=span, finished=bool(sm.done()[b])
                        )
                    )
            step += 1
            if bool(sm.done().all()):
                break
            # feed the new ids; done rows rewrite their last slot and keep their length
            feed = ids.clone()
            feed[done_before] = v.pad
            lens_before = self.model.cache_lens.clone()
            if use_cfg:
                for b in range(B):
                    if int(ids[b]) in (v.boi, v.boa) and not done_before[b]:
                        self.model.cache_lens[B + b] = 1  # the unconditional row restarts at <bos> + marker
                feed = torch.cat([feed, feed])
            logits = self.model.decode_step(feed.view(rows, 1).to(dev))[:, -1]
            frozen = torch.cat([done_before, done_before]) if use_cfg else done_before
            self.model.cache_lens[frozen.to(dev)] = lens_before[frozen.to(dev)]
        t_end = time.perf_counter()

        docs = []
        for b in range(B):
            docs.append(self._document(encoded[b][0], out[b], finish[b], cfg, texts[b]))
        t_detok = time.perf_counter()
        n_new = sum(len(o) for o in out)
        timings = {
            "prefill_s": t_prefill - t_start,
            "time_to_first_token_s": (t_first or t_end) - t_start,
            "decode_s": t_end - t_prefill,
            "new_tokens": n_new,
            "decode_tokens_per_s": (n_new - B) / max(t_end - (t_first or t_end), 1e-9) if n_new > B else 0.0,
            "detokenize_s": t_detok - t_end,
            "batch": B,
            "cfg_rows": rows - B,
            "dtype": str(dtype).replace("torch.", ""),
            "weights": "bf16" if self._bf16_weights else str(dtype).replace("torch.", ""),
        }
        for d in docs:
            d.timings = dict(timings)
        return docs

    def _open_span(self, ids: list[int], sm: ModalityStateMachine, b: int) -> list[int]:
        """The media span a prompt ends inside (marker + ids so far), or [] when it ends in text."""
        if int(sm.mode[b]) not in (Mode.IMAGE, Mode.AUDIO):
            return []
        marker = self.vocab.boi if int(sm.mode[b]) == Mode.IMAGE else self.vocab.boa
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
        gen_spans = split_spans(([prompt_ids[-1]] if opened else []) + new_ids, v)
        spans = detokenize(prompt_spans + gen_spans, self.tokenizers)
        if finish == "stop":
            for s in reversed(spans):
                if s.kind == "text" and not s.from_prompt and s.text:
                    cut = min((s.text.find(x) + len(x) for x in cfg.stop if x in s.text), default=len(s.text))
                    s.text = s.text[:cut]
                    break
        settings = {**cfg.to_dict(), "finish_reason": finish}
        return Document(spans=spans, ids=new_ids, prompt_ids=prompt_ids, settings=settings)
