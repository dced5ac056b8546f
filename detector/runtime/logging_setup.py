"""Logging for the command-line tools: INFO on the main process's console, warnings only elsewhere, and a
training run's log file (``<work_dir>/train.log``).

Console records go through ``tqdm.write``, so a log line printed while a progress bar is drawn lands above the bar
instead of through it. A record logged with ``extra=FILE_ONLY`` reaches log files but not the console (the
final evaluation, which the tool prints as a table; the error that stopped a run, which it prints as one
``error:`` line).
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

__all__ = ["FILE_ONLY", "setup_logging", "add_log_file", "remove_log_file"]

FILE_ONLY = {"file_only": True}  # logger.info(..., extra=FILE_ONLY): the log file only
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _console_record(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


class _CurrentStderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the moment of each record (not the stream at setup time), so
    a tool's ``main()`` called twice in one interpreter (tests, notebooks) never writes to a closed stream."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_console_record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


class _RunLogFile(logging.FileHandler):
    """A log file that, when it cannot be written (disk full, file system gone), says so once on the console
    and stops trying, instead of printing logging's "--- Logging error ---" traceback at every record."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        self.setLevel(logging.CRITICAL + 1)  # first, so that the warning below does not come back here
        logging.getLogger(__name__).warning("cannot write %s (%s); the log continues on the console only",
                                            self.baseFilename, error)


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {'' if rank == 0 else f'[rank {rank}] '}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S"))
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, handlers=[handler], force=True)


def add_log_file(path: str, level: int = logging.INFO) -> logging.Handler:
    """Append every record the logging configuration lets through (INFO and up under the tools) to ``path``,
    with full dates; returns the handler for :func:`remove_log_file`."""
    handler = _RunLogFile(path, mode="a", encoding="utf-8", delay=False)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(_FILE_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return handler


def remove_log_file(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
