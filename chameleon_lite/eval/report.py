"""The evaluation report: one self-contained HTML page (tables, sample grids, audio players) and a PNG grid of
text→image prompts with the generated pictures."""

from __future__ import annotations

import base64
import html
import io
import os
import textwrap
from typing import Any

import numpy as np
from PIL import Image

from chameleon_lite.files import write_text_atomic
from chameleon_lite.generate.document import _wav_bytes

GRID_FILE = "text_to_image_grid.png"


def _png_b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, np.uint8), mode="RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _wav_b64(wave: np.ndarray, sr: int) -> str:
    return base64.b64encode(_wav_bytes(np.asarray(wave, np.float32), sr)).decode()


def _file_b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def prompt_grid(items: list, path: str, cols: int = 4, limit: int = 16) -> str | None:
    """PNG grid: each cell a generated picture under its prompt, green frame when the checker agrees."""
    import matplotlib  # lazy: 0.3 s to import, and its Agg backend is chosen only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    shown = [it for it in items if it.image is not None][:limit]
    if not shown:
        return None
    rows = (len(shown) + cols - 1) // cols
    titles = ["\n".join(textwrap.wrap(it.prompt, 38)) for it in shown]
    # each row is as tall as its picture plus the longest prompt above it, so no prompt runs into the row above
    row_h = 3.0 + 0.16 * max(t.count("\n") + 1 for t in titles)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, row_h * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, it, title in zip(axes.flat, shown, titles):
        ax.imshow(it.image, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        color = "tab:green" if it.exact else "tab:red"
        for side in ax.spines.values():
            side.set_visible(True)
            side.set_color(color)
            side.set_linewidth(3)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("text → image (green: the checker reads every requested attribute)", fontsize=11)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_report(
    out: str, results: dict[str, Any], items: dict[str, list], sample_rate: int | None, limit: int = 16
) -> str:
    """Write ``out/report.html`` (and the text→image PNG grid); returns the page's path."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>chameleon-lite evaluation</title><style>"
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.ok{color:#080}.bad{color:#b00}"
        ".cell{display:inline-block;vertical-align:top;width:15em;margin:4px;font-size:80%}</style></head><body>",
        f"<h1>Evaluation of <code>{html.escape(results['model'])}</code></h1>",
        "<h2>Cross-modal tasks</h2><table><tr><th>task</th><th>n</th><th>exact</th><th>per attribute</th></tr>",
    ]
    for task, r in results["tasks"].items():
        attrs = ", ".join(f"{k} {_pct(v)}" for k, v in r["attributes"].items())
        if "span_accuracy" in r:
            attrs += f"; media spans correct {r['spans_correct']}/{r['spans']}"
        if "item_accuracy" in r:
            attrs += f"; requested items correct {r['items_correct']}/{r['items']}"
        parts.append(
            f"<tr><td>{task}</td><td>{r['n']}</td><td>{_pct(r['exact'])}</td><td>{html.escape(attrs)}</td></tr>"
        )
    parts.append("</table>")
    if results.get("tokenizers"):
        parts.append("<h2>Tokenizer reconstruction (held-out media)</h2><table>")
        for mod, r in results["tokenizers"].items():
            vals = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
            parts.append(f"<tr><td>{mod}</td><td>{html.escape(vals)}</td></tr>")
        parts.append("</table>")
    if results.get("perplexity"):
        parts.append("<h2>Perplexity on validation shards</h2><table>")
        parts += [f"<tr><td>{m}</td><td>{p:.3f}</td></tr>" for m, p in results["perplexity"].items()]
        parts.append("</table>")
    if "text_to_image" in items:
        grid = prompt_grid(items["text_to_image"], os.path.join(out, GRID_FILE), limit=limit)
        if grid:
            parts.append(
                f"<h2>Text → image</h2><img src='data:image/png;base64,{_file_b64(grid)}' style='max-width:100%'>"
            )
    for task in ("image_to_text", "audio_to_text"):
        if task not in items:
            continue
        parts.append(f"<h2>{task.replace('_to_', ' → ')}</h2>")
        for it in items[task][:limit]:
            cls = "ok" if it.exact else "bad"
            if task == "image_to_text":
                media = f"<img src='data:image/png;base64,{_png_b64(np.asarray(Image.open(it.input_path).convert('RGB')))}' width='96' style='image-rendering:pixelated'>"
            else:
                media = f"<audio controls src='data:audio/wav;base64,{_file_b64(it.input_path)}'></audio>"
            parts.append(
                f"<div class='cell'>{media}<br><span class='{cls}'>{html.escape(it.output_text or '(nothing)')}</span></div>"
            )
    if "text_to_audio" in items and sample_rate:
        parts.append("<h2>Text → audio</h2>")
        for it in items["text_to_audio"][:limit]:
            cls = "ok" if it.exact else "bad"
            player = (
                f"<audio controls src='data:audio/wav;base64,{_wav_b64(it.audio, sample_rate)}'></audio>"
                if it.audio is not None
                else "(no clip)"
            )
            parts.append(f"<div class='cell'><span class='{cls}'>{html.escape(it.prompt)}</span><br>{player}</div>")
    if results.get("overlap"):
        parts.append("<h2>Overlap of the eval with the training corpora</h2><table>")
        for o in results["overlap"]:
            keys = ("reserved_entries", "reserved_signatures", "reserved_combinations", "eval_texts_in_corpus")
            vals = ", ".join(f"{k} {o[k]}" for k in keys) + f", eval seed used {o['eval_seed_used']}"
            verdict = "<span class='ok'>clean</span>" if o["clean"] else "<span class='bad'>not clean</span>"
            parts.append(f"<tr><td>{html.escape(o['manifest'])}</td><td>{verdict}</td><td>{vals}</td></tr>")
        parts.append("</table>")
    if results.get("cfg_sweep"):
        sweep = results["cfg_sweep"]
        parts.append(f"<h2>Guidance scale sweep ({sweep['n']} requests each)</h2><table><tr><th>scale</th>")
        parts.append("<th>text → image</th><th>text → audio</th></tr>")
        parts += [
            f"<tr><td>{r['scale']:g}</td><td>{_pct(r['text_to_image'])}</td><td>{_pct(r['text_to_audio'])}</td></tr>"
            for r in sweep["rows"]
        ]
        parts.append("</table>")
    shown = {"text_to_image", "text_to_audio", "image_to_text", "audio_to_text"}
    for task in [t for t in items if t not in shown]:
        parts.append(f"<h2>{task.replace('_', ' ').capitalize()}</h2>")
        for it in items[task][: limit // 2]:
            cls = "ok" if it.exact else "bad"
            img = f"<img src='data:image/png;base64,{_png_b64(it.image)}' width='96'>" if it.image is not None else ""
            if it.audio is not None and sample_rate:
                img += f"<audio controls src='data:audio/wav;base64,{_wav_b64(it.audio, sample_rate)}'></audio>"
            note = f" ({html.escape(it.note)})" if it.note else ""
            parts.append(
                f"<div class='cell'><b>{html.escape(it.prompt)}</b> <span class='{cls}'>{html.escape(it.output_text)}{note}</span><br>{img}</div>"
            )
    parts.append("</body></html>\n")
    path = os.path.join(out, "report.html")
    write_text_atomic(path, "\n".join(parts))
    return path
