"""Converted Chameleon weights: this engine against transformers on the same weights, and the conversion's memory.

    python bench/bench_convert.py [--quick] [--threads 2] [--shapes tiny 7b-shallow] [--prompt-len 64]
                                  [--new-tokens 64] [--memory-layers 32] [--no-memory] [--workdir DIR]
                                  [--out bench/results/convert.json]

**Speed.** For each shape a transformers ``ChameleonForConditionalGeneration`` with random weights is saved with
``save_pretrained``, converted with ``chameleon-lite convert from-hf``, and both run batch 1, greedy, text only, the
same prompt (random text ids) and the same number of new tokens, the same thread count, in one process. Time to first
token = a call that makes 1 token; decode rate = (N - 1) / (T(N) - T(1)); medians of repeated whole calls.
The baseline runs in fp32 and, on CPUs with native bf16, in bf16 (the ratio is against the faster); the engine runs
with its defaults (``dtype``/``weights`` "auto"). Shapes: ``tiny`` (hidden 256, 4 layers, vocab 16384) and
``7b-shallow`` (Chameleon-7B's widths: hidden 4096, 32 heads of 128, SwiGLU 11008, vocab 65536; 2 layers).
A column says whether the engine in fp32 gives the same 32 greedy tokens as transformers in fp32.

**Memory.** A checkpoint of Chameleon-7B's shapes (``--memory-layers`` layers, 32 = the whole 7B), bf16, in shards
of at most 5 GB with an index, as transformers writes large checkpoints, is converted in a child process; its peak
resident memory (``VmHWM``) is compared with the largest shard, and with a child that only imports the
converter (the interpreter + torch floor). The tensors hold a cheap repeating pattern, not random numbers: the
conversion's memory does not depend on the values. Files are written under ``--workdir`` and removed afterwards.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, print_table, save_bar_chart, write_json  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=704, vocab=16384),
    "7b-shallow": dict(
        hidden_size=4096, num_hidden_layers=2, num_attention_heads=32, intermediate_size=11008, vocab=65536
    ),
}
IMAGE_CODES = 8192
TINY_VQ = {
    "embed_dim": 8, "num_embeddings": IMAGE_CODES, "latent_channels": 32, "resolution": 16, "base_channels": 32,
    "channel_multiplier": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
}  # fmt: skip


def vocabulary(size: int) -> tuple[dict, dict]:
    """Chameleon's layout: specials, 8192 image codes at 4.., the image markers, then byte-level BPE-like names;
    (vocabulary map, tokenizer.json) — a tokenizer over single bytes plus made-up merges' names is enough to load."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from chameleon_lite.convert.hf_chameleon import image_name_of

    vmap = {"<pad>": 0, "<s>": 1, "</s>": 2, "<reserved0003>": 3}
    vmap |= {image_name_of(k): 4 + k for k in range(IMAGE_CODES)}
    vmap |= {"<eoss>": 8196, "<racm3:break>": 8197}
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    text = sorted(alphabet) + [f"tok{i}" for i in range(size - len(vmap) - len(alphabet))]
    vmap |= {t: len(vmap) + i for i, t in enumerate(text)}
    tk = Tokenizer(models.BPE(vocab={t: i for t, i in vmap.items() if i >= 8198}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return vmap, json.loads(tk.to_str())


def build_hf(shape: str, folder: str):
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    s = dict(SHAPES[shape])
    vmap, tok = vocabulary(s.pop("vocab"))
    cfg = ChameleonConfig(
        vocab_size=len(vmap), num_key_value_heads=s["num_attention_heads"], max_position_embeddings=4096,
        vocabulary_map=vmap, pad_token_id=0, bos_token_id=1, eos_token_id=2, vq_config=TINY_VQ, **s,
    )  # fmt: skip
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(cfg).eval()
    model.save_pretrained(folder)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    return model, vmap


def speed(shape: str, args, workdir: str) -> list[dict]:
    from chameleon_lite.convert.hf_chameleon import convert_from_hf, invert_map, read_vocab_map
    from chameleon_lite.generate import GenerationConfig, Generator, Prompt, SamplingSettings
    from chameleon_lite.hardware import cpu_has_fast_bf16

    hf_dir, ours_dir = os.path.join(workdir, f"{shape}_hf"), os.path.join(workdir, f"{shape}_ours")
    hf, vmap = build_hf(shape, hf_dir)
    t0 = time.perf_counter()
    convert_from_hf(hf_dir, ours_dir)
    t_convert = time.perf_counter() - t0
    u2h = read_vocab_map(ours_dir)
    h2u = invert_map(u2h, len(vmap))
    rng = np.random.default_rng(0)
    prompt = [1, *rng.integers(8198, len(vmap), args.prompt_len - 1).tolist()]
    ids = torch.tensor([prompt])
    suppress = [0, 1, 8196, 8197]  # what the engine's text mode never writes (pad, bos, the image markers)
    gen = Generator.from_dir(ours_dir)
    n_new, repeats = args.new_tokens, 2 if args.quick else 5
    greedy = SamplingSettings(temperature=0.0)

    def ours(n: int, dtype: str = "auto", weights: str = "auto") -> list[int]:
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, text=greedy, allow_image=False, dtype=dtype,
                               weights=weights)  # fmt: skip
        return gen.generate(Prompt(ids=h2u[ids[0]].tolist()), cfg)[0].ids

    def theirs(model, n: int) -> list[int]:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, suppress_tokens=suppress, pad_token_id=0)  # fmt: skip
        return out[0, ids.shape[1] :].tolist()

    check = 16 if args.quick else 32
    same = u2h[torch.tensor(ours(check, "fp32", "fp32"))].tolist() == theirs(hf, check)
    rows = []
    baselines = [("transformers fp32", hf)]
    if cpu_has_fast_bf16():
        baselines.append(("transformers bf16", copy.deepcopy(hf).to(torch.bfloat16)))
    for label, model in baselines:
        rows.append({"shape": shape, "impl": label, **_time(lambda n, m=model: theirs(m, n), n_new, repeats)})
    rows.append({"shape": shape, "impl": "chameleon-lite (auto)", **_time(ours, n_new, repeats)})
    best = max(r["decode_tok_s"] for r in rows[:-1])
    first = min(r["ttft_ms"] for r in rows[:-1])
    for r in rows:
        r["decode_x_best_hf"] = r["decode_tok_s"] / best
        r["ttft_x_best_hf"] = first / r["ttft_ms"]
        r["greedy_fp32_equal"] = same
        r["convert_s"] = t_convert
    shutil.rmtree(hf_dir, ignore_errors=True)
    shutil.rmtree(ours_dir, ignore_errors=True)
    return rows


