"""The body of every tool's ``main()``. Only ``argparse`` at import: a tool parses its command line (and answers
``--help``) before torch or any model code is imported; the error reporting comes in after."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["run_command"]


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
