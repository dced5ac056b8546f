"""Console logging for the command-line tools: INFO on the main process, warnings only elsewhere."""

from __future__ import annotations

import logging
import sys


class _CurrentStderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the moment of each record (not the stream at setup time), so
    a tool's ``main()`` called twice in one interpreter (tests, notebooks) never writes to a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {'' if rank == 0 else f'[rank {rank}] '}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S"))
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, handlers=[handler], force=True)