def _time(call, n_new: int, repeats: int) -> dict:
    t1 = median_time(lambda: call(1), repeats=repeats, warmup=1)
    tn = median_time(lambda: call(n_new), repeats=repeats, warmup=1)
    return {"ttft_ms": 1e3 * t1, "decode_tok_s": (n_new - 1) / max(tn - t1, 1e-9)}


def write_7b_checkpoint(folder: str, layers: int, shard_bytes: int = 5 * 10**9) -> int:
    """A transformers-layout Chameleon-7B-shaped checkpoint (bf16, sharded, with its index); returns the largest
    shard's size. Written tensor by tensor: this process never holds more than one."""
    from chameleon_lite.convert.stream import SafetensorsWriter

    vmap, tok = vocabulary(65536)
    d, f, v = 4096, 11008, len(vmap)
    specs = [("model.embed_tokens.weight", (v, d))]
    for i in range(layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        specs += [(a + n, (d, d)) for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")]
        specs += [(a + n, (32, 128)) for n in ("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")]
        specs += [(m + "gate_proj.weight", (f, d)), (m + "up_proj.weight", (f, d)), (m + "down_proj.weight", (d, f))]
        specs += [(f"model.layers.{i}.{n}.weight", (d,)) for n in ("input_layernorm", "post_attention_layernorm")]
    specs += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE, ChameleonVQVAEConfig

    vq = {f"model.vqmodel.{k}": t.to(torch.bfloat16) for k, t in ChameleonVQVAE(ChameleonVQVAEConfig(**TINY_VQ))
          .state_dict().items()}  # fmt: skip
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        n = int(np.prod(shape)) * 2
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    pattern = (torch.arange(1 << 20, dtype=torch.float32) % 97 / 97 - 0.5).to(torch.bfloat16)
    for i, (fname, shard) in enumerate(zip(names, shards)):
        extra = list(vq.items()) if i == len(shards) - 1 else []
        w = SafetensorsWriter(
            os.path.join(folder, fname),
            [(k, torch.bfloat16, s) for k, s in shard] + [(k, t.dtype, tuple(t.shape)) for k, t in extra],
        )
        for name, shape in shard:
            n = int(np.prod(shape))
            w.write(name, pattern.repeat((n + pattern.numel() - 1) // pattern.numel())[:n].reshape(shape))
            weight_map[name] = fname
        for name, t in extra:
            w.write(name, t)
            weight_map[name] = fname
        w.close()
    total = sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
    from transformers import ChameleonConfig

    cfg = ChameleonConfig(vocab_size=v, num_hidden_layers=layers, vocabulary_map=vmap, vq_config=TINY_VQ,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    cfg.save_pretrained(folder)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as fh:
        json.dump(tok, fh, ensure_ascii=False)
    return max(os.path.getsize(os.path.join(folder, n)) for n in names)


def peak_rss_of(code: str) -> int:
    """Peak resident bytes of a child Python running ``code``: its VmHWM, which belongs to the child's own address
    space (ru_maxrss would carry the parent's high-water mark over fork and exec)."""
    script = f"{code}\nprint(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) * 1024


def memory(args, workdir: str) -> dict:
    src, dst = os.path.join(workdir, "7b_hf"), os.path.join(workdir, "7b_ours")
    os.makedirs(src, exist_ok=True)
    t0 = time.perf_counter()
    largest = write_7b_checkpoint(src, args.memory_layers)
    t_write = time.perf_counter() - t0
    floor = peak_rss_of("import chameleon_lite.convert.hf_chameleon")
    t0 = time.perf_counter()
    code = f"from chameleon_lite.convert.hf_chameleon import convert_from_hf\nconvert_from_hf({src!r}, {dst!r})"
    peak = peak_rss_of(code)
    t_convert = time.perf_counter() - t0
    out_bytes = os.path.getsize(os.path.join(dst, "model.safetensors"))
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    return {
        "layers": args.memory_layers,
        "largest_shard_gib": largest / 2**30,
        "peak_rss_gib": peak / 2**30,
        "import_floor_gib": floor / 2**30,
        "peak_over_largest_shard": peak / largest,
        "converted_gib": out_bytes / 2**30,
        "convert_s": t_convert,
        "write_source_s": t_write,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shape, fewer tokens and repeats, 2-layer memory run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--memory-layers", type=int, default=32, help="layers of the 7B-shaped memory run (32: all)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--workdir", default=None, help="where the checkpoints are written (default: a temp folder)")
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "convert.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.shapes, args.new_tokens, args.memory_layers = ["tiny"], 16, 2
    workdir = tempfile.mkdtemp(prefix="bench_convert.", dir=args.workdir)
    try:
        rows = [] if args.no_speed else [r for shape in args.shapes for r in speed(shape, args, workdir)]
        print(f"\ngeneration, batch 1, greedy, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
              f"{args.threads} threads, ISA {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
        print_table(rows, ["shape", "impl", "ttft_ms", "decode_tok_s", "decode_x_best_hf", "ttft_x_best_hf",
                           "greedy_fp32_equal", "convert_s"])  # fmt: skip
        mem = None if args.no_memory else memory(args, workdir)
        if mem:
            print(f"\nconversion of a Chameleon-7B-shaped checkpoint ({mem['layers']} layers, bf16)")
            print_table([mem], list(mem))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_json(args.out, {"generation": rows, "memory": mem, "args": vars(args)})
    if rows:
        labels = [f"{r['shape']}\n{r['impl']}" for r in rows]
        save_bar_chart(args.out.replace(".json", ".png"), labels, [r["decode_tok_s"] for r in rows],
                       "decode tokens/s", "converted Chameleon weights: decode, batch 1", horizontal=True)  # fmt: skip
    if mem:
        save_bar_chart(
            args.out.replace(".json", "_memory.png"),
            ["largest shard", "conversion peak", "import floor"],
            [mem["largest_shard_gib"], mem["peak_rss_gib"], mem["import_floor_gib"]],
            "GiB",
            f"converting a Chameleon-7B-shaped checkpoint ({mem['layers']} layers, bf16)",
        )
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
