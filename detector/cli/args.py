"""Argument-parser helpers of the command-line tools. Only ``argparse``: a tool parses its command line (and
answers ``--help``) before it imports torch or any model code (see detector/cli/main.py)."""

from __future__ import annotations

import argparse

__all__ = ["tool_parser", "add_config_argument", "add_opts_argument", "add_raw_weights_argument"]


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

