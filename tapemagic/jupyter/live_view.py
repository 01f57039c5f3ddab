"""The live view of a `LiveLog`: Stop, Pause and Step, progress, status, loss plot, messages.

The training code runs in the cell's own thread (fit's callbacks, a hand-written loop);
a view thread refreshes the widgets at most ten times a second and the plot, a PNG in an
`ipywidgets.Image` replaced in place, as TrainingPanel paces it. The buttons only set the
log's thread-safe controls; while the cell is busy, `comm_pump.pump()` (called by the
training code between batches) is what lets their clicks in. Re-running a cell replaces the
views it showed before: the old ones say so and their buttons go off. A finished view
updates its display handle with the plot as PNG and a one-line summary, what a saved
notebook shows without a kernel.
"""

from __future__ import annotations

import html
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from tapemagic.display.lossplot import Curve, LossPlot
from tapemagic.jupyter import snapshot
from tapemagic.jupyter.panel_status import duration, fold_messages
from tapemagic.jupyter.panel_timing import RedrawPacer
from tapemagic.threads import Worker
from tapemagic.training.livelog import LiveLog, LiveState, is_loss

# The training shares the interpreter with this view: every millisecond the view thread
# holds the GIL, fit's batch loop waits. So: five refreshes a second, and a new picture at
# most every half second while a run goes (enough to watch a loss fall).
REFRESH_S = 0.2
PLOT_EVERY_S = 0.5
_by_cell: dict[str, list[weakref.ref]] = {}  # cell -> the views it showed


def status_line(s: LiveState) -> str:
    """One line: state, epoch and batch, time, speed, learning rate, last values."""
    if s.running and s.paused:
        head = "paused"
    elif s.running and s.stop_asked:
        head = "stopping"
    elif s.running and s.pause_asked:
        head = "pausing"
    else:
        head = "running" if s.running else "stopped"
    total = f"/{s.epochs_total:,}" if s.epochs_total else ""
    parts = [f"{head} · epoch {s.epochs_done:,}{total}"]
    if s.batch:  # a dataset of unknown length has no total: the count alone still moves
        parts[0] += f" · batch {s.batch:,}" + (f"/{s.steps:,}" if s.steps else "")
    if s.elapsed:
        parts.append(f"elapsed {duration(s.elapsed)}")
    if s.running and s.eta is not None and not s.pause_asked:
        parts.append(f"ETA {duration(s.eta)}")
    if s.steps and s.batches_per_s:
        parts.append(f"{s.batches_per_s:,.1f} batches/s")
    elif s.epochs_per_s:
        parts.append(f"{s.epochs_per_s:,.1f} epochs/s")
    if s.samples_per_s:
        parts.append(f"{s.samples_per_s:,.0f} samples/s")
    if s.learning_rate is not None:
        parts.append(f"lr {s.learning_rate:.3g}")
    if s.last is not None:
        parts += [f"{k} {v:.6g}" for k, v in s.last.values.items() if k != "learning_rate"]
    return " · ".join(parts)


