"""Training curves: loss terms, learning rate and evaluation APs vs iteration, several runs overlaid.

    python tools/plot_metrics.py WORK_DIR_OR_METRICS_JSONL [...] --out fig.png [--names A B ...]
"""

from __future__ import annotations

import argparse
import sys

from detector.analysis.metrics_plot import load_run, plot_metrics
from detector.cli.common import tool_parser
from detector.cli.entry import run_command


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("runs", nargs="+", help="work dirs (holding metrics.jsonl) or metrics.jsonl files")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--names", nargs="+", help="legend names (default: the work dir names)")
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.runs):
        parser.error(f"{len(args.names)} names for {len(args.runs)} runs")
    return args


def plot(args: argparse.Namespace) -> None:
    names = args.names or [None] * len(args.runs)
    runs = [load_run(path, name) for path, name in zip(args.runs, names)]
    out = plot_metrics(runs, args.out)
    for run in runs:
        last = {k: v[-1] for k, (_, v) in run.series.items() if k.startswith("val/")}
        iters = run.series.get("train/loss", ([0], [0]))[0]
        print(f"{run.name}: {len(iters)} logged steps up to iteration {iters[-1]}"
              + (f", last evaluation {', '.join(f'{k[4:]} {v:.4f}' for k, v in last.items())}" if last else ""))
    print(f"wrote {out}")


def main(argv=None) -> int:
    return run_command(parse_args, plot, argv, log=False, bad_input=(FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
