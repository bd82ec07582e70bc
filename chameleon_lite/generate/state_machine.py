"""The per-row modality state machine of generation (ARCHITECTURE §4).

Each row is in one of four modes:

- TEXT: text ids, ``<eos>``, ``<boi>`` (only if a whole image still fits: N image ids + ``<eoi>`` + one more
  position, i.e. at least N+2 positions remain) and ``<boa>`` (only if one frame + ``<eoa>`` + one more fit).
  A row told that its prompt is a complete request (``require_media``) allows only ``<boi>``/``<boa>`` until it
  opens its first span.
- IMAGE: exactly N image ids, then ``<eoi>`` is forced.
- AUDIO: the position inside the span fixes the RVQ level, so only that level's id range is allowed; ``<eoa>``
  only at a frame boundary after at least one frame; ``<eoa>`` is forced at a boundary when another frame +
  ``<eoa>`` would not fit, or when the span reached ``max_audio_frames``.
- DONE: the row emitted ``<eos>`` (or ran out of room); it is padded with ``<pad>`` and ignored.

A row in a conversation (``set_conversation``) answers inside an assistant turn: in TEXT mode ``<eot>`` is allowed
too and ends the row (the turn is over). Its prompt may hold the turn markers ``<user>``, ``<assistant>`` and
``<eot>`` (earlier turns); generation never opens a turn itself.

The machine is host-side bookkeeping over small integer arrays; it produces, per decode step, the allowed id
ranges ``[B, R, 2]`` (half-open, unused slots ``(0, 0)``) that the fused sampler consumes, the forced id of
rows that have exactly one choice, and the modality that selects each row's sampling settings.
"""

from __future__ import annotations

import enum

import torch

from chameleon_lite.errors import UserError
from chameleon_lite.vocab import UnifiedVocab

MAX_RANGES = 4


class Mode(enum.IntEnum):
    TEXT = 0
    IMAGE = 1
    AUDIO = 2
    DONE = 3


