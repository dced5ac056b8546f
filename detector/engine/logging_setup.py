"""Console logging for the command-line tools: INFO on the main process, warnings only elsewhere."""

from __future__ import annotations

import logging
import sys


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, stream=sys.stderr, force=True,
                        format=f"%(asctime)s {'' if rank == 0 else f'[rank {rank}] '}%(levelname)s %(name)s: "
                               "%(message)s", datefmt="%H:%M:%S")
