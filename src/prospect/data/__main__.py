"""Command line: `python -m prospect.data {validate,import,synth,features} ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prospect.data.errors import ClipFormatError
from prospect.data.load import load_clips, read_clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prospect.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="list every problem in annotation files and their frames sources")
    v.add_argument("paths", nargs="+", type=Path)
    v.add_argument("--root", type=Path, help="folder that relative frames paths are under")
    v.add_argument("--no-frames", action="store_true", help="skip opening the frames sources")

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

    args = parser.parse_args(argv)
    return {"validate": _validate, "import": _import, "synth": _synth, "features": _features}[args.command](args)


def _validate(args: argparse.Namespace) -> int:
    total = 0
    for path in args.paths:
        clips, problems = read_clips(path, args.root, check_frames=not args.no_frames)
        for p in problems:
            print(p)
        total += len(problems)
        print(f"{path}: {len(clips)} clip(s) OK, {len(problems)} problem(s)", file=sys.stderr)
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
    from prospect.data.features import write_features
    from prospect.model.backbone import load_backbone

    vlm, _ = load_backbone(args.model, tiny_dir=args.tiny_dir, architecture=args.architecture)
    clips = [c for path in args.clips for c in load_clips(path, args.root)]
    store = write_features(args.out, clips, vlm.to(args.device).eval(), args.tokens_per_frame, args.batch_size)
    print(f"{args.out}: {len(store.rows)} frames of {len(clips)} clip(s), model {store.identity}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClipFormatError as err:  # a bad input file: say what is wrong, not a traceback
        print(err, file=sys.stderr)
        sys.exit(1)