class ModalityStateMachine:
    """State of B rows. ``positions_left[b]`` counts the positions still free in row b's context.

    Args:
        vocab: the unified vocabulary.
        image_tokens: N, the number of ids in an image span.
        batch: number of rows B.
        positions_left: [B] ints or an int: free positions per row (context length - current length).
        max_audio_frames: optional cap on frames per audio span.
    """

    def __init__(
        self,
        vocab: UnifiedVocab,
        image_tokens: int,
        batch: int,
        positions_left: int | list[int] | torch.Tensor,
        max_audio_frames: int | None = None,
        allow_image: bool = True,
        allow_audio: bool = True,
    ) -> None:
        if image_tokens <= 0 and allow_image and vocab.image_codebook > 0:
            raise ValueError("image_tokens must be positive when images may be generated")
        self.vocab = vocab
        self.n_image = image_tokens
        self.nq = vocab.audio_levels
        self.allow_image = allow_image and vocab.image_codebook > 0
        self.allow_audio = allow_audio and vocab.audio_levels > 0
        self.max_audio_frames = max_audio_frames
        self.mode = torch.full((batch,), int(Mode.TEXT), dtype=torch.int64)
        self.count = torch.zeros(batch, dtype=torch.int64)  # ids emitted inside the current image/audio span
        self.media_next = torch.zeros(batch, dtype=torch.bool)  # the next id must open an image or audio span
        self.chat = torch.zeros(batch, dtype=torch.bool)  # the row answers in an assistant turn (ends at <eot>)
        self._feeding = False  # replaying a prompt: turn markers are allowed in chat rows and end nothing
        left = torch.as_tensor(positions_left, dtype=torch.int64)
        self.left = left.expand(batch).clone() if left.dim() == 0 else left.clone()
        if self.left.shape != (batch,):
            raise ValueError(f"positions_left must be an int or have shape [{batch}]")

    @property
    def batch(self) -> int:
        return self.mode.shape[0]

    # ---- prompts ----------------------------------------------------------------------------------
    def feed_prompt(self, row: int, ids: list[int] | torch.Tensor) -> None:
        """Replay a prompt's ids on one row (without consuming positions: the caller sets positions_left after
        the prompt). Raises UserError if the prompt is not a valid prefix (e.g. a short image span closed)."""
        left = int(self.left[row])
        self.left[row] = 10**9  # prompt ids are checked for structure, not for room
        self._feeding = True
        try:
            for i, t in enumerate(torch.as_tensor(ids).reshape(-1).tolist()):
                if i == 0 and t == self.vocab.bos:
                    continue
                ok = self._allowed_one(row, t)
                if not ok:
                    raise UserError(f"prompt id {t} at position {i} is not allowed there ({self.describe(row)})")
                self._advance_one(row, t)
        finally:
            self.left[row] = left
            self._feeding = False

    def set_conversation(self, row: int) -> None:
        """Row ``row`` is a conversation: its prompt may hold turn markers and its answer ends at ``<eot>``. Call
        before :meth:`feed_prompt`."""
        if not self.vocab.conversation_ready:
            raise UserError("the vocabulary has no conversation tokens (<user> <assistant> <eot>)")
        self.chat[row] = True

    def require_media(self, row: int) -> None:
        """Row ``row`` (in TEXT mode, after its prompt) must open an image or audio span next: its prompt is a
        complete request, not text to go on writing. Raises UserError when neither kind of span fits."""
        if Mode(int(self.mode[row])) != Mode.TEXT:
            raise UserError(f"a media span must come next, but {self.describe(row)}")
        if not (self.allow_image or self.allow_audio):
            raise UserError("a media span must come next, but the model makes neither images nor audio")
        left = int(self.left[row])
        if not ((self.allow_image and left >= self.n_image + 2) or (self.allow_audio and left >= self.nq + 2)):
            raise UserError(f"a media span must come next, but none fits in the {left} new positions left")
        self.media_next[row] = True

    # ---- queries ----------------------------------------------------------------------------------
    def _ranges_row(self, b: int) -> list[tuple[int, int]]:
        v = self.vocab
        mode = Mode(int(self.mode[b]))
        left = int(self.left[b])
        if mode == Mode.DONE or left <= 0:
            return [(v.pad, v.pad + 1)]
        if mode == Mode.TEXT and bool(self.media_next[b]):
            out = []
            if self.allow_image and left >= self.n_image + 2:
                out.append((v.boi, v.boi + 1))
            if self.allow_audio and left >= self.nq + 2:
                out.append((v.boa, v.boa + 1))
            return out or [(v.eos, v.eos + 1)]  # (require_media saw room; this keeps a row from sticking)
        if mode == Mode.TEXT:
            out = [v.text_range()]
            lo_s = v.eos
            hi_s = v.eos + 1
            if self.allow_image and left >= self.n_image + 2:
                hi_s = v.boi + 1  # <eos> and <boi> are adjacent ids
            out.append((lo_s, hi_s))
            if self.allow_audio and left >= self.nq + 2:
                out.append((v.boa, v.boa + 1))
            if bool(self.chat[b]):
                if self._feeding:  # earlier turns: <user> <assistant> <eot> (adjacent ids, in that order)
                    out.append((v.user, v.eot + 1))
                else:
                    out.append((v.eot, v.eot + 1))
            return out
        k = int(self.count[b])
        if mode == Mode.IMAGE:
            if k >= self.n_image:
                return [(v.eoi, v.eoi + 1)]
            return [v.image_range()]
        # AUDIO
        level = k % self.nq
        if level == 0 and k > 0:
            frames = k // self.nq
            capped = self.max_audio_frames is not None and frames >= self.max_audio_frames
            if capped or left < self.nq + 1:
                return [(v.eoa, v.eoa + 1)]
            return [v.audio_level_range(0), (v.eoa, v.eoa + 1)]
        return [v.audio_level_range(level)]

    def allowed_ranges(self) -> torch.Tensor:
        """int64 [B, R, 2] half-open allowed id ranges per row; unused slots are (0, 0)."""
        out = torch.zeros(self.batch, MAX_RANGES, 2, dtype=torch.int64)
        for b in range(self.batch):
            for r, (lo, hi) in enumerate(self._ranges_row(b)):
                out[b, r, 0], out[b, r, 1] = lo, hi
        return out

    def forced(self) -> torch.Tensor:
        """int64 [B]: the only allowed id of rows that have exactly one choice, else -1."""
        out = torch.full((self.batch,), -1, dtype=torch.int64)
        for b in range(self.batch):
            r = self._ranges_row(b)
            if len(r) == 1 and r[0][1] - r[0][0] == 1:
                out[b] = r[0][0]
        return out

    def modality(self) -> torch.Tensor:
        """int64 [B]: the mode of each row (Mode values), which selects its sampling settings."""
        return self.mode.clone()

    def done(self) -> torch.Tensor:
        return self.mode == int(Mode.DONE)

    def row_mode(self, row: int) -> Mode:
        return Mode(int(self.mode[row]))

    def span_progress(self, row: int) -> tuple[int, int | None] | None:
        """(ids so far, ids in the span or None for audio) while ``row`` is inside an image/audio span, else None."""
        mode = self.row_mode(row)
        if mode not in (Mode.IMAGE, Mode.AUDIO):
            return None
        return int(self.count[row]), self.n_image if mode == Mode.IMAGE else None

    def ids_needed(self, row: int) -> int:
        """The fewest new ids ``row`` must still produce: the rest of an open image span and its <eoi>, one audio
        frame and its <eoa>, or one id."""
        mode = self.row_mode(row)
        if mode == Mode.IMAGE:
            return self.n_image - int(self.count[row]) + 1
        return self.nq + 1 if mode == Mode.AUDIO else 1

    def stop(self, row: int) -> None:
        """End ``row`` now (a stop string was generated): it emits nothing more."""
        self.mode[row] = int(Mode.DONE)

    def _allowed_one(self, b: int, t: int) -> bool:
        return any(lo <= t < hi for lo, hi in self._ranges_row(b))

    def describe(self, b: int) -> str:
        mode = Mode(int(self.mode[b]))
        if mode in (Mode.IMAGE, Mode.AUDIO):
            return f"row {b} in {mode.name.lower()} span after {int(self.count[b])} ids"
        return f"row {b} in {mode.name.lower()} mode"

    # ---- transitions ------------------------------------------------------------------------------
    def _advance_one(self, b: int, t: int) -> None:
        v = self.vocab
        mode = Mode(int(self.mode[b]))
        self.left[b] -= 1
        if mode == Mode.DONE:
            return
        if mode == Mode.TEXT:
            if t == v.eos or (t == v.eot and bool(self.chat[b]) and not self._feeding):
                self.mode[b] = int(Mode.DONE)
            elif t == v.boi:
                self.mode[b], self.count[b], self.media_next[b] = int(Mode.IMAGE), 0, False
            elif t == v.boa:
                self.mode[b], self.count[b], self.media_next[b] = int(Mode.AUDIO), 0, False
        elif mode == Mode.IMAGE:
            if t == v.eoi:
                self.mode[b], self.count[b] = int(Mode.TEXT), 0
            else:
                self.count[b] += 1
        else:
            if t == v.eoa:
                self.mode[b], self.count[b] = int(Mode.TEXT), 0
            else:
                self.count[b] += 1
        if int(self.left[b]) <= 0:  # out of room; a span can only be cut here if the prompt opened it too late
            self.mode[b] = int(Mode.DONE)

    def advance(self, ids: torch.Tensor) -> None:
        """ids: [B] the ids just appended to each row. Raises if an id was not allowed (a sampler bug)."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        if len(ids) != self.batch:
            raise ValueError(f"advance expects {self.batch} ids, got {len(ids)}")
        for b, t in enumerate(ids):
            if int(self.mode[b]) != int(Mode.DONE) and not self._allowed_one(b, t):
                raise RuntimeError(f"id {t} is not allowed for {self.describe(b)}")
            self._advance_one(b, t)
