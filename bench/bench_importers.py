"""The data importers: files per second of each `chameleon-lite data import-*` on the AV-MNIST files.

    python bench/bench_importers.py [--quick] [--data ../shared/data/avmnist] [--out bench/results/importers.json]

Real data when --data holds it (mnist/ IDX files, fsdd/recordings/ WAVs), else generated stand-ins of the same
shapes (28x28 digits, 8 kHz clips of 0.4 s). The captions and WebDataset importers read what the first two
importers read: a captions file over the PNGs the MNIST import wrote and over the FSDD clips, and tar shards of
those PNGs and clips with their captions. Each time is a whole import (media written, every file decoded once,
manifest moved into place), the median of --repeats (no warm-up run: the libraries are imported beforehand, and a
whole import is long enough to time alone).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, print_table, save_bar_chart, write_json  # noqa: E402

from chameleon_lite.data import importers as imp  # noqa: E402
from chameleon_lite.hardware import describe_machine  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "avmnist")
MNIST = ("mnist/t10k-first8000-images-idx3-ubyte.gz", "mnist/t10k-first8000-labels-idx1-ubyte.gz")


def generated_sources(root: str, n_images: int, n_clips: int) -> tuple[str, str, str]:
    """Stand-ins for the AV-MNIST files: IDX images + labels of random 28x28 digits, FSDD-named 8 kHz WAVs."""
    import gzip

    import soundfile as sf

    rng = np.random.default_rng(0)

    def idx(path: str, arr: np.ndarray) -> str:
        head = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
        with gzip.open(path, "wb") as f:
            f.write(head + arr.tobytes())
        return path

    images = idx(os.path.join(root, "images-idx3-ubyte.gz"), rng.integers(0, 256, (n_images, 28, 28), np.uint8))
    labels = idx(os.path.join(root, "labels-idx1-ubyte.gz"), rng.integers(0, 10, n_images).astype(np.uint8))
    clips = os.path.join(root, "recordings")
    os.makedirs(clips)
    for i in range(n_clips):
        pcm = (0.3 * rng.standard_normal(3200)).clip(-1, 1).astype(np.float32)
        sf.write(os.path.join(clips, f"{i % 10}_gen{(i // 10) % 5}_{i // 50}.wav"), pcm, 8000, subtype="PCM_16")
    return images, labels, clips


def captions_file(path: str, rows: list[tuple[str, str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "text"])
        w.writerows(rows)
    return path


def tar_shard(path: str, rows: list[tuple[str, str]]) -> str:
    import webdataset as wds

    with wds.TarWriter(path) as w:
        for i, (file, text) in enumerate(rows):
            with open(file, "rb") as f:
                w.write({"__key__": f"{i:07d}", file.rsplit(".", 1)[-1]: f.read(), "txt": text})
    return path


def manifest_rows(manifest: str) -> list[tuple[str, str]]:
    """(absolute media path, caption) of each document of an import."""
    base = os.path.dirname(manifest)
    out = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            segs = json.loads(line)["segments"]
            media = next(s.get("image") or s.get("audio") for s in segs if "text" not in s)
            out.append((os.path.join(base, media), next(s["text"] for s in segs if "text" in s)))
    return out


def bench(name: str, source: str, out: str, make, repeats: int) -> dict:
    """Median seconds of one whole import; ``make()`` returns a fresh (count, items) each run."""
    summary = {}

    def run():
        total, items = make()
        summary["s"] = imp.write_import(out, items, command=name, params={}, total=total, progress=False)

    seconds = median_time(run, repeats=repeats, warmup=0)
    n = summary["s"].documents
    return {"importer": name, "source": source, "files": n, "median_s": seconds, "files/s": n / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1000 files per importer, 2 repeats")
    ap.add_argument("--data", default=DEFAULT_DATA, help="the avmnist folder (default ../shared/data/avmnist)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per importer (default 3; --quick: 2)")
    ap.add_argument("--out", default="bench/results/importers.json", help="JSON result; the PNG is written beside it")
    args = ap.parse_args()
    repeats = 2 if args.quick else args.repeats
    limit = 1000 if args.quick else None
    import webdataset  # noqa: F401  (its import, about 1.5 s with torch, is no part of an import's time)

    real = all(os.path.exists(os.path.join(args.data, p)) for p in MNIST)
    print(describe_machine())
    with tempfile.TemporaryDirectory() as tmp:
        if real:
            images, labels = (os.path.join(args.data, p) for p in MNIST)
            clips = os.path.join(args.data, "fsdd", "recordings")
            source = "AV-MNIST"
        else:
            images, labels, clips = generated_sources(tmp, limit or 8000, min(limit or 2500, 2500))
            source = "generated"
        o = lambda name: os.path.join(tmp, name)  # noqa: E731
        rows = [
            bench(
                "import-mnist",
                f"{source} IDX",
                o("mnist"),
                lambda: imp.mnist_items(images, labels, limit=limit),
                repeats,
            ),
            bench(
                "import-labelled-audio",
                f"{source} WAV",
                o("audio"),
                lambda: imp.labelled_audio_items(clips, skip_unmatched=True, limit=limit),
                repeats,
            ),
        ]
        pictures = manifest_rows(os.path.join(o("mnist"), "manifest.jsonl"))
        sounds = manifest_rows(os.path.join(o("audio"), "manifest.jsonl"))
        for kind, media in (("PNG", pictures), ("WAV", sounds)):
            caps = captions_file(o(f"captions-{kind}.csv"), media)
            rows.append(
                bench("import-captions", f"{kind} + CSV", o(f"c-{kind}"), lambda: imp.caption_items(caps), repeats)
            )
        for kind, media in (("PNG", pictures), ("WAV", sounds)):
            shard = tar_shard(o(f"shard-{kind}.tar"), media)
            rows.append(
                bench(
                    "import-webdataset",
                    f"{kind} + txt .tar",
                    o(f"w-{kind}"),
                    lambda: imp.webdataset_items([shard]),
                    repeats,
                )
            )
    table = print_table(rows, ["importer", "source", "files", "median_s", "files/s"])
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"CPU ISA: {isa}")
    path = write_json(
        args.out, {"bench": "importers", "machine_line": describe_machine(), "isa": isa, "rows": rows, "table": table}
    )
    png = save_bar_chart(
        os.path.splitext(args.out)[0] + ".png",
        [f"{r['importer'].removeprefix('import-')}\n{r['source']}" for r in rows],
        [r["files/s"] for r in rows],
        "files/s",
        f"importers on {source} ({isa})",
    )
    print("wrote", path, png)


if __name__ == "__main__":
    main()
