"""CLI commands of the audio codec (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse
import json

from chameleon_lite import argtypes as at
from chameleon_lite.errors import UserError


def _eval_audio(args: argparse.Namespace) -> int:
    from chameleon_lite.files import check_json_output, check_png_output, write_json_result
    from chameleon_lite.tokenizers.audio_train import evaluate

    if args.json:
        check_json_output(args.json)
    if args.spectrogram:
        check_png_output(args.spectrogram, "--spectrogram")
    res = evaluate(args.tokenizer, args.manifest, n=args.n, levels_low=args.levels, spectrogram_path=args.spectrogram)
    print(json.dumps(res, indent=2))
    if args.json:
        write_json_result(args.json, res)
    return 0


def _recon(args: argparse.Namespace) -> int:
    import os

    from chameleon_lite.files import check_wav_output
    from chameleon_lite.tokenizers.audio import AudioTokenizer
    from chameleon_lite.tokenizers.audio_train import write_wav

    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"{args.out}: exists and is not a folder; give --out a folder")
    outs = [os.path.join(args.out, os.path.splitext(os.path.basename(p))[0] + ".recon.wav") for p in args.audio]
    for i, out in enumerate(outs):
        if out in outs[:i]:
            raise UserError(
                f"{args.audio[i]}: its reconstruction {out} would replace an earlier input's; give "
                f"files with different names"
            )
        check_wav_output(out)  # every output checked before any work
    tok = AudioTokenizer.load(args.tokenizer)
    os.makedirs(args.out, exist_ok=True)
    for path, out in zip(args.audio, outs):
        wave = tok.reconstruct(path, levels=args.levels)
        write_wav(out, wave, tok.sample_rate)
        print(
            f"{tok.last_info.describe()} -> {out} "
            f"({tok.frames_for(len(wave))} frames x {args.levels or tok.num_levels} levels)"
        )
    return 0


def _encode(args: argparse.Namespace) -> int:
    from chameleon_lite.tokenizers.audio import AudioTokenizer

    tok = AudioTokenizer.load(args.tokenizer)
    for path in args.audio:
        codes = tok.encode(path)
        print(f"{path} ({tok.last_info.describe().split(': ', 1)[1]}; {codes.shape[1]} frames)")
        for lv, row in enumerate(codes.tolist()):
            print(f"  level {lv}: {' '.join(map(str, row))}")
    return 0


def register(cli) -> None:
    p = cli.command("tokenizer eval-audio", "SI-SNR, mel distance and checker agreement of an audio codec", _eval_audio)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder holding audio_codec.json and its weights")
    p.add_argument("--manifest", required=True, help="held-out JSONL manifest")
    p.add_argument("--n", type=at.int_range(1, 1000000), default=500, help="number of clips (default 500)")
    p.add_argument(
        "--levels",
        type=at.nonnegative_int,
        default=2,
        help="also measure decoding from only this many levels (default 2)",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--spectrogram", help="write a PNG of original vs reconstructed spectrograms here")

    p = cli.command("tokenizer audio-recon", "encode and decode clips, write the reconstructions as WAV", _recon)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder holding audio_codec.json and its weights")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the WAV files (created; a folder of other files is refused)",
    )
    p.add_argument("--levels", type=at.nonnegative_int, default=0, help="decode from only the first N levels (0 = all)")
    p.add_argument("audio", nargs="+", help="audio files (WAV, FLAC, OGG, ...)")

    p = cli.command("tokenizer encode-audio", "print the codes of clips, one line per level", _encode)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder holding audio_codec.json and its weights")
    p.add_argument("audio", nargs="+", help="audio files (WAV, FLAC, OGG, ...)")
