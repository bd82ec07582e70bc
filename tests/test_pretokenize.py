import json
import os

import numpy as np
import pytest
import torch
from toy import ToyAudio, small_image_tokenizer

from chameleon_lite.cli import main
from chameleon_lite.data.loader import PackedLoader
from chameleon_lite.data.manifest import iter_documents
from chameleon_lite.data.procedural import CorpusConfig, write_corpus
from chameleon_lite.data.sequence import Part, SequenceEncoder
from chameleon_lite.data.shards import ShardSet
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.pretokenize import pretokenize, split_validation
from chameleon_lite.tokenizers.loader import Tokenizers
from chameleon_lite.tokenizers.text import TextTokenizer, iter_manifest_texts
from chameleon_lite.vocab import UnifiedVocab


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretok")
    manifest = write_corpus(str(root / "corpus"), 24, seed=3, config=CorpusConfig(image_size=32), progress=False)
    text = TextTokenizer.train(iter_manifest_texts(manifest), vocab_size=300, progress=False)
    image = small_image_tokenizer()
    vocab = UnifiedVocab(text_size=text.vocab_size, image_codebook=16, audio_levels=2, audio_codebook=8)
    tk = Tokenizers(vocab=vocab, text=text, image=image, audio=ToyAudio())
    # a text+image-only manifest and a saved tokenizer folder for the worker-process and CLI paths
    tok_dir = str(root / "tok")
    text.save(tok_dir)
    image.save(tok_dir)
    ti_manifest = str(root / "corpus" / "text_image.jsonl")
    with open(manifest) as f, open(ti_manifest, "w") as g:
        for line in f:
            if '"audio"' not in line:
                g.write(line)
    return {"root": str(root), "manifest": manifest, "tk": tk, "tok_dir": tok_dir, "ti_manifest": ti_manifest}


@pytest.fixture(scope="module")
def shards(corpus):
    out = os.path.join(corpus["root"], "shards")
    summary = pretokenize(
        corpus["manifest"], corpus["tk"], out, val_fraction=0.25, seed=1, chunk_docs=5, shard_tokens=500, progress=False
    )
    return out, summary


