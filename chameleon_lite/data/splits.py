"""Splits of the real-digit data by construction: which written and spoken digits each stage may learn from.

Every stage that trains on AV-MNIST (tokenizers, judges, the model) and every eval on it asks this module, so no
held-out item can reach training by a different choice elsewhere. Three parts each:

* ``train``: what training learns from;
* ``val``: a part of the training population kept out of gradient steps, for early stopping and model selection;
* ``test``: held out of all training; only evals read it.

Written digits (MNIST, keyed by the picture's index in its IDX files): a keyed hash of the index picks the part,
20 % test and 5 % val, so the parts are fixed for any file length, draw from the whole file (the first 5000 of
MNIST's t10k set come from one writer population, the rest from another) and need no stored list.

Spoken digits (FSDD, keyed by speaker and take): speaker-independent. One speaker, :data:`HELDOUT_SPEAKER`, is the
test part entirely; of the other speakers, takes 0-4 of each digit (FSDD's own test convention) are val, the rest
train. Every FSDD speaker has 50 takes of every digit, so label balance cannot choose; george is the most typical
speaker (median clip length 0.43 s against 0.44 s over all five; level within the others' range, unlike theo's
clips which are ten times quieter), so his score measures speaker generalisation, not an outlier's channel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from chameleon_lite.errors import DataError

SPLITS = ("train", "val", "test")
MNIST_TEST_PERCENT = 20
MNIST_VAL_PERCENT = 5
_MNIST_KEY = b"chameleon-lite/avmnist/mnist-split/v1"  # changing it reshuffles every MNIST split: never do

HELDOUT_SPEAKER = "george"
VAL_TAKES = range(0, 5)


def _bucket(index: int) -> int:
    """A stable number in [0, 100) for an MNIST index (blake2b, the same on every machine and Python)."""
    digest = hashlib.blake2b(str(index).encode(), key=_MNIST_KEY, digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100


def split_of_mnist(index: int) -> str:
    """The part ("train", "val" or "test") of the MNIST picture at ``index`` (its position in the IDX files)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise DataError(f"an MNIST index is an integer >= 0, got {index!r}")
    b = _bucket(index)
    return "test" if b < MNIST_TEST_PERCENT else "val" if b < MNIST_TEST_PERCENT + MNIST_VAL_PERCENT else "train"


def split_of_recording(meta: Mapping[str, Any]) -> str:
    """The part of a spoken-digit clip from its meta (as ``data import-labelled-audio`` writes it with FSDD's
    pattern ``{label}_{speaker}_{index}.wav``): the held-out speaker -> "test"; takes 0-4 of the others -> "val"."""
    speaker, take = meta.get("speaker"), meta.get("index")
    if not isinstance(speaker, str) or isinstance(take, bool) or not isinstance(take, int) or take < 0:
        raise DataError(
            f"a spoken-digit clip needs meta 'speaker' (a name) and 'index' (its take, an integer >= 0), "
            f"got speaker={speaker!r} index={take!r}"
        )
    if speaker == HELDOUT_SPEAKER:
        return "test"
    return "val" if take in VAL_TAKES else "train"


def describe_splits() -> dict[str, str]:
    """One sentence per modality, for the records a training run or an eval writes."""
    return {
        "written": f"MNIST index by keyed blake2b: {MNIST_TEST_PERCENT} % test (held out of all training), "
        f"{MNIST_VAL_PERCENT} % val, the rest train (chameleon_lite.data.splits.split_of_mnist)",
        "spoken": f"FSDD speaker {HELDOUT_SPEAKER} is test (unseen speaker); takes {VAL_TAKES.start}-"
        f"{VAL_TAKES.stop - 1} of the other speakers are val, the rest train "
        "(chameleon_lite.data.splits.split_of_recording)",
    }
