"""Command line: `python -m prospect.data {validate,import,synth,features,render} ...`. An entry point, so a job
in the import order (data -> model -> stream -> eval -> jobs): `features` and `render` load a model's vision
path or tokenizer, lazily."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from prospect.data.decode_check import FrameDecodeCheck
from prospect.data.errors import ClipFormatError
from prospect.data.load import load_clips, read_clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prospect.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="list every problem in annotation files and their frames sources")
    v.add_argument("paths", nargs="+", type=Path)
    v.add_argument("--root", type=Path, help="folder that relative frames paths are under")
    frames = v.add_mutually_exclusive_group()
    frames.add_argument("--no-frames", action="store_true", help="skip opening the frames sources")
    frames.add_argument("--decode", action="store_true",
                        help="also decode every frame the clips use and list each that does not (reads them all)")

    i = sub.add_parser("import", help="convert ProAssist / DST / our clips into our JSONL format")
    i.add_argument("input", type=Path)
    i.add_argument("output", type=Path)
    i.add_argument("--root", type=Path, help="folder that relative frames paths of the input are under")

    s = sub.add_parser("synth", help="write synthetic task videos (frames Arrow files + clips JSONL)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--videos", type=int, required=True, help="number of training videos")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-videos", type=int)
    s.add_argument("--test-videos", type=int)
    s.add_argument("--image-size", type=int, default=64)

    f = sub.add_parser("features", help="encode every frame of the clips once into a feature store (frozen "
                                         "vision encoder + connector + pooling)")
    f.add_argument("clips", nargs="+", type=Path, help="clip files whose frames to encode")
    f.add_argument("--out", type=Path, required=True, help="the store's folder")
    f.add_argument("--model", default="tiny", help="hub id, local directory or tiny (as model.backbone.source)")
    f.add_argument("--tiny-dir", default="models/tiny")
    f.add_argument("--architecture", help="random weights in a real architecture (benchmarks)")
    f.add_argument("--tokens-per-frame", type=int, required=True)
    f.add_argument("--root", type=Path, help="folder that relative frames paths are under")
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--device", default="cpu")

    r = sub.add_parser("render", help="print what the model sees for a clip: rendered text, learned spans, each "
                                      "frame's head labels, the splits")
    r.add_argument("path", type=Path, help="clip file (any supported format)")
    r.add_argument("--clip", help="clip id (default: the first clip)")
    r.add_argument("--model", default="tiny", help="hub id, local directory or tiny: whose tokenizer renders")
    r.add_argument("--tiny-dir", default="models/tiny", help="the tiny model (built from the file's texts if absent)")
    r.add_argument("--tokens-per-frame", type=int, default=16)
    r.add_argument("--max-seq-len", type=int, help="split as training does (default: one sequence)")
    r.add_argument("--root", type=Path, help="folder that relative frames paths are under")

    args = parser.parse_args(argv)
    return {"validate": _validate, "import": _import, "synth": _synth, "features": _features,
            "render": _render}[args.command](args)


def _validate(args: argparse.Namespace) -> int:
    total = 0
    # one bar over all files (a frame that clips of several files share is decoded once); tqdm.write keeps the
    # lines printed meanwhile clear of it
    with tqdm(desc="decoding frames", unit="frame", disable=not args.decode) as bar:
        decode = FrameDecodeCheck(bar) if args.decode else None
        for path in args.paths:
            clips, problems = read_clips(path, args.root, check_frames=not args.no_frames, extra_check=decode)
            for p in problems:
                tqdm.write(str(p))
            errors = sum(not p.warning for p in problems)  # warnings: read as upstream reads them
            total += errors
            tqdm.write(f"{path}: {len(clips)} clip(s) OK, {errors} problem(s), {len(problems) - errors} warning(s)",
                       file=sys.stderr)
    return 1 if total else 0


def _import(args: argparse.Namespace) -> int:
    clips = load_clips(args.input, args.root)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as f:
        for clip in clips:
            f.write(json.dumps(clip.to_dict(root=args.output.parent)) + "\n")
    print(f"wrote {len(clips)} clip(s) to {args.output}", file=sys.stderr)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from prospect.data.synthetic import synthesize

    splits = synthesize(args.out, args.videos, args.seed, val_videos=args.val_videos,
                        test_videos=args.test_videos, image_size=args.image_size)
    for name, clips in splits.items():
        print(f"{args.out / (name + '.jsonl')}: {len(clips)} clip(s)", file=sys.stderr)
    return 0


def _features(args: argparse.Namespace) -> int:
    from prospect.model.backbone import load_backbone
    from prospect.model.features import write_features

    vlm, _ = load_backbone(args.model, tiny_dir=args.tiny_dir, architecture=args.architecture)
    clips = [c for path in args.clips for c in load_clips(path, args.root)]
    store = write_features(args.out, clips, vlm.to(args.device).eval(), args.tokens_per_frame, args.batch_size)
    print(f"{args.out}: {len(store.rows)} frames of {len(clips)} clip(s), model {store.identity}", file=sys.stderr)
    return 0


def _render(args: argparse.Namespace) -> int:
    from prospect.data.render import describe
    from prospect.data.sequence import PROMPT_WORDS, SequenceBuilder
    from prospect.model.backbone import load_backbone

    clips = load_clips(args.path, args.root)
    clip = next((c for c in clips if c.id == args.clip), None) if args.clip else clips[0]
    if clip is None:
        print(f"{args.path}: no clip {args.clip!r} (ids: {', '.join(c.id for c in clips[:5])}, ...)", file=sys.stderr)
        return 1
    corpus = [e.text for c in clips for e in c.events] + PROMPT_WORDS  # for a tiny tokenizer built from scratch
    _, tokenizer = load_backbone(args.model, tiny_dir=args.tiny_dir, tiny_corpus=corpus)
    builder = SequenceBuilder(tokenizer, args.tokens_per_frame, max_seq_len=args.max_seq_len)
    sequences = builder.build(clip)
    for k, seq in enumerate(sequences, start=1):
        print(f"== {clip.id}: sequence {k}/{len(sequences)}, frames {seq.frames[0]}..{seq.frames[-1]}, "
              f"{len(seq)} tokens ==")
        print(describe(builder, seq))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClipFormatError as err:  # a bad input file: say what is wrong, not a traceback
        print(err, file=sys.stderr)
        sys.exit(1)

