"""One rank-aware logger: rank 0 prints info; every rank prints warnings and errors, tagged."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def get_logger(name: str = "stratus") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        r = rank()
        tag = f"[rank{r}] " if "RANK" in os.environ else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {tag}%(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if r == 0 else logging.WARNING)
        logger.propagate = False
    return logger


def exit_now(code: int) -> NoReturn:
    """Flush the logs and the standard streams, then end the process without the interpreter's
    teardown (`os._exit`): for a process entry whose work is done and whose files are closed, where
    unloading torch and DeepSpeed would cost about 1 s. Never call it from a function others call."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
