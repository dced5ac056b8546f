"""Argument-parser helpers of the command-line tools. Only ``argparse``: a tool parses its command line (and
answers ``--help``) before it imports torch or any model code (see detector/cli/main.py)."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["tool_parser", "add_config_argument", "add_opts_argument", "add_raw_weights_argument", "interruptible"]


def tool_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help shows the tool's module docstring as written."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_argument(parser: argparse.ArgumentParser, help_text: str = "YAML config file") -> None:
    parser.add_argument("config", help=help_text)


def add_opts_argument(parser: argparse.ArgumentParser, help_text: str = "config overrides") -> None:
    """``--opts KEY=VALUE ...``: YAML-typed config overrides (e.g. schedule.max_iters=100 data.min_size=[512])."""
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help=help_text)


def add_raw_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw-weights", action="store_true",
                        help="a checkpoint holding a moving average of the weights (runtime.ema) is used with the "
                             "average, as training evaluated it; this uses its raw weights instead")


def interruptible(main: Callable[..., int]) -> Callable[..., int]:
    """A tool's ``main(argv)`` that ends a Ctrl-C it does not handle itself (while torch and the model code load,
    before :func:`detector.cli.common.run_tool` starts, or while the process group ends after it) as run_tool
    does: the line "interrupted (Ctrl-C)" (from rank 0 alone under torchrun) and exit code 130, not a traceback."""
    @functools.wraps(main)
    def main_or_interrupted(argv=None) -> int:
        try:
            return main(argv)
        except KeyboardInterrupt:
            if os.environ.get("RANK", "0") == "0":
                print("interrupted (Ctrl-C)", file=sys.stderr)
            return 128 + signal.SIGINT
    return main_or_interrupted
