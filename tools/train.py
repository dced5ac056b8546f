"""Train a detector from a YAML config.

    python tools/train.py configs/quickstart.yaml
    python tools/train.py CONFIG --work-dir work_dirs/run1 --opts schedule.max_iters=100 data.batch_size=4
    torchrun --nproc_per_node 8 tools/train.py CONFIG          # one process per GPU

The work dir (default work_dirs/<config stem>/) receives config.yaml (the resolved config),
checkpoints/last.pt, TensorBoard event files (tb/) and metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from detector.config import ConfigError, load_config
from detector.engine.distributed import get_rank, init_distributed
from detector.engine.logging_setup import setup_logging
from detector.engine.trainer import train
from detector.evaluation import format_metrics_table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config stem>)")
    parser.add_argument("--resume", action="store_true", help="continue from <work dir>/checkpoints/last.pt")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, YAML-typed (e.g. schedule.max_iters=100 data.min_size=[512])")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    init_distributed()
    setup_logging(get_rank())
    try:
        cfg = load_config(args.config, args.opts)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    work_dir = Path(args.work_dir or os.path.join("work_dirs", Path(args.config).stem))
    metrics = train(cfg, work_dir, resume=args.resume, progress=not args.no_progress)
    if get_rank() == 0 and metrics:
        print(format_metrics_table(metrics))
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
