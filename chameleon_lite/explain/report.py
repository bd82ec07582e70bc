"""`chameleon-lite explain`: attention maps of a document written as PNGs, ``explain.json`` and ``report.html``, and
the measurement of those maps against the procedural renderer's coverage of each shape."""

from __future__ import annotations

import dataclasses
import html
import os
import time
from typing import Any

import numpy as np
import torch

from chameleon_lite.data.procedural import caption_image, coverage_maps, image_prompt, render_image
from chameleon_lite.data.sequence import Part
from chameleon_lite.data.specs import POSITIONS, SHAPE_KINDS, SIZE_NAMES, sample_image_spec
from chameleon_lite.errors import UserError
from chameleon_lite.explain.maps import (
    MediaSpan,
    Word,
    coverage_share,
    grid_coverage,
    media_spans,
    on_grid,
    per_frame,
    word_map,
    words_of,
)
from chameleon_lite.files import EXPLAIN, building_dir, write_json_result, write_text_atomic
from chameleon_lite.tokenizers.audio_train import log_mel

MAX_WORDS = 8
FUNCTION_WORDS = frozenset("the and then with from into onto for that this its".split())


def attention(gen: Any, ids: list[int], span_ids: list[int]) -> list[torch.Tensor]:
    """Every layer's attention probabilities [Hq, L, L] over the document ``ids`` (one row; computed in fp32 from
    the q and k of the model's own dtype)."""
    model = gen.model
    L = len(ids)
    if L > model.config.max_seq_len:
        raise UserError(f"the document is {L} tokens long; the model's context is {model.config.max_seq_len}")
    t = torch.tensor([ids], dtype=torch.int64)
    _, probs = model.attention_probs(
        t, torch.arange(L).unsqueeze(0), torch.zeros(1, L, dtype=torch.int32), torch.tensor([span_ids]).int()
    )
    return [p[0] for p in probs]


def decode_span(gen: Any, ids: list[int], span: MediaSpan) -> np.ndarray | None:
    """The picture (uint8 [H, W, 3]) or clip (float32 samples) a span's codes decode to; None for a cut-off span."""
    vocab, codes = gen.vocab, torch.tensor(ids[span.start : span.end])
    if span.kind == "image":
        tok = gen.tokenizers.image
        if len(codes) != tok.tokens_per_image:
            return None
        return np.asarray(tok.decode(vocab.unified_to_image(codes).reshape(1, *tok.grid))[0])
    whole = len(codes) - len(codes) % vocab.audio_levels
    if whole == 0:
        return None
    return np.asarray(gen.tokenizers.audio.decode(vocab.unified_to_audio(codes[:whole])), np.float32).reshape(-1)


