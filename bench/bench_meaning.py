"""Meaning parser: its accuracy on every kind of text the grammar writes, per split, with and without typos, and
its speed. Also the grammar's size and examples of the same specs in both splits.

    python bench/bench_meaning.py --n 2000      # JSON in bench/results/meaning.json, PNG beside it
    python bench/bench_meaning.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402

from chameleon_lite.data import grammar as G  # noqa: E402
from chameleon_lite.data.meaning import parse, self_check  # noqa: E402


def examples(n: int, seed: int) -> list[dict]:
    """The same n specs requested in the train and the eval split."""
    out = []
    for i in range(n):
        row = {}
        for split in G.SPLITS:
            r = np.random.default_rng([seed, i])
            specs = [G.sample_image(r)] if i % 3 == 0 else [G.sample_audio(r)] if i % 3 == 1 else None
            if specs is None:
                specs = [G.sample_image(r), G.sample_audio(r)]
            row[split] = G.render_request(specs, r, split, typo_rate=0.0).text
        out.append(row)
    return out


def speed(n: int, seed: int) -> float:
    r = np.random.default_rng(seed)
    texts = [G.render_request([G.sample_image(r), G.sample_audio(r)], r, "train").text for _ in range(n)]
    t0 = time.perf_counter()
    for t in texts:
        parse(t)
    return (time.perf_counter() - t0) / n * 1e3


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['split']}/{r['typos']}/{r['kind']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1))
    ax.barh(labels, [100 * r["accuracy"] for r in rows])
    ax.set_xlim(90, 100.5)
    ax.set_xlabel("parse accuracy (%)")
    ax.set_title("meaning parser on the grammar")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="texts of each kind per split and typo setting")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run (n=100)")
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "meaning.json")
    )
    args = ap.parse_args()
    n = 100 if args.quick else args.n
    rows, worst = [], {}
    for split in G.SPLITS:
        for typos, rate in (("clean", 0.0), ("typo", 1.0)):
            report = self_check(n, split, rate, args.seed)
            worst[f"{split}/{typos}"] = report.pop("worst_entry")
            for kind, r in report.items():
                if typos == "typo" and not kind.endswith("_typo") and kind.startswith("request"):
                    continue  # requests with no word long enough to take a typo
                rows.append({"split": split, "typos": typos, "kind": kind, **r})
    print(f"grammar: {G.grammar_size()}")
    print_table(rows, ["split", "typos", "kind", "n", "correct", "accuracy"])
    ms = speed(min(n, 500), args.seed)
    print(f"parse speed: {ms:.3f} ms per two-item request")
    ex = examples(10, args.seed)
    for row in ex:
        print(f"train: {row['train']}\n eval: {row['eval']}")
    path = write_json(
        args.out,
        {"n": n, "grammar": G.grammar_size(), "rows": rows, "worst_entry": worst, "ms_per_parse": ms, "examples": ex},
    )
    plot(rows, path.replace(".json", ".png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
