"""Warnings that point at the user's own line, however deep in tapemagic they are raised."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import tensorflow as tf

_PACKAGE = str(Path(__file__).resolve().parent.parent)  # the tapemagic/ folder


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` attributed to the first frame outside tapemagic (the user's
    `Trainer(...)` or `run()` line), so the warning names a line the user can change.
    Counting frames by hand breaks whenever a call moves between modules."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


# Functions of ours that are traced once per trainer (or per compare copy) by design: their
# copies share their code, which TensorFlow counts together and, at five traces, calls
# "excessive retracing", a warning that would appear under the user's cell.
TRACED_PER_OWNER = ("CompiledLoop._compiled", "substituted_forward.<locals>.call")


class _TracedPerOwner(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "retracing" not in message or not any(f in message for f in TRACED_PER_OWNER)


def quiet_own_retracing() -> None:
    """Keep TensorFlow's retracing warning about `TRACED_PER_OWNER` out of the user's
    output (its warnings about the user's own functions stay)."""
    logger = tf.get_logger()
    if not any(isinstance(f, _TracedPerOwner) for f in logger.filters):
        logger.addFilter(_TracedPerOwner())
