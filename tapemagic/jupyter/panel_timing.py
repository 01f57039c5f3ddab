"""The training panel's clocks: a run's running time, and when the loss plot is due a redraw."""

from __future__ import annotations

import threading
import time
from typing import Any

PLOT_EVERY_S = 0.2  # redraws at most five times a second...
PLOT_LAG_S = 0.25  # ...and trail the status by at most this (plus one render)
PLOT_SHARE = 0.08  # drawing may take at most this share of the wall time


class RunClock:
    """Running time of a run: paused time left out, frozen when the run ends.

    `tick(running)` is called at each refresh (and when the run ends): the time since the
    last tick counts if the run was running then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._elapsed = 0.0
        self._since: float | None = None  # when the current running stretch began

    def tick(self, running: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if self._since is not None:
                self._elapsed += now - self._since
            self._since = now if running else None

    def reset(self) -> None:
        with self._lock:
            self._elapsed, self._since = 0.0, None

    @property
    def elapsed(self) -> float:
        with self._lock:
            extra = time.monotonic() - self._since if self._since is not None else 0.0
            return self._elapsed + extra


class RedrawPacer:
    """When the plot is due a redraw: often enough to trail the status by at most
    PLOT_LAG_S, and seldom enough that drawing stays a small share of the wall time when
    renders get slow."""

    def __init__(self) -> None:
        self._last: tuple[float, Any, Any] = (0.0, -1, None)  # time, what was drawn, settings
        self._render_s = 0.0  # the last renders' wall time, smoothed

    def due(self, now: float, drawn: Any, settings: Any) -> bool:
        """Whether to draw `drawn` with the view `settings` at `now` (time.monotonic())."""
        last_time, last_drawn, last_settings = self._last
        interval = min(PLOT_LAG_S, max(PLOT_EVERY_S, self._render_s / PLOT_SHARE))
        due = now - last_time >= interval - 0.01 and drawn != last_drawn
        return due or settings != last_settings

    def rendered(self, took: float) -> None:
        """A render took `took` seconds."""
        self._render_s = took if not self._render_s else 0.7 * self._render_s + 0.3 * took

    def drew(self, now: float, drawn: Any, settings: Any) -> None:
        """`drawn` was drawn (or failed to be) at `now`: not again until due."""
        self._last = (now, drawn, settings)
