"""`tapemagic.compare(...)`: optimizers side by side in one panel.

The copies of a `Comparison` train at the same time; one row of Train / Pause / Step /
Stop / Reset acts on all of them. Beneath: their loss curves on one plot and their paths
on one landscape. A view thread redraws at most five times a second while a run goes;
the landscape's grid is recomputed only when the paths leave it (two parameters) or, for
a slice, at most `SHARE` of the time. Without a kernel (terminal, script) `run` prints
each copy's last loss instead.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as w

from tapemagic.display.landscape_plot import LandscapePlot, Path, render_losses
from tapemagic.jupyter import snapshot
from tapemagic.jupyter.panel_timing import RedrawPacer
from tapemagic.threads import Worker
from tapemagic.training.compare import ComparedLandscape, Comparison

REFRESH_S = 0.1
SHARE = 0.08  # while training runs, landscapes take at most this share of the time


class ComparePanel:
    """Several optimizers trained side by side, with shared controls."""

    def __init__(self, comparison: Comparison, epochs: int = 100, view: str = "auto"):
        from tapemagic.jupyter.panel import _default_view
        from tapemagic.jupyter.panel_settings import check_epochs

        check_epochs(epochs)
        if view not in ("auto", "widget", "text"):
            raise ValueError(f"view must be 'auto', 'widget' or 'text', not {view!r}")
        self.comparison = comparison
        self.view = _default_view() if view == "auto" else view
        self.train_button = w.Button(description="Train", icon="play", button_style="success")
        self.pause_button = w.Button(description="Pause", icon="pause", disabled=True)
        self.step_button = w.Button(description="Step", icon="step-forward")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    disabled=True)  # fmt: skip
        self.reset_button = w.Button(description="Reset", icon="undo")
        self.epochs = w.IntText(value=epochs, description="epochs",
                                style={"description_width": "initial"})  # fmt: skip
        self.status = w.HTML()
        self.losses = w.Image(format="png", layout=w.Layout(width="432px"))
        self.landscape_image = w.Image(format="png", layout=w.Layout(width="432px"))
        self.note = w.HTML()
        self.train_button.on_click(lambda _: self.train())
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.step_button.on_click(lambda _: self.step())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        buttons = [self.train_button, self.pause_button, self.step_button, self.stop_button,
                   self.reset_button, self.epochs]  # fmt: skip
        self.widget = w.VBox([
            w.HBox(buttons), self.status, w.HBox([self.losses, self.landscape_image]), self.note,
        ])  # fmt: skip
        self.widget.add_class("tapemagic-compare")  # for styling and browser tests
        self.landscape: ComparedLandscape | None = None
        self.error: str | None = None
        self._plot = LandscapePlot()
        self._pacer = RedrawPacer()
        self._held = False
        self._next_grid = 0.0
        self._lock = threading.Lock()
        # the ticker, a click (the kernel's thread) and a supersession (another cell's) all
        # refresh: one at a time, as the figure is drawn in place
        self._refresh_lock = threading.Lock()
        self._ticker: Worker | None = None
        comparison.watchers.append(lambda: self.refresh(force=True))
        self.refresh(force=True)

    # -- actions ---------------------------------------------------------------------

    def train(self, epochs: int | None = None) -> None:
        """Train every copy `epochs` more (default: the epochs box), in the background."""
        n = int(epochs if epochs is not None else self.epochs.value)
        if self.comparison.running or self.comparison.superseded:
            return
        self._held = False
        self.comparison.start(n)
        self._start_ticker()

    def toggle_pause(self) -> None:
        if not self.comparison.running:
            return
        if self._held:
            self.comparison.resume()
        else:
            self.comparison.pause()
        self._held = not self._held
        self.refresh()

    def step(self) -> None:
        if self.comparison.superseded:
            return
        if self.comparison.running:
            self._held = True
        self.comparison.step()
        self._start_ticker()

    def stop(self) -> None:
        self.comparison.request_stop()

    def reset(self) -> None:
        self.comparison.reset()
        self._held = False
        self.refresh(force=True)

    def run(self, epochs: int | None = None) -> dict:
        """Train and wait (for scripts); returns each copy's history."""
        self.train(epochs)
        self.comparison.wait()
        self.wait()
        self.refresh(force=True)
        if self.view == "text":
            for label, h in self.comparison.histories.items():
                last = h.last
                print(f"{label}: epoch {len(h)}, loss {last.loss:.6g}" if last else label)
        return self.comparison.histories

    def close(self) -> None:
        """Stop the copies, wait for them, and take the widgets off the page."""
        self.comparison.request_stop()
        self.comparison.wait(30)
        self.wait(30)
        self.widget.close()

    def wait(self, timeout: float | None = None) -> bool:
        ticker = self._ticker
        return ticker is None or ticker.wait(timeout)

    # -- the view ----------------------------------------------------------------------

    def _start_ticker(self) -> None:
        with self._lock:
            if self._ticker is None or self._ticker.ended:
                self._ticker = Worker(self._tick, "tapemagic-compare-view")
                self._ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(REFRESH_S)
            running = self.comparison.running
            self.refresh(force=not running)
            if not running:
                return

    def refresh(self, force: bool = False) -> None:
        """Status, buttons, and (when due or forced) the plots. Never raises."""
        try:
            with self._refresh_lock:
                self._refresh(force)
        except Exception as err:  # a picture must never stop training or the view
            self.error = f"{type(err).__name__}: {err}"
            self.note.value = f'<span style="color:#d62728">{html.escape(self.error)}</span>'

    def _refresh(self, force: bool) -> None:
        c = self.comparison
        running = c.running
        self.train_button.disabled = running or c.superseded
        self.step_button.disabled = self.reset_button.disabled = c.superseded
        self.pause_button.disabled = self.stop_button.disabled = not running
        paused = running and self._held
        self.pause_button.description = "Resume" if paused else "Pause"
        state = "paused" if paused else ("running" if running else "idle")
        if c.superseded:
            state = "superseded by a newer comparison of the same model: its controls are off"
        parts = []
        for label, t in zip(c.labels, c.trainers, strict=True):
            last = t.history.last
            parts.append(f"{label}: epoch {t.epoch}" + (f", loss {last.loss:.4g}" if last else ""))
            if t.fault is not None:  # the copy stopped there; the others went on
                parts[-1] += f" (stopped by a NaN/Inf at epoch {t.fault.epoch}: lower its rate)"
        errors = [f"{label}: {type(e).__name__}: {e}" for label, e in c.errors.items()]
        self.status.value = html.escape(f"{state} · " + " · ".join(parts + errors))
        drawn = tuple(t.epoch for t in c.trainers)
        now = time.monotonic()
        if not (force or self._pacer.due(now, drawn, None)):
            return
        started = time.monotonic()
        self.losses.value = render_losses({lb: h["loss"] for lb, h in c.histories.items()})
        if not c.has_paths:  # a fresh or reset slice: nothing to draw yet, no error either
            self.landscape = None
            self.landscape_image.value = b""
            self.note.value = "the copies' paths are drawn once they have trained an epoch"
        elif force or now >= self._next_grid:
            grid_start = time.monotonic()
            self.landscape = c.landscape(resolution=61 if c.trainers[0].trajectory.n_weights == 2
                                         else 41)  # fmt: skip
            took = time.monotonic() - grid_start
            self._next_grid = time.monotonic() + (took * (1 / SHARE - 1) if running else 0.0)
        land = self.landscape
        self.error = None
        if land is not None:
            paths = [Path(lb, p) for lb, p in zip(land.labels, land.paths, strict=True)]
            self.landscape_image.value = self._plot.render(land.landscape, paths,
                                                           title="the copies' paths")  # fmt: skip
            self.note.value = html.escape(land.landscape.note)
        self._pacer.rendered(time.monotonic() - started)
        self._pacer.drew(now, drawn, None)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        if self.view == "text":
            return {"text/plain": repr(self)}
        return snapshot.bundle(self.widget, repr(self), bytes(self.losses.value), **kwargs)

    def __repr__(self) -> str:
        return f"ComparePanel({self.comparison!r})"


def compare(
    optimizers: Any = "sgd,momentum,adam",
    *,
    epochs: int = 100,
    learning_rate: float | None = None,
    view: str = "auto",
    **kwargs: Any,
) -> ComparePanel:
    """Train copies of one model side by side, one per optimizer, from the same weights.

    `optimizers`: 'sgd,momentum,adam', or with rates: 'sgd:0.001,adam:0.07' (a list works
    too); `learning_rate` for those without one. The other arguments are the `Trainer`'s
    (model= or params= with predict=, loss=, data=, ...). Shows one loss plot and one
    landscape for all the copies, with shared Train / Pause / Step / Stop / Reset."""
    return ComparePanel(Comparison(optimizers, learning_rate=learning_rate, **kwargs), epochs, view)
