"""The splits of the real-digit data: disjoint, stable across runs and machines, the shares they promise."""

from __future__ import annotations

import collections
import os
import re

import pytest

from chameleon_lite.data.splits import HELDOUT_SPEAKER, SPLITS, split_of_mnist, split_of_recording
from chameleon_lite.errors import DataError

FSDD = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "avmnist", "fsdd", "recordings")


def test_mnist_split_is_stable():
    # pinned: a change here moves held-out digits into training data that was already trained on
    assert [split_of_mnist(i) for i in range(12)] == [
        "train", "train", "train", "train", "test", "train", "train", "train", "train", "train", "test", "train"
    ]  # fmt: skip


def test_mnist_split_shares_and_disjointness():
    parts = collections.defaultdict(set)
    for i in range(8000):
        parts[split_of_mnist(i)].add(i)
    assert set(parts) == set(SPLITS)
    assert sum(len(p) for p in parts.values()) == 8000  # each index in exactly one part
    assert 0.18 < len(parts["test"]) / 8000 < 0.22
    assert 0.04 < len(parts["val"]) / 8000 < 0.06
    # no block of the file is all one part: the two writer populations of t10k are both in every part
    assert {split_of_mnist(i) for i in range(5000)} == {split_of_mnist(i) for i in range(5000, 8000)} == set(SPLITS)


def test_recording_split_is_speaker_independent():
    speakers = ["george", "jackson", "lucas", "nicolas", "theo"]
    seen = collections.defaultdict(set)
    for sp in speakers:
        for take in range(50):
            seen[split_of_recording({"label": 3, "speaker": sp, "index": take})].add(sp)
    assert seen["test"] == {HELDOUT_SPEAKER}
    assert HELDOUT_SPEAKER not in seen["train"] | seen["val"]
    assert seen["train"] == seen["val"] == set(speakers) - {HELDOUT_SPEAKER}
    assert split_of_recording({"speaker": "theo", "index": 4}) == "val"
    assert split_of_recording({"speaker": "theo", "index": 5}) == "train"


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="AV-MNIST data not found at ../shared/data/avmnist")
def test_recording_split_on_the_real_files():
    counts = collections.Counter()
    for name in os.listdir(FSDD):
        m = re.fullmatch(r"(\d)_([a-z]+)_(\d+)\.wav", name)
        counts[split_of_recording({"speaker": m[2], "index": int(m[3])})] += 1
    assert counts == {"test": 500, "val": 200, "train": 1800}


@pytest.mark.parametrize("bad", [-1, "3", 2.0, True, None])
def test_bad_mnist_index(bad):
    with pytest.raises(DataError, match="MNIST index"):
        split_of_mnist(bad)


@pytest.mark.parametrize("meta", [{}, {"speaker": "theo"}, {"speaker": 3, "index": 1}, {"speaker": "x", "index": "1"}])
def test_bad_recording_meta(meta):
    with pytest.raises(DataError, match="speaker"):
        split_of_recording(meta)
