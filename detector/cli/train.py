"""Train a detector from a YAML config.

    python tools/train.py configs/quickstart.yaml
    python tools/train.py CONFIG --work-dir work_dirs/run1 --opts schedule.max_iters=100 data.batch_size=4
    torchrun --nproc_per_node 8 tools/train.py CONFIG          # one process per GPU
    python tools/train.py CONFIG --resume                      # continue from <work dir>/checkpoints/last.pt
    python tools/train.py CONFIG --resume path/to/iter_0005000.pt

The work dir (default work_dirs/<config stem>/) receives config.yaml (the resolved config),
checkpoints/last.pt, TensorBoard event files (tb/) and metrics.jsonl. With runtime.auto_resume=true a run
resumes from the work dir's last.pt by itself when one exists (for re-queued jobs).

Exit codes: 0 done; 0 also after SIGTERM (pre-emption: the step in flight finishes, last.pt is written; run
again with --resume); 130 after SIGINT (Ctrl-C, same checkpoint; press it twice to abort at once);
1 when training diverged (too many non-finite steps in a row; last.pt keeps the last good state) or a
checkpoint could not be read; 2 for config errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from detector.cli.args import add_config_argument, add_opts_argument, tool_parser

# The training stack (torch, the engine, the evaluators) is imported once the command line is parsed, so that
# `--help` and argument errors answer at once.


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser)
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config stem>)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="continue from <work dir>/checkpoints/last.pt, or from CHECKPOINT when given")
    add_opts_argument(parser, "config overrides, YAML-typed (e.g. schedule.max_iters=100 data.min_size=[512])")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from detector.cli.common import load_tool_config
    from detector.engine.trainer import TrainingInterrupted, train
    from detector.evaluation import format_metrics_table
    from detector.runtime.distributed import get_rank

    cfg = load_tool_config(args.config, args.opts)
    work_dir = Path(args.work_dir or os.path.join("work_dirs", Path(args.config).stem))
    try:
        metrics = train(cfg, work_dir, resume=args.resume, progress=not args.no_progress)
    except TrainingInterrupted as stop:
        if get_rank() == 0:
            print(f"{stop}; continue with --resume", file=sys.stderr)
        return 130 if stop.signum == signal.SIGINT else 0
    if get_rank() == 0 and metrics:
        print(format_metrics_table(metrics))
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from detector.cli.common import BAD_INPUT_ERRORS, run_tool, start_logging
    from detector.engine.trainer import NonFiniteLossError
    from detector.runtime.distributed import destroy_distributed, get_rank, init_distributed

    init_distributed()
    start_logging(get_rank())
    try:
        # A diverged run or bad input (checkpoint, annotation file, image, a config that does not fit the data):
        # one `error:` line naming the file and the entry.
        return run_tool(lambda: run(args), bad_input=BAD_INPUT_ERRORS + (NonFiniteLossError,), rank=get_rank())
    finally:
        destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
