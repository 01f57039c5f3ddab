"""`TrainingPanel`: a `Trainer` bound to core ipywidgets, with a live loss plot.

Training runs in a worker thread, so the kernel's main thread stays free to deliver
button clicks (a kernel handles one message at a time there); buttons only set the
trainer's thread-safe controls. A second thread refreshes the view at most ten times a second
whatever the epoch rate: progress, parameters, messages, and the plot, a PNG in an
`ipywidgets.Image` replaced in place (no `clear_output`, no flicker, no frontend
extension), redrawn at most five times a second and at most about 0.4 s behind the status.
The panel is shown through a display handle whose bundle also holds the plot as a PNG and
a one-line summary, updated when a run ends: what a saved notebook shows without a kernel.
Where no widget can show (terminal IPython, scripts) it prints one line per epoch instead,
and the error that stopped a run.

Its parts: panel_widgets makes the widgets, panel_settings applies their settings,
panel_status words the status and messages, panel_timing paces the clock and the redraws.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

from tapemagic.display.lossplot import LossPlot
from tapemagic.jupyter import interrupt, panel_widgets, snapshot
from tapemagic.jupyter.panel_settings import PanelSettings, check_epochs
from tapemagic.jupyter.panel_status import (
    RunView,
    epoch_line,
    epoch_progress,
    error_line,
    fold_messages,
    messages_html,
    params_html,
    status_line,
)
from tapemagic.jupyter.panel_timing import RedrawPacer, RunClock
from tapemagic.jupyter.panel_views import LOSS
from tapemagic.threads import Worker
from tapemagic.training import ownership
from tapemagic.training.trainer import Trainer

REFRESH_S = 0.1  # at most ten view refreshes a second
MAX_LINES_PER_TICK = 20  # text mode: beyond this, a tick prints a summary line


class TrainingPanel(PanelSettings):
    """Train, watch and steer gradient descent: Train, Pause/Resume, Step, Stop, Reset.

    `TrainingPanel(trainer)` wraps a `Trainer`; `TrainingPanel(**kwargs)` makes one from
    the `Trainer` arguments. `epochs` is how many epochs Train runs. `view` is "widget",
    "text" (one printed line per epoch) or "auto" (widgets inside a Jupyter kernel).
    """

    def __init__(
        self, trainer: Trainer | None = None, *, epochs: int = 100, view: str = "auto", **kwargs
    ):
        if trainer is not None and kwargs:
            raise TypeError(
                "give either a Trainer or the Trainer's arguments, not both: "
                f"{', '.join(sorted(kwargs))}"
            )
        check_epochs(epochs)  # before a Trainer is made: it would take over the variables
        if view not in ("auto", "widget", "text"):
            raise ValueError(f"view must be 'auto', 'widget' or 'text', not {view!r}")
        if trainer is None:  # told to the panel it supersedes, if any
            with ownership.labelled(_made_where("the panel")):
                trainer = Trainer(**kwargs)
        ownership.check(trainer)  # a Trainer given here that another has superseded
        self.trainer = trainer
        self._kwargs = kwargs  # to remake the trainer on another device
        self.view = _default_view() if view == "auto" else view
        if not self.trainer.is_chief:  # a worker of a cluster runs headless: the chief shows
            self.view = "text"
        self._plot = LossPlot()
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._ticker: Worker | None = None
        self._run_done = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        self._pending: dict[str, Any] = {}  # settings that wait for the run to end
        self._hold = False  # pause (or a step) was asked for this run
        self._stepping = False  # the hold was asked by Step: one more epoch first
        self._fault_left = 0  # epochs a NaN/Inf fault left undone: Resume runs them
        self._run_start_epoch: int | None = None  # None: no run since the panel (or Reset)
        self._clock = RunClock()
        self._rate = 0.0  # epochs per second of running time, this run
        self._pacer = RedrawPacer()  # when the plot is due a redraw
        self._fault_texts: set[str] = set()  # shown while their fault stands, then dropped
        self._lr_echo = False  # the panel itself is moving the slider: no message
        self._printed = 0
        self._printed_error: BaseException | None = None
        self._error_epoch = 0  # where the error in self.error stopped the run
        self._snapshots = snapshot.Snapshots()  # updated after a run
        self.error: BaseException | None = None
        self._superseded: str | None = None  # "superseded by the panel in cell [7]"
        self._remaking = False  # the device menu is replacing this panel's own trainer
        self._interrupted = False  # the kernel's Interrupt stopped this run
        self._build(epochs)
        ownership.watch(self.trainer, self._on_superseded)
        self.refresh(force_plot=True)

    # -- widgets ---------------------------------------------------------------------

    def _build(self, epochs: int) -> None:
        panel_widgets.build(self, epochs)

    def _repr_mimebundle_(self, **kwargs):
        if self.view == "text":
            return {"text/plain": repr(self)}
        return snapshot.bundle(self.widget, self.summary(), bytes(self.plot.value), **kwargs)

    def _ipython_display_(self) -> None:
        """Show the panel through a display handle, so that the static snapshot saved with
        the notebook can be brought up to date when a run ends."""
        from IPython.display import display

        if self.view == "text":
            display({"text/plain": repr(self)}, raw=True)
            return
        self._snapshots.show(self._repr_mimebundle_())

    def _publish_snapshot(self) -> None:
        """Update every shown copy's PNG and summary (the widget view stays as it is)."""
        self._snapshots.publish(self._repr_mimebundle_)

    def summary(self) -> str:
        """One line: what the status shows (for text viewers and saved notebooks)."""
        return f"TrainingPanel: {self._status_text}"

    def __repr__(self) -> str:
        return f"TrainingPanel({self.trainer!r})"

    # -- actions (what the buttons do; callable from code too) -----------------------

    def train(self, epochs: int | None = None) -> None:
        """Start `epochs` (default: the epochs box) more epochs in a worker thread."""
        n = epochs if epochs is not None else self.epochs.value
        check_epochs(n)
        n = int(n)
        if self._superseded:
            raise RuntimeError(
                f"this panel was {self._superseded}, made on the same variables: train there "
                "(or make a new panel)"
            )
        if self._closed:
            raise RuntimeError("this panel is closed: make a new panel to train more")
        with self._lock:
            if self.trainer.running:
                return
            self._interrupted = False
            release = interrupt.guard(self._on_interrupt)  # released by the worker at its end
            self._apply_pending()
            self.error = None
            self._hold = self._stepping = False
            self._fault_left = 0
            self._run_start_epoch = self.trainer.epoch
            self._clock.reset()
            self._clock.tick(True)
            self._rate = 0.0
            self._run_done = threading.Event()
            self._worker = Worker(self._work, "tapemagic-train", (n, self._run_done, release))
            self._worker.start()
            self._start_ticker()
        self.refresh()

    def toggle_pause(self) -> None:
        """Pause a run after its current call, or resume a paused one."""
        t = self.trainer
        if not t.running:
            if self._fault_left:  # paused by a fault: go on with what was left
                self.train(self._fault_left)
            return
        if self._hold:
            t.resume()
        else:
            t.pause()
        self._hold = not self._hold
        self._stepping = False
        self.refresh()

    def step(self) -> None:
        """One epoch: during a run, hold after one more; when idle, train one."""
        if self.trainer.running:
            self.trainer.step()
            self._hold = self._stepping = True
            self._wake.set()
        else:
            self.train(1)

    def stop(self) -> None:
        """End the run between steps (never mid-update); also ends a fault's pause."""
        self.trainer.request_stop()
        self._fault_left = 0
        self._wake.set()
        if not self.trainer.running:
            self.refresh()

    def reset(self) -> None:
        """Stop, then restore the weights and optimizer state the trainer started with."""
        self.stop()
        self.wait(timeout=30)
        self.trainer.reset()
        self._printed = 0
        self.error = None
        # Nothing "this run" is left: no run start, no elapsed time, no rate.
        self._run_start_epoch = None
        self._clock.reset()
        self._rate = 0.0
        self.refresh(force_plot=True)
        self._publish_snapshot()

    def run(self, epochs: int | None = None) -> Any:
        """Train and block until done (for scripts); returns the history."""
        self.train(epochs)
        try:
            self.wait()
        except KeyboardInterrupt:  # Ctrl-C or Interrupt reaches this (the main) thread
            self._on_interrupt()
            try:
                while not self.wait(timeout=0.05):  # a stop asked before the run began: again
                    self.trainer.request_stop()
            except KeyboardInterrupt:  # a second one: give the cell back now
                raise KeyboardInterrupt(
                    "training is stopping: it ends after its current step"
                ) from None
            self._publish_snapshot()
            raise KeyboardInterrupt(f"training stopped at epoch {self.trainer.epoch}") from None
        self._publish_snapshot()  # from the caller's thread: its cell owns the messages
        return self.trainer.history

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run has ended; False if `timeout` passed first."""
        worker = self._worker
        if worker is not None and not worker.wait(timeout):
            return False
        ticker = self._ticker
        if ticker is not None:
            ticker.wait(timeout)
        return True

    def close(self) -> None:
        """Stop training and end both threads. The view stays, its controls off, as the
        record of the run: a notebook saved later still shows its plot and status (a
        closed widget would leave "Loading widget..." in its place)."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        self.wait(timeout=30)
        self._wake.set()
        self._say(f"closed at epoch {self.trainer.epoch}: make a new panel to train more")
        self.refresh(force_plot=True)
        self._publish_snapshot()

    # -- the worker and the view refresher -------------------------------------------

    def _work(self, epochs: int, done: threading.Event, release: Callable[[], None]) -> None:
        t = self.trainer
        try:
            t.run(epochs)
        except BaseException as err:  # shown in the panel; the trainer's state is consistent
            self.error, self._error_epoch = err, t.epoch
        finally:
            release()
            if self._interrupted:
                self._say(f"interrupted at epoch {t.epoch}")
            self._clock.tick(False)  # elapsed stops with the run, not at the next refresh
            if t.fault is not None:  # a NaN/Inf pauses: Resume (or Step) carries on
                self._fault_left = max(t.target_epoch - t.epoch, 0)
            done.set()  # before the wake-up, so the view's last refresh is the final one
            self._wake.set()

    def _start_ticker(self) -> None:
        """Called with the lock held: one view thread, alive while a run is."""
        if self._ticker is None:
            self._ticker = Worker(self._tick, "tapemagic-view")
            self._ticker.start()

    def _tick(self) -> None:
        while True:
            self._wake.wait(REFRESH_S)
            self._wake.clear()
            done = self._run_done.is_set()
            self.refresh(force_plot=done)
            if done:
                self._publish_snapshot()
            with self._lock:  # a run started meanwhile keeps this thread going
                if (done and self._run_done.is_set()) or self._closed:
                    self._ticker = None
                    return

    # -- interrupts, supersession, messages --------------------------------------------

    def _on_interrupt(self) -> None:
        """The kernel's Interrupt (called from its signal handler): stop between steps."""
        self._interrupted = True
        self.trainer.request_stop()
        self._wake.set()

    def _on_superseded(self, event: ownership.Supersession) -> None:
        """A newer trainer took this panel's variables and stopped its run between steps:
        the controls go off and the messages say where training lives now."""
        if self._remaking:
            return
        self._superseded = f"superseded by {event.label or _made_where('a Trainer')}"
        self.wait(timeout=30)  # the worker and the view thread end before the last refresh
        self._say(f"{self._superseded}: this panel's controls are off")
        self.refresh(force_plot=True)

    def _controls_off(self) -> None:
        for control in (
            self.train_button, self.pause_button, self.step_button, self.stop_button,
            self.reset_button, self.epochs, self.learning_rate, self.optimizer,
            self.batch_size, self.device,
        ):  # fmt: skip
            control.disabled = True

    def _say(self, text: str) -> None:
        self.trainer.messages.append(text)
        self.messages.value = messages_html(self._shown_messages(), self.error, self._error_epoch)

    def _shown_messages(self) -> list[str]:
        """The last messages, a fault's only while it stands (Reset or a clean run clears
        it), each repeat folded into one line with a count."""
        t = self.trainer
        if t.fault is not None:
            self._fault_texts.add(t.fault.message)
        faulted = t.fault is not None or self._fault_left > 0
        lines = [m for m in list(t.messages) if faulted or m not in self._fault_texts]
        if self.error is not None:  # the error line says it: not twice
            said = str(self.error)
            lines = [m for m in lines if not (m.startswith("stopped by an error") and said in m)]
        return fold_messages(lines, self.error)

    # -- the view ----------------------------------------------------------------------

    def refresh(self, force_plot: bool = False) -> None:
        """Bring every widget up to date; the plot only when due (or forced)."""
        t = self.trainer
        running, holding = t.running, t.paused  # read once: one state for the whole view
        n = len(t.history)
        self._clock.tick(running and not holding)  # elapsed counts running time only
        faulted = not running and self._fault_left > 0
        paused = (running and (holding or self._hold)) or faulted
        self.train_button.disabled = running
        self.stop_button.disabled = not (running or faulted)
        self.pause_button.disabled = not (running or faulted)
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        for box in (self.optimizer, self.batch_size, self.device):
            box.disabled = running or (box is self.optimizer and t.optimizer is None)
        self._follow_learning_rate()
        self._update_progress(n, running, holding)
        self.strategy.value = html.escape(t.distribution() or "")
        self.params.value = params_html(t.param_values())
        self.messages.value = messages_html(self._shown_messages(), self.error, self._error_epoch)
        self._maybe_plot(n, force_plot, running)
        self.views.refresh_shown(force_plot)
        if self.view == "text":
            self._print_new_epochs(n)
        if self._superseded or self._closed:
            self._controls_off()

    def _update_progress(self, n: int, running: bool, holding: bool) -> None:
        t = self.trainer
        start = self._run_start_epoch
        done = n - start if start is not None else 0
        total = max(t.target_epoch - start, 0) if start is not None else 0
        elapsed = self._clock.elapsed
        if start is not None and elapsed > 0 and done > 0:
            self._rate = done / elapsed
        self.progress.max = max(total, 1)
        self.progress.value = min(max(done, 0), self.progress.max)
        self._status_text = status_line(
            RunView(
                n, start, done, total, running, holding, self._hold, self._stepping,
                self._fault_left, elapsed, self._rate,
            ),
            t,
        )  # fmt: skip
        self.status.value = html.escape(self._status_text)

    def _maybe_plot(self, n: int, force: bool, running: bool = False) -> None:
        settings = (self.log_scale.value, self.smoothing.value)
        progress = epoch_progress(n, self.trainer)
        drawn = (n, progress)
        now = time.monotonic()
        if not (force or self._pacer.due(now, drawn, settings)):
            return
        if not force and self.views.current != LOSS:  # hidden: drawn when shown or a run ends
            return
        h = self.trainer.history
        started = time.monotonic()
        try:
            png = self._plot.render(
                h["loss"], h["val_loss"], log_scale=settings[0], smoothing=settings[1],
                progress=progress, live=running,
            )  # fmt: skip
        except Exception as err:  # a picture must never stop training or the view
            self._pacer.drew(now, drawn, settings)
            self._say(f"the plot could not be drawn: {type(err).__name__}: {err}")
            return
        self._pacer.rendered(time.monotonic() - started)
        self.plot.value = png
        self._pacer.drew(now, drawn, settings)

    def _print_new_epochs(self, n: int) -> None:
        if n < self._printed:
            self._printed = 0
        new = range(self._printed, n)
        if len(new) > MAX_LINES_PER_TICK:
            print(f"... {len(new) - 1} epochs ...")
            new = range(n - 1, n)
        for i in new:
            print(epoch_line(self.trainer.history[i]))
        self._printed = n
        # Where no widget shows, an error that stopped a run is printed, once.
        if self.error is not None and self.error is not self._printed_error:
            self._printed_error = self.error
            print(f"error at epoch {self._error_epoch}: {error_line(self.error)}")

    # -- the loss landscape ----------------------------------------------------------

    def landscape(self, directions: Any = "auto", resolution: int = 61) -> Any:
        """The loss landscape around the run, computed now (in this thread): grid values,
        axes, directions and the path projected onto them, as a
        `tapemagic.training.landscape.Landscape`. `directions`: "auto", "parameters",
        "random", "pca" or an array (2, n_weights)."""
        from tapemagic.jupyter.landscape_view import panel_landscape

        return panel_landscape(self, directions, resolution)


def _made_where(what: str) -> str:
    """'the panel in cell [7]': the cell running now, as its prompt numbers it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return f"{what} made later"
    count = getattr(get_ipython(), "execution_count", None)
    # IPython counts a cell before running it: the running cell's number is one less.
    return f"{what} in cell [{count - 1}]" if count else f"{what} made later"


def _default_view() -> str:
    try:
        from IPython import get_ipython
    except ImportError:
        return "text"
    shell = get_ipython()
    return "widget" if getattr(shell, "kernel", None) is not None else "text"
