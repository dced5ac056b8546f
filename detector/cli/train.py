"""Train a detector from a YAML config.

    python tools/train.py configs/quickstart.yaml
    python tools/train.py CONFIG --work-dir work_dirs/run1 --opts schedule.max_iters=100 data.batch_size=4
    torchrun --nproc_per_node 8 tools/train.py CONFIG          # one process per GPU
    python tools/train.py CONFIG --resume                      # continue from <work dir>/checkpoints/last.pt
    python tools/train.py CONFIG --resume path/to/iter_0005000.pt
    python tools/train.py CONFIG --overwrite                   # a new run in place of the work dir's old one

The work dir (default work_dirs/<config stem>/) receives config.yaml (the resolved config),
checkpoints/last.pt, TensorBoard event files (tb/), metrics.jsonl and train.log (every log line of the run);
with runtime.trackers listing wandb or mlflow also wandb/ (offline runs) or mlruns/ (MLflow's file store).
One run at a time trains in a work dir (a lock, .lock); a new run in a work dir that holds checkpoints stops
unless --resume continues it or --overwrite removes its checkpoints/, metrics.jsonl, train.log, tb/,
eval_shards/ and config.yaml first (other files stay). With runtime.auto_resume=true a run resumes from the
work dir's last.pt by itself when one exists (for re-queued jobs).

Exit codes:
  0    done; also after SIGTERM or SIGHUP (pre-emption, scancel, a closed terminal): the step in flight finishes,
       last.pt is written, run again with --resume. A signal during an evaluation abandons it (last.pt is
       written before every evaluation; after the final one's, --resume runs the final evaluation).
  130  after SIGINT (Ctrl-C): the same checkpoint; a second Ctrl-C abandons the step in flight, and last.pt holds
       the last finished step.
  1    an error, as one `error:` line: bad input (data, image, checkpoint), a work dir that is not writable,
       in use by another run or holding another run, a full disk at a save (the previous last.pt is intact),
       a diverged run (too many non-finite steps; last.pt keeps the last good state), a loader worker that
       died, or another torchrun process's failure (that process prints the error). Errors after the first
       step write last.pt of the last finished step first.
  2    a config error or a bad command line.
Under torchrun these are each rank's codes. After a signal torchrun itself exits 1 once its ranks have stopped,
with a traceback of its own frames (SignalException: its report of the signal; last.pt is written all the same).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from detector.cli.args import add_config_argument, add_opts_argument, interruptible, tool_parser

# The training stack (torch, the engine, the evaluators) is imported once the command line is parsed, so that
# `--help` and argument errors answer at once.


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser)
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config stem>)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                       help="continue from <work dir>/checkpoints/last.pt, or from CHECKPOINT when given")
    start.add_argument("--overwrite", action="store_true",
                       help="start afresh in a work dir that holds a run: remove its checkpoints/, metrics.jsonl, "
                            "train.log, tb/, eval_shards/ and config.yaml first")
    add_opts_argument(parser, "config overrides, YAML-typed (e.g. schedule.max_iters=100 data.min_size=[512])")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are only drawn when stderr is a terminal anyway)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from detector.cli.common import EXIT_INTERRUPTED, load_tool_config
    from detector.engine.trainer import TrainingInterrupted, train
    from detector.evaluation import format_metrics_table
    from detector.runtime.distributed import get_rank

    cfg = load_tool_config(args.config, args.opts)
    work_dir = Path(args.work_dir or os.path.join("work_dirs", Path(args.config).stem))
    try:
        metrics = train(cfg, work_dir, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    except TrainingInterrupted as stop:
        if get_rank() == 0:
            print(f"{stop}; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 0
    if get_rank() == 0 and metrics:
        print("final evaluation (AP in percent; metrics.jsonl keeps fractions):")
        print(format_metrics_table(metrics))
    return 0


@interruptible
def main(argv=None) -> int:
    args = parse_args(argv)
    from detector.cli.common import BAD_INPUT_ERRORS, run_tool, start_logging
    from detector.engine.failsafe import TrainingFailed
    from detector.engine.trackers import TrackerStartError, TrackerUnavailableError
    from detector.engine.trainer import NonFiniteLossError
    from detector.runtime.distributed import get_rank, process_group

    with process_group():
        start_logging(get_rank())
        # A diverged run or bad input (checkpoint, annotation file, image, a config that does not fit the data):
        # one `error:` line naming the file and the entry.
        return run_tool(lambda: run(args), bad_input=BAD_INPUT_ERRORS + (NonFiniteLossError, TrainingFailed,
                                                                  TrackerUnavailableError, TrackerStartError),
                        rank=get_rank())


if __name__ == "__main__":
    sys.exit(main())
