"""The unified vocabulary: one contiguous id space for special tokens, text, image codes and audio codes.

Layout (ARCHITECTURE §3)::

    [0, S)                  special tokens: <pad> <bos> <eos> <boi> <eoi> <boa> <eoa> + reserved
                            (reserved slots 7, 8, 9 named <user> <assistant> <eot> for conversations)
    [S, S+T)                text BPE ids
    [I0, I0+K_img)          image codes
    [A0, A0+nq*K_aud)       audio codes, level-major: id = A0 + level*K_aud + code

Every id maps to a modality by range in O(1): TEXT=0 (specials included), IMAGE=1, AUDIO=2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import torch

from chameleon_lite.errors import ConfigError, UserError
from chameleon_lite.files import read_json, write_json_atomic

TEXT, IMAGE, AUDIO = 0, 1, 2
MODALITY_NAMES = ("text", "image", "audio")
# The first LAYOUT_SPECIALS names are the layout every vocab.json records (and its hash covers). The names after
# them label reserved slots of that same layout, for conversations (ARCHITECTURE §4): naming a reserved slot moves
# no id, so it leaves the hash, vocab.json and every model trained before it as they were. A vocabulary has such a
# named slot only when num_special reaches it (conversation_ready).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<user>", "<assistant>", "<eot>")
LAYOUT_SPECIALS = 7
FORMAT_VERSION = 1


class VocabError(UserError, ValueError):
    """An id or a vocab file that does not fit the unified vocabulary."""


@dataclasses.dataclass(frozen=True)
class UnifiedVocab:
    """Sizes of each id range; everything else (offsets, hash, mappings) derives from them.

    Args:
        text_size: number of BPE ids (T).
        image_codebook: image VQ codebook size (K_img).
        audio_levels: residual VQ depth of the audio codec (nq).
        audio_codebook: codes per audio level (K_aud).
        num_special: size of the special range S (the named specials plus reserved slots).
    """

    text_size: int
    image_codebook: int
    audio_levels: int
    audio_codebook: int
    num_special: int = 16

    def __post_init__(self) -> None:
        for name in ("text_size", "image_codebook", "audio_levels", "audio_codebook"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise VocabError(f"{name} must be a non-negative int, got {v!r}")
        if self.num_special < LAYOUT_SPECIALS:
            raise VocabError(f"num_special must be >= {LAYOUT_SPECIALS}, got {self.num_special}")
        if self.size >= 2**31:
            raise VocabError(f"vocabulary of {self.size} ids does not fit int32")

    # ---- ranges ---------------------------------------------------------------------------------
    @property
    def text_offset(self) -> int:
        return self.num_special

    @property
    def image_offset(self) -> int:
        return self.num_special + self.text_size

    @property
    def audio_offset(self) -> int:
        return self.image_offset + self.image_codebook

    @property
    def size(self) -> int:
        return self.audio_offset + self.audio_levels * self.audio_codebook

    def __len__(self) -> int:
        return self.size

    def image_range(self) -> tuple[int, int]:
        return self.image_offset, self.audio_offset

    def audio_level_range(self, level: int) -> tuple[int, int]:
        if not 0 <= level < self.audio_levels:
            raise VocabError(f"audio level {level} outside [0, {self.audio_levels})")
        lo = self.audio_offset + level * self.audio_codebook
        return lo, lo + self.audio_codebook

    def text_range(self) -> tuple[int, int]:
        return self.text_offset, self.image_offset

    # ---- named specials -------------------------------------------------------------------------
    @property
    def pad(self) -> int:
        return 0

    @property
    def bos(self) -> int:
        return 1

    @property
    def eos(self) -> int:
        return 2

    @property
    def boi(self) -> int:
        return 3

    @property
    def eoi(self) -> int:
        return 4

    @property
    def boa(self) -> int:
        return 5

    @property
    def eoa(self) -> int:
        return 6

    @property
    def user(self) -> int:
        return self.special_id("<user>")

    @property
    def assistant(self) -> int:
        return self.special_id("<assistant>")

    @property
    def eot(self) -> int:
        return self.special_id("<eot>")

    @property
    def conversation_ready(self) -> bool:
        """Whether the special range holds the conversation tokens ``<user> <assistant> <eot>``."""
        return self.num_special >= len(SPECIAL_TOKENS)

    def special_names(self) -> tuple[str, ...]:
        """The named specials this vocabulary has (the layout's, then those of the reserved slots it holds)."""
        return SPECIAL_TOKENS[: min(self.num_special, len(SPECIAL_TOKENS))]

    def special_id(self, name: str) -> int:
        names = self.special_names()
        if name in names:
            return names.index(name)
        if name in SPECIAL_TOKENS:
            raise VocabError(
                f"special token {name!r} needs num_special >= {SPECIAL_TOKENS.index(name) + 1}; this vocabulary has "
                f"{self.num_special}"
            )
        raise VocabError(f"unknown special token {name!r}; known: {', '.join(names)}")

    def special_name(self, idx: int) -> str:
        names = self.special_names()
        if 0 <= idx < len(names):
            return names[idx]
        if 0 <= idx < self.num_special:
            return f"<reserved_{idx}>"
        raise VocabError(f"id {idx} is not a special token (specials are [0, {self.num_special}))")

    # ---- validation -----------------------------------------------------------------------------
    def check_ids(
        self, ids: torch.Tensor | list[int], lo: int | None = None, hi: int | None = None, what: str = "token"
    ) -> None:
        """Raise VocabError naming the first id outside [lo, hi) (default: the whole vocabulary)."""
        lo = 0 if lo is None else lo
        hi = self.size if hi is None else hi
        t = torch.as_tensor(ids)
        if t.numel() == 0:
            return
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise VocabError(f"{what} ids must be an integer tensor, got dtype {t.dtype}")
        bad = (t < lo) | (t >= hi)
        if bool(bad.any()):
            first = int(t[bad].flatten()[0])
            n = int(bad.sum())
            raise VocabError(f"{what} id {first} is outside the valid range [{lo}, {hi}) ({n} id(s) out of range)")

    # ---- vectorised mappings --------------------------------------------------------------------
    def classify(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Map unified ids to (modality, local code, audio level).

        ids: any shape, integer dtype. Returns three tensors of that shape on ids' device: modality int8
        (TEXT/IMAGE/AUDIO), local int64 (text: id - S for BPE ids and the id itself for specials; image: code;
        audio: code within its level), level int64 (audio level, -1 elsewhere). Raises VocabError naming the first
        id outside the vocabulary.
        """
        ids = torch.as_tensor(ids)
        self.check_ids(ids)
        return _range_lookup(ids, self.text_offset, self.image_offset, self.audio_offset, self.audio_codebook)

    def modality(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: any shape -> int8 modality of each id."""
        return self.classify(ids)[0]

    def text_to_unified(self, bpe_ids: torch.Tensor | list[int]) -> torch.Tensor:
        t = torch.as_tensor(bpe_ids, dtype=torch.int64)
        self.check_ids(t, 0, self.text_size, "text BPE")
        return t + self.text_offset

    def unified_to_text(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        t = torch.as_tensor(ids, dtype=torch.int64)
        self.check_ids(t, self.text_offset, self.image_offset, "text")
        return t - self.text_offset

    def image_to_unified(self, codes: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(codes, dtype=torch.int64)
        self.check_ids(t, 0, self.image_codebook, "image code")
        return t + self.image_offset

    def unified_to_image(self, ids: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(ids, dtype=torch.int64)
        self.check_ids(t, self.image_offset, self.audio_offset, "image")
        return t - self.image_offset

    def audio_to_unified(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [nq, frames] -> frame-major flat ids [frames * nq] (f0l0 f0l1 … f1l0 …)."""
        t = torch.as_tensor(codes, dtype=torch.int64)
        if t.dim() != 2 or t.shape[0] != self.audio_levels:
            raise VocabError(f"audio codes must have shape [nq={self.audio_levels}, frames], got {tuple(t.shape)}")
        self.check_ids(t, 0, self.audio_codebook, "audio code")
        level = torch.arange(self.audio_levels, dtype=torch.int64).unsqueeze(1)
        return (t + self.audio_offset + level * self.audio_codebook).t().reshape(-1)

    def unified_to_audio(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        """Frame-major flat ids [frames * nq] -> codes [nq, frames]; checks whole frames and level order."""
        t = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        nq = self.audio_levels
        if t.numel() % nq:
            raise VocabError(f"audio span of {t.numel()} ids is not a whole number of frames ({nq} ids per frame)")
        self.check_ids(t, self.audio_offset, self.size, "audio")
        rel = t - self.audio_offset
        level = rel // self.audio_codebook
        expected = torch.arange(t.numel(), dtype=torch.int64) % nq
        wrong = level != expected
        if bool(wrong.any()):
            pos = int(torch.nonzero(wrong)[0])
            raise VocabError(
                f"audio id {int(t[pos])} at position {pos} belongs to level {int(level[pos])}, expected level {int(expected[pos])} (frame-major order)"
            )
        return (rel % self.audio_codebook).reshape(-1, nq).t().contiguous()

    # ---- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The layout (what vocab.json holds and :attr:`hash` covers); the conversation names of reserved slots are
        not part of it, see :data:`SPECIAL_TOKENS`."""
        return {
            "format_version": FORMAT_VERSION,
            "num_special": self.num_special,
            "special_tokens": list(SPECIAL_TOKENS[:LAYOUT_SPECIALS]),
            "text_size": self.text_size,
            "image_codebook": self.image_codebook,
            "audio_levels": self.audio_levels,
            "audio_codebook": self.audio_codebook,
            "offsets": {
                "text": self.text_offset,
                "image": self.image_offset,
                "audio": self.audio_offset,
                "end": self.size,
            },
        }

    @property
    def hash(self) -> str:
        """sha256 (hex, 16 chars) over the canonical JSON of the layout."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> str:
        """Write vocab.json (path may be a folder or a file path). Returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "vocab.json")
        d = self.to_dict()
        d["hash"] = self.hash
        write_json_atomic(path, d)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> UnifiedVocab:
        try:
            if d.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
                raise VocabError(f"{source}: unsupported vocab format_version {d.get('format_version')}")
            v = cls(
                text_size=int(d["text_size"]),
                image_codebook=int(d["image_codebook"]),
                audio_levels=int(d["audio_levels"]),
                audio_codebook=int(d["audio_codebook"]),
                num_special=int(d["num_special"]),
            )
        except VocabError as e:
            raise VocabError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VocabError(f"{source}: not a valid vocab description ({type(e).__name__}: {e})") from None
        if "hash" in d and d["hash"] != v.hash:
            raise VocabError(
                f"{source}: stored hash {d['hash']} does not match its contents ({v.hash}); the file was edited or is corrupt"
            )
        return v

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnifiedVocab:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "vocab.json")
        try:
            d = read_json(path, "vocab file")
        except ConfigError as e:
            raise VocabError(str(e)) from None
        return cls.from_dict(d, source=path)

    def describe(self) -> str:
        lines = [f"unified vocabulary: {self.size} ids (hash {self.hash})"]
        lines.append(
            f"  special [0, {self.text_offset})  " + " ".join(f"{n}={i}" for i, n in enumerate(self.special_names()))
        )
        lines.append(f"  text    [{self.text_offset}, {self.image_offset})  {self.text_size} BPE ids")
        lines.append(f"  image   [{self.image_offset}, {self.audio_offset})  codebook {self.image_codebook}")
        lines.append(
            f"  audio   [{self.audio_offset}, {self.size})  {self.audio_levels} levels x {self.audio_codebook} codes (level-major)"
        )
        return "\n".join(lines)


def classify_ids(
    ids: torch.Tensor, text_offset: int, image_offset: int, audio_offset: int, audio_codebook: int, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UnifiedVocab.classify for a layout given by its offsets: ids (any shape, integer) -> (modality int8,
    local int64, level int64), each shaped like ids.

    Raises VocabError for offsets out of order, a non-integer dtype, or naming the first id outside [0, vocab_size).
    """
    if not 0 <= text_offset <= image_offset <= audio_offset <= vocab_size:
        raise VocabError("classify_ids: offsets must satisfy 0 <= text <= image <= audio <= vocab_size")
    if audio_codebook <= 0 and audio_offset != vocab_size:
        raise VocabError("classify_ids: audio_codebook must be positive when there are audio ids")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise VocabError(f"token ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.numel():
        lo, hi = torch.aminmax(ids)
        if int(lo) < 0 or int(hi) >= vocab_size:
            bad = ids[(ids < 0) | (ids >= vocab_size)].flatten()[0]
            raise VocabError(f"token id {int(bad)} is outside the valid range [0, {vocab_size})")
    return _range_lookup(ids, text_offset, image_offset, audio_offset, audio_codebook)


def _range_lookup(
    ids: torch.Tensor, text_offset: int, image_offset: int, audio_offset: int, audio_codebook: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """classify_ids of ids already checked. Comparisons with the range starts rather than torch.bucketize: these
    elementwise ops keep a training batch of ids on one thread, bucketize's parallel_for splits a few hundred."""
    ids = ids.to(torch.int64)
    k = max(audio_codebook, 1)
    in_image, in_audio = ids >= image_offset, ids >= audio_offset
    modality = in_image.to(torch.int8) + in_audio.to(torch.int8)  # TEXT 0 (specials too), IMAGE 1, AUDIO 2
    level = (ids - audio_offset).div_(k, rounding_mode="floor").clamp_(min=-1)  # -1 below the audio range
    text_start = torch.where(ids >= text_offset, text_offset, 0)  # a special is its own local code
    start = torch.where(in_audio, level * k + audio_offset, torch.where(in_image, image_offset, text_start))
    return modality, ids - start, level