def current_cell() -> tuple[str | None, object]:
    """The running cell, as the kernel names it (its id) or else by its source, and this
    run of it (the shell's result object, one per run)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None, None
    shell = get_ipython()
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    info = getattr(result, "info", None)
    if info is None:
        return None, None
    return getattr(info, "cell_id", None) or getattr(info, "raw_cell", None), result


def in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class LiveView:
    """Widgets showing `log`; `start()` shows them and refreshes, `finish()` ends it."""

    def __init__(self, log: LiveLog, title: str) -> None:
        self.log = log
        self.title = title
        self._plot: LossPlot | None = None  # made by the first render, off the training thread
        self._plotted = 0.0  # when the plot was last drawn
        self._settings: tuple | None = None  # the view settings it was drawn with
        self._pacer = RedrawPacer()
        self._snapshots = snapshot.Snapshots()
        self._thread: Worker | None = None
        self._watch: Callable[[], bool] | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()  # one refresh at a time (view thread, finish)
        self.replaced = False
        self._run: object = None  # the run of the cell that showed it
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger")
        self.pause_button = w.Button(description="Pause", icon="pause")
        self.step_button = w.Button(description="Step", icon="step-forward", tooltip="one epoch")
        self.log_scale = w.Checkbox(value=False, description="log scale", indent=False)
        self.smoothing = w.FloatSlider(
            value=0.0, min=0.0, max=0.99, step=0.01, description="smoothing",
            continuous_update=False,
        )  # fmt: skip
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="320px"))
        self.status = w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(width="480px"))
        self.messages = w.HTML()
        self.stop_button.on_click(lambda _: self._click(self.log.controls.stop))
        self.pause_button.on_click(lambda _: self._click(self.log.controls.toggle_pause))
        self.step_button.on_click(lambda _: self._click(self.log.controls.step))
        for box in (self.log_scale, self.smoothing):
            box.observe(lambda _: self.refresh(force_plot=True), "value")
        self.widget = w.VBox(
            [
                w.HBox([self.stop_button, self.pause_button, self.step_button]),
                w.HBox([self.progress, self.status]),
                w.HBox([self.plot, w.VBox([self.log_scale, self.smoothing])]),
                self.messages,
            ]
        )
        self.widget.add_class("tapemagic-live")
        for name in ("status", "plot", "progress", "messages"):
            getattr(self, name).add_class(f"tapemagic-{name}")
        self.refresh()  # the plot comes with the view thread's first refresh

    # -- display ----------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        return snapshot.bundle(self.widget, self.summary(), bytes(self.plot.value), **kwargs)

    def summary(self) -> str:
        return f"{self.title}: {status_line(self.log.state())}"

    def show(self) -> None:
        """Display in the running cell; views this cell showed before are replaced.
        Outside IPython (a script) there is nowhere to show it: the widgets still update."""
        from IPython import get_ipython

        if get_ipython() is None:
            return
        cell, run = current_cell()
        if cell is not None:
            kept = []
            for ref in _by_cell.pop(cell, []):
                old = ref()
                if old is None or old is self:
                    continue
                if old._run is run:  # shown earlier in this same run (two fits in one cell)
                    kept.append(ref)
                else:
                    old.replace()
            _by_cell[cell] = [*kept, weakref.ref(self)]
            self._run = run
        self._snapshots.show(self._repr_mimebundle_())

    def replace(self) -> None:
        """A re-run of its cell made a new view: stop what this one runs, buttons off."""
        self.replaced = True
        self.log.controls.stop()
        self.log.say("replaced by a newer view of this cell: its buttons are off")
        self.refresh(force_plot=True)

    def _click(self, action: Any) -> None:
        if not self.replaced:
            action()
            self.refresh()

    # -- the refresher -------------------------------------------------------------------

    def start(self, watch: Callable[[], bool] | None = None) -> None:
        """Refresh in a thread until `finish()`, or until `watch()` says the run is gone."""
        self._done.clear()
        self._watch = watch
        if self._thread is None or self._thread.ended:
            self._thread = Worker(self._tick, "tapemagic-live")
            self._thread.start()

    def finish(self) -> None:
        """The run ended: last refresh with the whole plot, then the saved snapshot."""
        self._done.set()
        if self._thread is not None:
            self._thread.wait()
            self._thread = None
        self._final()

    def _final(self) -> None:
        self.refresh(force_plot=True)
        self._snapshots.publish(self._repr_mimebundle_)

    def _tick(self) -> None:
        first = True
        while first or not self._done.wait(REFRESH_S):
            try:
                if self._watch is not None and not self._watch():
                    self._final()  # nobody will call finish(): the run is gone
                    return
                self.refresh(force_plot=first)
                first = False
            except Exception as err:  # the view must never stop training
                self.log.say(f"the view could not refresh: {type(err).__name__}: {err}")

    def refresh(self, force_plot: bool = False) -> None:
        with self._lock:
            s = self.log.state()
            off = self.replaced or not s.running
            self.stop_button.disabled = off
            self.pause_button.disabled = off
            self.step_button.disabled = off
            paused = s.running and s.pause_asked
            self.pause_button.description = "Resume" if paused else "Pause"
            self.pause_button.icon = "play" if paused else "pause"
            if s.epochs_total:
                self.progress.max = max(s.epochs_total, 1)
                frac = s.batch / s.steps if s.steps else 0.0
                self.progress.value = min(int(s.epochs_done + frac), self.progress.max)
            self.status.value = html.escape(status_line(s))
            lines = fold_messages(list(self.log.messages), None)
            self.messages.value = "".join(f"<div>{html.escape(m)}</div>" for m in lines)
            self._maybe_plot(s, force_plot)

    def _maybe_plot(self, s: LiveState, force: bool) -> None:
        """Redraw when due. The axes keep their live limits after the run too, so the
        last picture usually reuses the last frame: ending a fit costs a blit, not a
        whole figure."""
        settings = (self.log_scale.value, self.smoothing.value)
        drawn = (s.epochs_done, self.log.batch_points)
        now = time.monotonic()
        if s.running and not any(drawn):  # nothing yet: the first points come soon
            return
        if not force:
            if s.running and settings == self._settings and now - self._plotted < PLOT_EVERY_S:
                return
            if not self._pacer.due(now, drawn, settings):
                return
        self._plotted, self._settings = now, settings
        b = self.log.batches()
        started = time.monotonic()
        if self._plot is None:
            self._plot = LossPlot()
        names = [n for n in self.log.names() if is_loss(n)]
        extra = [Curve(n, self.log.column(n)) for n in names if n not in ("loss", "val_loss")]
        try:
            png = self._plot.render(
                self.log.column("loss"), self.log.column("val_loss"), log_scale=settings[0],
                smoothing=settings[1], live=True, extra=extra, batches=b if b.x else None,
            )  # fmt: skip
        except Exception as err:  # a picture must never stop training
            self._pacer.drew(now, drawn, settings)
            self.log.say(f"the plot could not be drawn: {type(err).__name__}: {err}")
            return
        self._pacer.rendered(time.monotonic() - started)
        self.plot.value = png
        self._pacer.drew(now, drawn, settings)
