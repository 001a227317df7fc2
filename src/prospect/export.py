"""Export a training checkpoint for use outside the project (docs/export.md):

    python -m prospect.export CHECKPOINT OUT [--calibration EVAL_RUN/calibration.json] [--merge]

OUT holds the LoRA adapter as peft writes it (or, with --merge, a full SmolVLM with it merged), the heads as
safetensors, the tokenizer and prospect.json; `StreamingGenerator.from_pretrained(OUT)`, eval.py's `ckpt_path`
and `python -m prospect.stream.demo` read it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prospect.model.factory import load_checkpoint
from prospect.model.pretrained import export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prospect.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (.ckpt)")
    parser.add_argument("out", type=Path, help="the directory to write")
    parser.add_argument("--calibration", type=Path,
                        help="eval.py's calibration.json: its thresholds become the model's defaults per setting")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into a full SmolVLM")
    args = parser.parse_args(argv)
    calibration = json.loads(args.calibration.read_text()) if args.calibration else None
    out = export(load_checkpoint(args.checkpoint), args.out, merge=args.merge, calibration=calibration)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {args.checkpoint} to {out}: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
