"""Argument-parser helpers of the command-line tools. Only ``argparse``: a tool parses its command line (and
answers ``--help``) before it imports torch or any model code (see detector/cli/main.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["tool_parser", "add_config_argument", "add_opts_argument", "add_raw_weights_argument", "run_command"]


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


def run_command(parse_args: Callable[[list[str] | None], argparse.Namespace],
                run: Callable[[argparse.Namespace], int | None], argv: list[str] | None = None, log: bool = True,
                bad_input: tuple[type[BaseException], ...] | None = None) -> int:
    """A tool's ``main()``: parse the command line (``--help`` and usage errors answer before torch is imported),
    start logging (``log``), run ``run(args)`` and return its exit code, errors reported by
    :func:`detector.cli.common.run_tool` (``bad_input``: the errors reported as bad input, exit 1; by default
    the common ones)."""
    args = parse_args(argv)
    from detector.cli.common import BAD_INPUT_ERRORS, run_tool, start_logging

    if log:
        start_logging()
    return run_tool(lambda: run(args), bad_input=BAD_INPUT_ERRORS if bad_input is None else bad_input)
