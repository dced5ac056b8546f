"""Publish a checkpoint: keep the weights and the metadata (config, class names), drop optimizer and trainer state.

    python tools/publish_checkpoint.py work_dirs/quickstart/checkpoints/last.pt quickstart.pt
    python tools/publish_checkpoint.py last.pt quickstart.pt --hash-in-name      # writes quickstart-1a2b3c4d.pt
    python tools/publish_checkpoint.py old_last.pt model.pt --config configs/quickstart.yaml   # no metadata in it

EMA weights are published when the checkpoint holds them (an `ema` entry). The file is about half a training
checkpoint (no momentum buffers) and loads with Detector.from_checkpoint, tools/predict.py and tools/eval.py alone.
The SHA-256 of the written file is printed; --hash-in-name also puts its first 8 hex digits in the file name
(mmdetection's publish_model convention), so the name pins the content.

Exit status: 0 done; 1 for an unreadable checkpoint, one without metadata and no --config, or weights that do not
fit their config; 2 for a bad config or command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from detector.cli.args import interruptible, tool_parser
from detector.cli.entry import run_command


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("checkpoint", help="the checkpoint to publish (e.g. a training run's last.pt)")
    parser.add_argument("out", help="the file to write")
    parser.add_argument("--config", help="config to store (required for checkpoints written without metadata)")
    parser.add_argument("--hash-in-name", action="store_true",
                        help="name the file <stem>-<first 8 hex digits of its SHA-256><suffix>")
    return parser.parse_args(argv)


def publish(args: argparse.Namespace) -> None:
    from detector.cli.common import load_tool_config
    from detector.predict.publish import publish_checkpoint

    config = load_tool_config(args.config) if args.config else None
    path, sha, which = publish_checkpoint(args.checkpoint, args.out, config, hash_in_name=args.hash_in_name)
    before, after = os.path.getsize(args.checkpoint), os.path.getsize(path)
    print(f"published {path}: {after / 1e6:.1f} MB (from {before / 1e6:.1f} MB), {which} weights and metadata")
    print(f"sha256: {sha}")


@interruptible
def main(argv=None) -> int:
    return run_command(parse_args, publish, argv, log=False)


if __name__ == "__main__":
    sys.exit(main())
