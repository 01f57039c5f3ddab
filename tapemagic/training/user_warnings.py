"""Warnings that point at the user's own line, however deep in tapemagic they are raised."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent.parent)  # the tapemagic/ folder


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` attributed to the first frame outside tapemagic (the user's
    `Trainer(...)` or `run()` line), so the warning names a line the user can change.
    Counting frames by hand breaks whenever a call moves between modules."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