def _save(fig, path: str) -> None:
    """Write a matplotlib figure as PNG atomically and free it."""
    import matplotlib.pyplot as plt  # lazy: only a report draws

    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def _figure_image(path: str, picture: np.ndarray | None, maps: np.ndarray, title: str) -> None:
    import matplotlib  # lazy: only a report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    panels = [(f"layer {i}", m) for i, m in enumerate(maps)] + [("mean of layers", maps.mean(0))]
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 2.0))
    side = picture.shape[0] if picture is not None else maps.shape[-1]
    axes[0].imshow(picture if picture is not None else np.full((side, side, 3), 255, np.uint8))
    axes[0].set_title("picture", fontsize=7)
    for ax, (name, m) in zip(axes[1:], panels):
        if picture is not None:
            ax.imshow(picture)
        ax.imshow(m / max(float(m.max()), 1e-12), cmap="jet", alpha=0.55, extent=(0, side, side, 0),
                  interpolation="bilinear", vmin=0, vmax=1)  # fmt: skip
        ax.set_title(name, fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    _save(fig, path)


def _figure_audio(path: str, wave: np.ndarray | None, sample_rate: int, frames: np.ndarray, title: str) -> None:
    import matplotlib  # lazy: only a report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    rows = np.concatenate([frames, frames.mean(0, keepdims=True)])
    rows = rows / np.maximum(rows.max(axis=1, keepdims=True), 1e-12)
    fig, (a0, a1) = plt.subplots(2, 1, figsize=(6, 3.6), gridspec_kw={"height_ratios": [2, 1.4]}, sharex=True)
    seconds = len(wave) / sample_rate if wave is not None else float(frames.shape[1])
    if wave is not None:
        a0.imshow(log_mel(wave, sample_rate), aspect="auto", origin="lower", extent=(0, seconds, 0, 80))
    a0.set_ylabel("mel bin", fontsize=7)
    a1.imshow(rows, aspect="auto", cmap="jet", extent=(0, seconds, len(rows) - 0.5, -0.5), interpolation="nearest")
    a1.set_yticks(range(len(rows)), [f"layer {i}" for i in range(len(rows) - 1)] + ["mean"], fontsize=6)
    a1.set_xlabel("seconds", fontsize=7)
    fig.suptitle(title, fontsize=8)
    _save(fig, path)


def explain(gen: Any, ids: list[int], span_ids: list[int], words: list[str] | None, out: str) -> dict[str, Any]:
    """Write the attention maps of the document ``ids`` into the new folder ``out``; returns explain.json's content."""
    t0 = time.perf_counter()
    probs = attention(gen, ids, span_ids)
    spans = media_spans(ids, gen.vocab)
    if not spans:
        raise UserError("the document has no picture or clip to explain attention over")
    chosen = words_of(ids, gen.vocab, gen.tokenizers.text, [w.lower() for w in words] if words else None)
    if words and not chosen:
        raise UserError(f"none of the words {words} occurs in the document's text")
    if not words:  # the first content words: function words' maps say little about where a thing is
        chosen = [w for w in chosen if len(w.text) > 2 and w.text.lower() not in FUNCTION_WORDS][:MAX_WORDS]
    items = []
    with building_dir(out, EXPLAIN) as tmp:
        media = {s: decode_span(gen, ids, s) for s in spans}
        for k, (word, span) in enumerate((w, s) for w in chosen for s in spans):
            if span.start <= word.positions[0] < span.end:
                continue
            m, direction = word_map(probs, word, span)
            name = f"map_{k:02d}_{_safe(word.text)}_{span.kind}{span.index}.png"
            title = f'"{word.text}" {direction} {span.kind} {span.index} (attention, per layer)'
            if span.kind == "image":
                _figure_image(os.path.join(tmp, name), media[span], on_grid(m, gen.tokenizers.image.grid), title)
            else:
                tok = gen.tokenizers.audio
                _figure_audio(
                    os.path.join(tmp, name), media[span], tok.sample_rate, per_frame(m, tok.num_levels), title
                )
            items.append({"word": word.text, "tokens": list(word.positions), "span": f"{span.kind}{span.index}",
                          "direction": direction, "png": name, "per_layer": m.tolist()})  # fmt: skip
        result = {"tokens": len(ids), "layers": len(probs), "heads": int(probs[0].shape[0]), "maps": items,
                  "spans": [dataclasses.asdict(s) for s in spans], "seconds": time.perf_counter() - t0}  # fmt: skip
        text = gen.tokenizers.text.decode(
            [t - gen.vocab.text_offset for t in ids if gen.vocab.text_offset <= t < gen.vocab.image_offset]
        )
        write_text_atomic(os.path.join(tmp, "report.html"), _html(result, text))
        write_json_result(os.path.join(tmp, "explain.json"), result)
    return result


def _safe(word: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in word)[:24]


def _html(result: dict[str, Any], text: str, measured: dict[str, Any] | None = None) -> str:
    rows = "\n".join(
        f"<h3>&ldquo;{html.escape(m['word'])}&rdquo; {m['direction']} {m['span']}</h3>"
        f'<img src="{html.escape(m["png"])}" style="max-width:100%">'
        for m in result["maps"]
    )
    extra = ""
    if measured:
        extra = "<h2>Attention on each shape's cells</h2><pre>" + html.escape(_measure_table(measured)) + "</pre>"
    return (
        "<!doctype html><meta charset='utf-8'><title>attention maps</title>"
        "<body style='font-family:sans-serif;max-width:70em;margin:auto'>"
        f"<h1>Cross-modal attention</h1><p>{result['tokens']} tokens, {result['layers']} layers x "
        f"{result['heads']} heads; mean over heads and over each word's tokens.</p>"
        f"<p><b>Text:</b> {html.escape(text)}</p>{extra}{rows}</body>"
    )


# ---- measured against the renderer's coverage -----------------------------------------------------------------------
def measure(gen: Any, n: int, seed: int, out: str, examples: int = 3) -> dict[str, Any]:
    """For ``n`` procedural pictures of 1-3 shapes (seed ``seed``), both directions, teacher-forced: a picture then
    its caption (the caption's shape words read the picture) and a request then its picture (the picture's cells
    read the request's shape words). Per layer and averaged: the share of each shape word's map on the cells that
    shape covers, against the uniform map's share. Writes measure.json, a chart and ``examples`` map PNGs."""
    t0 = time.perf_counter()
    tok = gen.tokenizers.image
    if tok is None:
        raise UserError("the model has no image tokenizer: nothing to measure attention on")
    size, grid = tok.image_size, tok.grid
    maps = coverage_maps(size, size)
    rng = np.random.default_rng(seed)
    per = {"reads": [], "read by": []}
    shown = 0
    with building_dir(out, EXPLAIN) as tmp:
        for _ in range(n):
            spec = sample_image_spec(rng, max_shapes=3)
            picture = render_image(spec, size)
            for parts in (
                [Part("image", picture, bidirectional=True), Part("text", " " + caption_image(spec))],
                [Part("text", image_prompt(spec)), Part("image", picture)],
            ):
                enc = gen.encoder.encode(parts, bos=True, eos=False)
                ids, span_ids = enc.ids.tolist(), enc.span_ids().tolist()
                probs = attention(gen, ids, span_ids)
                (span,) = media_spans(ids, gen.vocab)
                kinds = [s.kind for s in spec.shapes]
                for word in words_of(ids, gen.vocab, gen.tokenizers.text, list(SHAPE_KINDS)):
                    if kinds.count(word.text.lower()) != 1:
                        continue  # a kind drawn twice has no one shape to measure against
                    shape = spec.shapes[kinds.index(word.text.lower())]
                    cov = grid_coverage(
                        maps[SHAPE_KINDS.index(shape.kind), SIZE_NAMES.index(shape.size),
                             POSITIONS.index(shape.position)], grid,
                    )  # fmt: skip
                    m, direction = word_map(probs, word, span)
                    layers = on_grid(m, grid)
                    shares = [coverage_share(x, cov) for x in list(layers) + [layers.mean(0)]]
                    per[direction].append(shares)
                    if shown < examples and len(spec.shapes) > 1:
                        name = f"measure_{shown}_{_safe(word.text)}_{direction.replace(' ', '_')}.png"
                        _figure_image(os.path.join(tmp, name), picture, layers,
                                      f'"{word.text}" {direction} the picture')  # fmt: skip
                        shown += 1
        result = {"pictures": n, "seed": seed, "grid": list(grid), "seconds": 0.0, "directions": {}}
        for direction, rows in per.items():
            if not rows:
                continue
            a = np.asarray(rows)  # [words, layers + 1, 2]
            result["directions"][direction] = {
                "words": len(rows),
                "share": a[:, :, 0].mean(0).tolist(),
                "uniform": a[:, :, 1].mean(0).tolist(),
                "ratio": (a[:, :, 0].mean(0) / np.maximum(a[:, :, 1].mean(0), 1e-12)).tolist(),
            }
        result["seconds"] = time.perf_counter() - t0
        _chart(os.path.join(tmp, "measure.png"), result)
        write_json_result(os.path.join(tmp, "explain.json"), result)
        write_text_atomic(os.path.join(tmp, "report.html"), _measure_html(result, tmp))
    return result


def _measure_table(result: dict[str, Any]) -> str:
    lines = []
    for direction, d in result["directions"].items():
        n = len(d["share"])
        lines.append(f"words {direction} the picture ({d['words']} shape words):")
        for i in range(n):
            name = "mean of layers" if i == n - 1 else f"layer {i}"
            lines.append(f"  {name:15s} share on the shape {d['share'][i]:.3f}  uniform {d['uniform'][i]:.3f}  "
                         f"ratio {d['ratio'][i]:.2f}")  # fmt: skip
    return "\n".join(lines)


def _measure_html(result: dict[str, Any], folder: str) -> str:
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    imgs = "".join(f'<img src="{html.escape(p)}" style="max-width:100%"><br>' for p in pngs)
    return (
        "<!doctype html><meta charset='utf-8'><title>attention on shapes</title>"
        "<body style='font-family:sans-serif;max-width:70em;margin:auto'><h1>Attention on each shape's cells</h1>"
        f"<p>{result['pictures']} procedural pictures (seed {result['seed']}), token grid {result['grid']}.</p>"
        f"<pre>{html.escape(_measure_table(result))}</pre>{imgs}</body>"
    )


def _chart(path: str, result: dict[str, Any]) -> None:
    import matplotlib  # lazy: only a report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, ax = plt.subplots(figsize=(6, 3))
    for direction, d in result["directions"].items():
        n = len(d["ratio"]) - 1
        ax.plot(range(n), d["ratio"][:n], marker="o", label=f"words {direction} the picture")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="uniform attention")
    ax.set_xlabel("layer")
    ax.set_ylabel("share on the shape / uniform share")
    ax.legend(fontsize=7)
    _save(fig, path)


__all__ = ["Word", "explain", "measure"]
