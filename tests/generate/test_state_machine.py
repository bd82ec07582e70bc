import random

import pytest
import torch

from chameleon_lite.errors import UserError
from chameleon_lite.generate.state_machine import ModalityStateMachine, Mode
from chameleon_lite.vocab import UnifiedVocab

V = UnifiedVocab(text_size=50, image_codebook=16, audio_levels=3, audio_codebook=8)
N = 4


def allowed_ids(sm, b):
    r = sm.allowed_ranges()[b]
    return [i for lo, hi in r.tolist() for i in range(lo, hi)]


def test_text_mode_choices():
    sm = ModalityStateMachine(V, N, 1, 100)
    ids = allowed_ids(sm, 0)
    assert set(ids) == set(range(*V.text_range())) | {V.eos, V.boi, V.boa}
    assert int(sm.forced()[0]) == -1


def test_image_span_exact_length_then_forced_eoi():
    sm = ModalityStateMachine(V, N, 1, 100)
    sm.advance(torch.tensor([V.boi]))
    for _ in range(N):
        assert set(allowed_ids(sm, 0)) == set(range(*V.image_range()))
        sm.advance(torch.tensor([V.image_offset + 1]))
    assert int(sm.forced()[0]) == V.eoi
    with pytest.raises(RuntimeError, match="not allowed"):
        sm.advance(torch.tensor([V.image_offset]))
    sm.advance(torch.tensor([V.eoi]))
    assert int(sm.mode[0]) == Mode.TEXT


def test_audio_levels_and_frame_boundaries():
    sm = ModalityStateMachine(V, N, 1, 100, max_audio_frames=2)
    sm.advance(torch.tensor([V.boa]))
    assert V.eoa not in allowed_ids(sm, 0)  # no empty audio span
    for frame in range(2):
        for level in range(3):
            lo, hi = V.audio_level_range(level)
            ids = allowed_ids(sm, 0)
            assert set(i for i in ids if i != V.eoa) == set(range(lo, hi))
            assert (V.eoa in ids) == (level == 0 and frame > 0)
            sm.advance(torch.tensor([lo + 3]))
    assert int(sm.forced()[0]) == V.eoa  # max_audio_frames reached


def test_boi_banned_near_the_end_and_eoa_forced_when_no_room():
    sm = ModalityStateMachine(V, N, 1, N + 1)
    assert V.boi not in allowed_ids(sm, 0)
    sm = ModalityStateMachine(V, N, 1, N + 2)
    assert V.boi in allowed_ids(sm, 0)
    sm = ModalityStateMachine(V, N, 1, 1 + 3 + 3)  # <boa>, one frame, then 3 left: no room for frame + <eoa>
    sm.advance(torch.tensor([V.boa]))
    for level in range(3):
        sm.advance(torch.tensor([V.audio_level_range(level)[0]]))
    assert int(sm.forced()[0]) == V.eoa


def test_eos_finishes_row_and_pads():
    sm = ModalityStateMachine(V, N, 2, 50)
    sm.advance(torch.tensor([V.eos, V.text_offset]))
    assert sm.done().tolist() == [True, False]
    assert int(sm.forced()[0]) == V.pad


def test_prompt_replay_and_invalid_prompt():
    sm = ModalityStateMachine(V, N, 1, 50)
    sm.feed_prompt(0, [V.bos, V.text_offset, V.boi, V.image_offset, V.image_offset])
    assert int(sm.mode[0]) == Mode.IMAGE and int(sm.count[0]) == 2 and int(sm.left[0]) == 50
    sm = ModalityStateMachine(V, N, 1, 50)
    with pytest.raises(UserError, match="not allowed"):
        sm.feed_prompt(0, [V.boi, V.image_offset, V.eoi])


def test_random_walks_always_produce_valid_streams():
    rng = random.Random(0)
    for _ in range(200):
        B = 3
        sm = ModalityStateMachine(V, N, B, rng.randint(1, 40))
        streams = [[] for _ in range(B)]
        while not bool(sm.done().all()):
            ids = []
            for b in range(B):
                choices = allowed_ids(sm, b)
                ids.append(rng.choice(choices))
            sm.advance(torch.tensor(ids))
            for b, t in enumerate(ids):
                if not streams[b] or streams[b][-1] != V.eos:
                    streams[b].append(t)
        for s in streams:
            mod, _, level = V.classify(torch.tensor(s)) if s else (None, None, None)
            i = 0
            while i < len(s):
                if s[i] == V.boi:
                    assert s[i + 1 : i + 1 + N] == [
                        t for t in s[i + 1 : i + 1 + N] if V.image_offset <= t < V.audio_offset
                    ]
                    assert len(s) > i + 1 + N and s[i + 1 + N] == V.eoi
                    i += N + 2
                elif s[i] == V.boa:
                    j = i + 1
                    while s[j] != V.eoa:
                        assert int(level[j]) == (j - i - 1) % 3
                        j += 1
                    assert (j - i - 1) % 3 == 0 and j - i - 1 > 0
                    i = j + 1
                else:
                    assert V.text_offset <= s[i] < V.image_offset or s[i] in (V.eos, V.pad)
                    i += 1


def test_required_media_span_comes_first_then_anything():
    sm = ModalityStateMachine(V, N, 2, 100)
    sm.feed_prompt(0, [V.bos, V.text_offset])
    sm.require_media(0)
    assert set(allowed_ids(sm, 0)) == {V.boi, V.boa}  # row 0: no text, no <eos> before its first span
    assert V.eos in allowed_ids(sm, 1)  # row 1 is not affected
    with pytest.raises(RuntimeError, match="not allowed"):
        sm.advance(torch.tensor([V.text_offset, V.text_offset]))
    sm.advance(torch.tensor([V.boa, V.eos]))
    for level in range(3):
        sm.advance(torch.tensor([V.audio_level_range(level)[0], V.pad]))
    sm.advance(torch.tensor([V.eoa, V.pad]))
    assert set(allowed_ids(sm, 0)) == set(range(*V.text_range())) | {V.eos, V.boi, V.boa}  # free again after it
    # only the kinds that fit are offered; none fitting, or a row inside a span, is the user's error
    sm = ModalityStateMachine(V, N, 1, 3 + 2)
    sm.require_media(0)
    assert allowed_ids(sm, 0) == [V.boa] and int(sm.forced()[0]) == V.boa
    sm = ModalityStateMachine(V, N, 1, 3 + 1)
    with pytest.raises(UserError, match="none fits in the 4 new positions"):
        sm.require_media(0)
    sm = ModalityStateMachine(V, N, 1, 100, allow_image=False, allow_audio=False)
    with pytest.raises(UserError, match="neither images nor audio"):
        sm.require_media(0)
    sm = ModalityStateMachine(V, N, 1, 100)
    sm.feed_prompt(0, [V.bos, V.boi])
    with pytest.raises(UserError, match="in image span"):
        sm.require_media(0)