def test_sequence_format(corpus):
    tk = corpus["tk"]
    v = tk.vocab
    img = np.zeros((20, 24, 3), np.uint8)
    wav = np.full(16000 // 2, 0.25, np.float32)
    enc = SequenceEncoder(tk).encode(
        [Part("text", "hi"), Part("image", img, bidirectional=True), Part("audio", wav), Part("text", "x")]
    )
    ids = enc.ids.tolist()
    assert ids[0] == v.bos and ids[-1] == v.eos
    i = ids.index(v.boi)
    n = tk.image.tokens_per_image
    assert ids[i + n + 1] == v.eoi and all(v.image_offset <= t < v.audio_offset for t in ids[i + 1 : i + n + 1])
    assert enc.spans == [(i + 1, i + n + 1)]
    assert enc.span_ids()[i + 1 : i + n + 1].tolist() == [1] * n and enc.span_ids().sum() == n
    a = ids.index(v.boa)
    b = ids.index(v.eoa)
    assert b - a - 1 == 25 * 2  # 25 frames of 2 levels
    v.unified_to_audio(ids[a + 1 : b])  # frame-major, levels in order
    assert tk.text.decode((np.array(ids[1:i]) - v.text_offset).tolist()) == "hi"


def test_shards_hold_every_document(corpus, shards):
    out, summary = shards
    docs = list(iter_documents(corpus["manifest"]))
    train, val = ShardSet(os.path.join(out, "train")), ShardSet(os.path.join(out, "val"))
    assert len(train) + len(val) == len(docs) == summary["train"]["documents"] + summary["val"]["documents"]
    assert len(val) == 6
    assert len(train.meta["shards"]) > 1  # shard_tokens=500 cuts several files
    enc = SequenceEncoder(corpus["tk"])
    val_mask = split_validation(len(docs), 0.25, 1)
    expect = {"train": [], "val": []}
    for d, is_val in zip(docs, val_mask):
        expect["val" if is_val else "train"].append(d)
    for name, ss in (("train", train), ("val", val)):
        total = np.zeros(3, np.int64)
        for i, d in enumerate(expect[name]):
            ids, sp = ss.document(i)
            ref = enc.encode(
                [Part(s.kind, s.text if s.kind == "text" else s.path, s.bidirectional) for s in d.segments]
            )
            assert ids.tolist() == ref.ids.tolist()
            assert sp.tolist() == [list(s) for s in ref.spans]
            total += np.bincount(
                np.searchsorted([ss.vocab.image_offset, ss.vocab.audio_offset], ids, "right"), minlength=3
            )
        assert ss.meta["tokens_per_modality"] == dict(zip(("text", "image", "audio"), total.tolist()))
        assert ss.meta["vocab_hash"] == corpus["tk"].vocab.hash
    # the procedural corpus marks captioned media as bidirectional inputs
    assert sum(len(train.document(i)[1]) for i in range(len(train))) > 0


def test_workers_give_the_same_shards(corpus):
    outs = []
    for w in (1, 2):
        out = os.path.join(corpus["root"], f"w{w}")
        pretokenize(
            corpus["ti_manifest"], corpus["tok_dir"], out, workers=w, val_fraction=0.2, chunk_docs=3, progress=False
        )
        outs.append(out)
    for split in ("train", "val"):
        a, b = (ShardSet(os.path.join(o, split)) for o in outs)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert a.document(i)[0].tolist() == b.document(i)[0].tolist()
    # shards tokenized from a folder record which codes they hold (what training checks its tokenizers against)
    from chameleon_lite.bundle import codes_hash

    assert ShardSet(os.path.join(outs[0], "train")).meta["codes_hash"] == codes_hash(corpus["tok_dir"])


def test_bad_media_is_named_and_can_be_skipped(corpus, tmp_path):
    docs = [json.loads(x) for x in open(corpus["ti_manifest"])]
    img = next(s["image"] for d in docs for s in d["segments"] if "image" in s)
    base = os.path.dirname(corpus["ti_manifest"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(open(os.path.join(base, img), "rb").read()[:60])  # truncated PNG
    docs[2]["segments"] = [{"text": "broken"}, {"image": str(bad)}]
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(d) + "\n" for d in docs).replace('"images/', f'"{base}/images/'))
    with pytest.raises(DataError, match=r"m\.jsonl:3.*bad\.png"):
        pretokenize(str(m), corpus["tok_dir"], str(tmp_path / "o1"), progress=False)
    assert not os.path.exists(tmp_path / "o1" / "train")  # nothing half-written
    s = pretokenize(str(m), corpus["tok_dir"], str(tmp_path / "o2"), on_error="skip", progress=False)
    assert s["skipped"] == 1 and "bad.png" in s["skipped_examples"][0]
    assert s["train"]["documents"] == len(docs) - 1


def test_missing_tokenizer_and_bad_options(corpus, tmp_path):
    with pytest.raises(ConfigError, match="no audio tokenizer"):
        pretokenize(corpus["manifest"], corpus["tok_dir"], str(tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match="val_fraction"):
        pretokenize(corpus["ti_manifest"], corpus["tok_dir"], str(tmp_path / "o"), val_fraction=1.0, progress=False)
    with pytest.raises(DataError, match="manifest not found"):
        pretokenize(str(tmp_path / "nope.jsonl"), corpus["tok_dir"], str(tmp_path / "o"), progress=False)


def test_cli_tokenize(corpus, tmp_path, capsys):
    out = str(tmp_path / "cli")
    rc = main(
        [
            "data",
            "tokenize",
            "--manifest",
            corpus["ti_manifest"],
            "--tokenizers",
            corpus["tok_dir"],
            "--out",
            out,
            "--val-fraction",
            "0.1",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "train:" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "train", "meta.json")) and os.path.isfile(
        os.path.join(out, "val", "meta.json")
    )
    assert (
        main(["data", "tokenize", "--manifest", corpus["manifest"], "--tokenizers", corpus["tok_dir"], "--out", out])
        == 1
    )
    assert "no audio tokenizer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- loader
def _stream(ss: ShardSet) -> list[int]:
    return [int(t) for i in range(len(ss)) for t in ss.document(i)[0]]


def test_loader_rows_follow_the_stream(shards):
    out, _ = shards
    d = os.path.join(out, "train")
    ss = ShardSet(d)
    L = 64
    loader = PackedLoader(d, L, 4, seed=0, shuffle=False)
    stream = _stream(ss)
    n_rows = len(stream) // L + 3  # wraps into the next epoch
    rows = [loader.row(r) for r in range(n_rows)]
    for r, row in enumerate(rows):
        want = [stream[(r * L + i) % len(stream)] for i in range(L + 1)]
        assert row["input_ids"].tolist() == want[:-1] and row["targets"].tolist() == want[1:]
        assert row["input_ids"].dtype == torch.int64 and row["doc_ids"].dtype == torch.int32
        assert row["span_ids"].dtype == torch.int32 and row["loss_mask"].dtype == torch.bool
    v = ss.vocab
    for row in rows:
        ids, docs, pos, spans, mask = (row[k] for k in ("input_ids", "doc_ids", "positions", "span_ids", "loss_mask"))
        starts = (ids == v.bos).nonzero().flatten().tolist()
        for s in starts:
            assert pos[s] == 0
            if s > 0:
                assert docs[s] == docs[s - 1] + 1
                assert not mask[s - 1]  # never predict the next document's <bos>
        assert torch.all(torch.diff(docs) >= 0) and torch.all(torch.diff(docs) <= 1)
        same = torch.diff(docs) == 0
        assert torch.all(torch.diff(pos)[same] == 1)
        # targets inside bidirectional spans are not trained
        tgt_span = torch.cat([spans[1:], torch.zeros(1, dtype=spans.dtype)])
        inside = tgt_span != 0
        assert not mask[:-1][inside[:-1]].any()
        for k in spans.unique().tolist():
            if k:
                where = (spans == k).nonzero().flatten()
                assert bool((where.diff() == 1).all()), "a span is contiguous"
                assert bool((ids[where] >= v.image_offset).all()), "spans hold media codes only"
                assert len(set(docs[where].tolist())) == 1
    assert any(row["span_ids"].any() for row in rows)


def test_loader_world_size_independent_and_resumable(shards):
    d = os.path.join(shards[0], "train")
    one = PackedLoader(d, 32, 4, seed=7)
    full = [next(one) for _ in range(3)]
    r0, r1 = PackedLoader(d, 32, 4, rank=0, world_size=2, seed=7), PackedLoader(d, 32, 4, rank=1, world_size=2, seed=7)
    for b in full:
        a, c = next(r0), next(r1)
        for k in b:
            assert torch.equal(b[k], torch.cat([a[k], c[k]]))
    again = PackedLoader(d, 32, 4, seed=7)
    again.load_state_dict(json.loads(json.dumps(one.state_dict())))
    nxt = next(one)
    assert all(torch.equal(nxt[k], v) for k, v in next(again).items())
    other = PackedLoader(d, 32, 4, seed=8)
    assert not torch.equal(next(other)["input_ids"], full[0]["input_ids"])
    with pytest.raises(ConfigError, match="seq_len"):
        PackedLoader(d, 16, 4, seed=7).load_state_dict(one.state_dict())
    with pytest.raises(ConfigError, match="divisible"):
        PackedLoader(d, 32, 3, world_size=2)


def test_corrupt_shards_are_refused(shards, tmp_path):
    import shutil

    src = os.path.join(shards[0], "train")
    d = str(tmp_path / "s")
    shutil.copytree(src, d)
    tok = os.path.join(d, "tokens_00000.bin")
    with open(tok, "r+b") as f:
        f.truncate(os.path.getsize(tok) - 4)
    with pytest.raises(DataError, match="tokens_00000.bin.*incomplete or corrupt"):
        ShardSet(d)
    os.remove(os.path.join(d, "meta.json"))
    with pytest.raises(DataError, match="shard metadata not found"):
        PackedLoader(d, 8, 1)


def test_trainer_resumes_exactly_on_real_shards(shards, tmp_path):
    """The default loader of the trainer is PackedLoader: stopping and resuming gives the same losses."""
    from chameleon_lite.train.config import load_config
    from chameleon_lite.train.metrics import read_metrics
    from chameleon_lite.train.trainer import train

    def run(name, *extra):
        out = str(tmp_path / name)
        cfg = load_config(
            "debug",
            configs_dir="",
            base={"data": os.path.join(shards[0], "train"), "val_data": os.path.join(shards[0], "val"), "out": out},
            overrides=[
                "--seq_len=32",
                "--batch_size=2",
                "--dtype=fp32",
                "--warmup=1",
                "--steps=4",
                "--ckpt_every=2",
                "--val_every=2",
                "--val_batches=1",
                "--parallel=none",
                *extra,
            ],
        )
        train(cfg)
        return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "lr" in r}

    full = run("full")
    run("part", "--stop_after=2")
    assert run("part") == full and sorted(full) == [0, 1, 2, 3]


def test_a_picture_over_the_tokenizers_pixel_limit_is_refused(corpus, tmp_path):
    """Documents read their pictures with the image tokenizer's own max_pixels, as its encode does."""
    import dataclasses

    from PIL import Image

    tk = corpus["tk"]
    image = small_image_tokenizer()
    image.cfg = dataclasses.replace(image.cfg, max_pixels=1000)
    small = Tokenizers(vocab=tk.vocab, text=tk.text, image=image, audio=tk.audio)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(big)
    with pytest.raises(DataError, match="big.png: 40x40 = 1600 pixels exceeds the limit of 1000 pixels"):
        SequenceEncoder(small).encode([Part("text", "hi"), Part("image", str(big))])
    assert len(SequenceEncoder(tk).encode([Part("image", str(big))]).ids) > 2  # the default limit takes it
