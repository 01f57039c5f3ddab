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
"""

from __future__ import annotations

import base64
import html
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import numpy as np

from tapemagic.display.lossplot import LossPlot
from tapemagic.jupyter import interrupt
from tapemagic.training import ownership
from tapemagic.training.objectives import OPTIMIZERS
from tapemagic.training.trainer import Trainer

BATCH_SIZES = [None, 1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
REFRESH_S = 0.1  # at most ten view refreshes a second
PLOT_EVERY_S = 0.2  # redraws at most five times a second...
PLOT_LAG_S = 0.25  # ...and trail the status by at most this (plus one render)
PLOT_SHARE = 0.08  # drawing may take at most this share of the wall time
MAX_EPOCHS = 10**12  # the epochs box's upper bound: beyond it, surely a typo
MESSAGES_SHOWN = 4
WIDE = {"description_width": "initial"}  # labels in full, not cut to a fixed width
MAX_LINES_PER_TICK = 20  # text mode: beyond this, a tick prints a summary line


class TrainingPanel:
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
        _check_epochs(epochs)  # before a Trainer is made: it would take over the variables
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
        self._worker: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
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
        self._last_plot = (0.0, -1, None)  # time, what was drawn, view settings drawn
        self._render_s = 0.0  # the last renders' wall time, smoothed
        self._fault_texts: set[str] = set()  # shown while their fault stands, then dropped
        self._lr_echo = False  # the panel itself is moving the slider: no message
        self._printed = 0
        self._printed_error: BaseException | None = None
        self._error_epoch = 0  # where the error in self.error stopped the run
        self._handles: list = []  # display handles: their snapshot is updated after a run
        self.error: BaseException | None = None
        self._superseded: str | None = None  # "superseded by the panel in cell [7]"
        self._remaking = False  # the device menu is replacing this panel's own trainer
        self._interrupted = False  # the kernel's Interrupt stopped this run
        self._build(epochs)
        ownership.watch(self.trainer, self._on_superseded)
        self.refresh(force_plot=True)

    # -- widgets ---------------------------------------------------------------------

    def _build(self, epochs: int) -> None:
        t = self.trainer
        button = w.Button
        self.train_button = button(description="Train", icon="play", button_style="success")
        self.pause_button = button(description="Pause", icon="pause")
        self.step_button = button(description="Step", icon="step-forward", tooltip="one epoch")
        self.stop_button = button(description="Stop", icon="stop", button_style="danger")
        self.reset_button = button(description="Reset", icon="undo", tooltip="first weights")
        # Not a BoundedIntText: that one clamps out-of-range input silently in the page.
        self.epochs = w.IntText(value=epochs, description="epochs", style=WIDE)
        lr = t.learning_rate
        low, high = _lr_range(lr or 1e-3)
        self.learning_rate = w.FloatLogSlider(
            value=lr or 1e-3, base=10, min=low, max=high, step=0.1, description="learning rate",
            readout_format=".2g", disabled=lr is None, continuous_update=False, style=WIDE,
        )  # fmt: skip
        opt = _optimizer_name(t.optimizer)
        self.optimizer = w.Dropdown(
            options=list(OPTIMIZERS) if opt in OPTIMIZERS else [*OPTIMIZERS, opt],
            value=opt, description="optimizer", disabled=t.optimizer is None, style=WIDE,
        )  # fmt: skip
        sizes = BATCH_SIZES if t.batch_size in BATCH_SIZES else [*BATCH_SIZES, t.batch_size]
        # A Dropdown cannot hold None as a choice: 0 stands for "all" (the whole data).
        self.batch_size = w.Dropdown(
            options=[("all", 0) if s is None else (str(s), s) for s in sizes],
            value=t.batch_size or 0, description="batch size", style=WIDE,
        )  # fmt: skip
        # Under a tf.distribute strategy, a line naming it replaces the device choice.
        devices = ["auto", *Trainer.available_devices()] if t.strategy is None else [t.device]
        self.device = w.Dropdown(options=devices, value=t.device, description="device", style=WIDE)
        self.strategy = w.HTML()
        if t.strategy is not None:
            self.device.layout.display = "none"
        self.log_scale = w.Checkbox(value=False, description="log scale", indent=False)
        self.smoothing = w.FloatSlider(
            value=0.0, min=0.0, max=0.99, step=0.01, description="smoothing",
            continuous_update=False,
        )  # fmt: skip
        self.plot = w.Image(format="png", layout=w.Layout(width="480px"))
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="320px"))
        self.status = w.HTML()
        self.params = w.HTML()
        self.messages = w.HTML()
        self.train_button.on_click(lambda _: self.train())
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.step_button.on_click(lambda _: self.step())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        self.learning_rate.observe(self._on_lr, "value")
        self.epochs.observe(self._on_epochs, "value")
        self.optimizer.observe(lambda ch: self._setting("optimizer", ch.new), "value")
        self.batch_size.observe(lambda ch: self._setting("batch_size", ch.new or None), "value")
        self.device.observe(self._on_device, "value")
        for box in (self.log_scale, self.smoothing):
            box.observe(lambda _: self.refresh(force_plot=True), "value")
        buttons = [self.train_button, self.pause_button, self.step_button, self.stop_button]
        self.widget = w.VBox(
            [
                w.HBox([*buttons, self.reset_button]),
                w.HBox([self.epochs, self.learning_rate]),
                w.HBox([self.optimizer, self.batch_size, self.device, self.strategy]),
                w.HBox([self.progress, self.status]),
                w.HBox([self.plot, w.VBox([self.log_scale, self.smoothing, self.params])]),
                self.messages,
            ]
        )
        # Stable names for the page's elements, for styling and for browser tests.
        self.widget.add_class("tapemagic-panel")
        for name in ("epochs", "status", "plot", "progress", "params", "messages"):
            getattr(self, name).add_class(f"tapemagic-{name}")

    def _repr_mimebundle_(self, **kwargs):
        if self.view == "text":
            return {"text/plain": repr(self)}
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        # For viewers without a live kernel (nbconvert, nbviewer, GitHub): the plot as a
        # PNG and a one-line summary next to the widget view, which live frontends prefer.
        data["text/plain"] = self.summary()
        png = bytes(self.plot.value)
        if png:
            data["image/png"] = base64.b64encode(png).decode("ascii")
        return data

    def _ipython_display_(self) -> None:
        """Show the panel through a display handle, so that the static snapshot saved with
        the notebook can be brought up to date when a run ends."""
        from IPython.display import display

        if self.view == "text":
            display({"text/plain": repr(self)}, raw=True)
            return
        handle = display(self._repr_mimebundle_(), raw=True, display_id=True)
        if handle is not None:
            self._handles.append(handle)

    def _publish_snapshot(self) -> None:
        """Update every shown copy's PNG and summary (the widget view stays as it is)."""
        if not self._handles:
            return
        bundle = self._repr_mimebundle_()
        for handle in list(self._handles):
            try:
                handle.update(bundle, raw=True)
            except Exception:  # a closed kernel channel must not break training or a reset
                self._handles.remove(handle)

    def summary(self) -> str:
        """One line: what the status shows (for text viewers and saved notebooks)."""
        return f"TrainingPanel: {self._status_text}"

    def __repr__(self) -> str:
        return f"TrainingPanel({self.trainer!r})"

    # -- actions (what the buttons do; callable from code too) -----------------------

    def train(self, epochs: int | None = None) -> None:
        """Start `epochs` (default: the epochs box) more epochs in a worker thread."""
        n = epochs if epochs is not None else self.epochs.value
        _check_epochs(n)
        n = int(n)
        if self._superseded:
            raise RuntimeError(
                f"this panel was {self._superseded}, made on the same variables: train there "
                "(or make a new panel)"
            )
        with self._lock:
            if self.trainer.running or self._closed:
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
            self._worker = threading.Thread(
                target=self._work,
                args=(n, self._run_done, release),
                name="tapemagic-train",
                daemon=True,
            )
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
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
        ticker = self._ticker
        if ticker is not None:
            ticker.join(timeout)
        return True

    def close(self) -> None:
        """Stop training, end both threads and close the widgets."""
        self._closed = True
        self.stop()
        self.wait(timeout=30)
        self._wake.set()
        for child in _all_widgets(self.widget):
            child.close()

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
            self._ticker = threading.Thread(target=self._tick, name="tapemagic-view", daemon=True)
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

    # -- settings ----------------------------------------------------------------------

    def _on_lr(self, change) -> None:
        if self._lr_echo:  # the panel following the trainer's rate: nothing to apply
            return
        try:
            self.trainer.learning_rate = change.new  # applies mid-run, from the next call
        except (ValueError, TypeError) as err:
            self._say(str(err))
            return
        when = "from the next step" if self.trainer.running else "for the next run"
        self._say(f"learning rate set to {change.new:.3g} {when}")
        self.refresh()

    def _on_epochs(self, change) -> None:
        """Refuse an out-of-range epochs box with a message, keeping the last good value."""
        try:
            _check_epochs(change.new)
        except ValueError as err:
            self._say(f"{err}; kept {change.old:,}")
            self.epochs.unobserve(self._on_epochs, "value")
            self.epochs.value = change.old
            self.epochs.observe(self._on_epochs, "value")

    def _setting(self, name: str, value: Any) -> None:
        if self.trainer.running:
            self._pending[name] = value
            self._say(f"{name.replace('_', ' ')} {value!r} applies when this run ends")
        else:
            self._pending[name] = value
            self._apply_pending()
        self.refresh()

    def _apply_pending(self) -> None:
        for name in ("optimizer", "batch_size"):
            if name not in self._pending:
                continue
            value = self._pending.pop(name)
            try:
                setattr(self.trainer, name, value)
                if name == "optimizer" and self.learning_rate.value:
                    self.trainer.learning_rate = self.learning_rate.value
            except (ValueError, TypeError, RuntimeError) as err:
                self._say(str(err))

    def _on_device(self, change) -> None:
        t = self.trainer
        wanted = change.new
        if wanted == t.device or (wanted == "auto" and not self._kwargs):
            return
        if t.running or len(t.history) or not self._kwargs:
            reason = (
                "this panel wraps a Trainer you made: make it with device=..."
                if not self._kwargs
                else "the device is chosen before training starts: press Reset first"
            )
            self._say(reason)
            self.device.unobserve(self._on_device, "value")
            self.device.value = t.device
            self.device.observe(self._on_device, "value")
            return
        self._remaking = True  # the new trainer supersedes this panel's old one, not it
        try:
            self.trainer = Trainer(**{**self._kwargs, "device": wanted})
            ownership.watch(self.trainer, self._on_superseded)
        except (ValueError, RuntimeError) as err:
            self._say(str(err))
        finally:
            self._remaking = False
        self.refresh(force_plot=True)

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
        self.messages.value = _messages_html(self._shown_messages(), self.error, self._error_epoch)

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
        folded: list[list] = []
        for line in lines:
            if folded and folded[-1][0] == line:
                folded[-1][1] += 1
            else:
                folded.append([line, 1])
        return [m if k == 1 else f"{m} (×{k})" for m, k in folded[-MESSAGES_SHOWN:]]

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
        self.params.value = _params_html(t.param_values())
        self.messages.value = _messages_html(self._shown_messages(), self.error, self._error_epoch)
        self._maybe_plot(n, force_plot, running)
        if self.view == "text":
            self._print_new_epochs(n)
        if self._superseded:
            self._controls_off()

    def _follow_learning_rate(self) -> None:
        """The slider shows the trainer's rate, its range widened to hold it (a rate set
        from code, or a trainer made with one outside the default range)."""
        lr = self.trainer.learning_rate
        if lr is None or not lr > 0 or math.isclose(self.learning_rate.value, lr, rel_tol=1e-6):
            return
        low, high = _lr_range(lr)
        self._lr_echo = True
        try:
            s = self.learning_rate
            s.min, s.max = min(s.min, low), max(s.max, high)
            s.value = lr
        finally:
            self._lr_echo = False

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
        rate = self._rate
        per_epoch = t.samples_per_epoch
        this_run = f" ({done:,}/{total:,} this run)" if total else ""
        if running and holding:  # holding: the counter cannot move, so N stays N
            head = f"paused at epoch {n:,}{this_run}"
        elif running and self._hold:  # asked to hold: it does after the current call
            head = f"{'stepping' if self._stepping else 'pausing'} · epoch {n:,}{this_run}"
        elif not running and self._fault_left:
            head = (
                f"paused by a NaN/Inf at epoch {n:,}{this_run} (lower the learning rate, "
                "then Resume)"
            )
        else:
            head = f"{'running' if running else 'stopped'} · epoch {n:,}{this_run}"
        if t.batch and t.samples_per_epoch and t.batch_size:  # inside an epoch (or stopped in)
            steps = math.ceil(t.samples_per_epoch / t.batch_size)
            head += f" · batch {t.batch:,}/{steps:,}"
        parts = [head]
        if start is not None:
            parts.append(f"elapsed {_duration(elapsed)}")
        if running and rate > 0 and not (holding or self._hold):
            parts.append(f"ETA {_duration(max(total - done, 0) / rate)}")
        if rate > 0:
            parts.append(f"{rate:,.1f} epochs/s")
            if per_epoch:
                parts.append(f"{rate * per_epoch:,.0f} samples/s")
        if t.learning_rate is not None:
            parts.append(f"lr {t.learning_rate:.3g}")
        last = t.history.last
        if last is not None:
            parts.append(f"loss {last.loss:.6g}")
            if last.val_loss is not None:
                parts.append(f"val_loss {last.val_loss:.6g}")
            parts += [f"{k} {v:.4g}" for k, v in last.metrics.items()]
        self._status_text = " · ".join(parts)
        self.status.value = html.escape(self._status_text)

    def _progress_x(self, n: int, running: bool) -> float | None:
        """How far into epoch n+1 a run is, in epochs, when it is inside an epoch."""
        t = self.trainer
        if not (t.batch and t.samples_per_epoch and t.batch_size):
            return None
        steps = math.ceil(t.samples_per_epoch / t.batch_size)
        return n + min(t.batch / steps, 1.0)

    def _maybe_plot(self, n: int, force: bool, running: bool = False) -> None:
        settings = (self.log_scale.value, self.smoothing.value)
        progress = self._progress_x(n, running)
        drawn = (n, progress)
        last_time, last_drawn, last_settings = self._last_plot
        now = time.monotonic()
        # Redraw often enough to trail the status by at most PLOT_LAG_S, and seldom enough
        # that drawing stays a small share of the wall time when renders get slow.
        interval = min(PLOT_LAG_S, max(PLOT_EVERY_S, self._render_s / PLOT_SHARE))
        due = now - last_time >= interval - 0.01 and drawn != last_drawn
        if not (force or due or settings != last_settings):
            return
        h = self.trainer.history
        started = time.monotonic()
        try:
            png = self._plot.render(
                h["loss"], h["val_loss"], log_scale=settings[0], smoothing=settings[1],
                progress=progress, live=running,
            )  # fmt: skip
        except Exception as err:  # a picture must never stop training or the view
            self._last_plot = (now, drawn, settings)
            self._say(f"the plot could not be drawn: {type(err).__name__}: {err}")
            return
        took = time.monotonic() - started
        self._render_s = took if not self._render_s else 0.7 * self._render_s + 0.3 * took
        self.plot.value = png
        self._last_plot = (now, drawn, settings)

    def _print_new_epochs(self, n: int) -> None:
        if n < self._printed:
            self._printed = 0
        new = range(self._printed, n)
        if len(new) > MAX_LINES_PER_TICK:
            print(f"... {len(new) - 1} epochs ...")
            new = range(n - 1, n)
        for i in new:
            print(_epoch_line(self.trainer.history[i]))
        self._printed = n
        # Where no widget shows, an error that stopped a run is printed, once.
        if self.error is not None and self.error is not self._printed_error:
            self._printed_error = self.error
            print(f"error at epoch {self._error_epoch}: {_error_line(self.error)}")


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


def _check_epochs(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_EPOCHS:
        raise ValueError(f"epochs must be a whole number from 1 to {MAX_EPOCHS:,}, not {n!r}")


def _lr_range(lr: float) -> tuple[int, int]:
    """The slider's exponents: the default 1e-6..10, widened to hold `lr` with room around."""
    e = math.log10(lr)
    return min(-6, math.floor(e) - 2), max(1, math.ceil(e) + 1)


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


def _optimizer_name(opt: Any) -> str:
    if opt is None:
        return "own step"
    name = type(opt).__name__.lower()
    if name == "sgd" and float(getattr(opt, "momentum", 0.0) or 0.0) > 0:
        return "momentum"
    return name


def _all_widgets(root) -> list:
    out, todo = [], [root]
    while todo:
        item = todo.pop()
        out.append(item)
        todo.extend(getattr(item, "children", ()))
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _params_html(values: dict[str, float]) -> str:
    if not values:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='text-align:right'><code>{v:.6g}</code></td></tr>"
        for k, v in values.items()
    )
    return f"<table style='font-size:90%'>{rows}</table>"


def _messages_html(lines: list[str], error: BaseException | None, epoch: int = 0) -> str:
    items = [f"<div>{html.escape(_one_line(line))}</div>" for line in lines]
    if error is not None:
        text = html.escape(_error_line(error))
        items.append(f"<div style='color:#d62728'><b>error</b> at epoch {epoch}: {text}</div>")
    return "".join(items)


def _error_line(error: BaseException) -> str:
    """The error's cause in one line: its type and the first line of its message (which
    Trainer.run makes the user's own), or the cause dug out of TensorFlow's trace."""
    return _one_line(f"{type(error).__name__}: {error}")


_BOILERPLATE = re.compile(
    r"^(File |Detected at node|Graph execution error|\[\[|in user code:|\[Op:|"
    r"Arguments received|• )"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^[\w.]*(?:Error|Exception|Exit|Interrupt): (.+)$")
# Keras wraps a layer's error: its first line only names the call; the cause comes next.
_KERAS_WRAPPER = "Exception encountered when calling"


def _one_line(text: str) -> str:
    """One line of a message. A message whose first line is plain is that line (a Keras
    layer's wrapper line replaced by the cause it wraps); a tf.function error carries
    TensorFlow's traceback ("in user code: File ...", "Detected at node ..."): keep what
    comes before it and the raised message inside it."""
    lines = [ln for ln in (_ANSI.sub("", x).strip() for x in text.splitlines()) if ln]
    if not lines:
        return ""
    first = lines[0]
    head = first
    for marker in ("in user code:", "Graph execution error:"):
        head = head.split(marker)[0]
    if head == first and not _BOILERPLATE.match(first):
        if _KERAS_WRAPPER in first and len(lines) > 1:
            cause = _cause(lines[1:])
            return first.split(_KERAS_WRAPPER)[0] + cause if cause else first
        return first
    head = head.rstrip(": ")
    if head.isidentifier():  # just the exception's name: the message names it again
        head = ""
    elif head.endswith(("Error", "Exception")):  # "...at epoch 0: RuntimeError"
        head = head.rsplit(":", 1)[0]
    message = _cause(lines[1:]) or lines[-1]
    return f"{head}: {message}" if head else message


def _cause(lines: list[str]) -> str:
    """In a traceback's lines: the first raised "SomeError: message" (through a Keras
    wrapper), else the last line that is not TensorFlow's own."""
    for i, line in enumerate(lines):
        raised = _RAISED.match(line)
        if raised is None:
            continue
        if raised.group(1).startswith(_KERAS_WRAPPER):
            rest = [ln for ln in lines[i + 1 :] if not _BOILERPLATE.match(ln)]
            if rest:
                return line[: line.index(_KERAS_WRAPPER)] + rest[0]
        return line
    useful = [re.sub(r"\s*\[\[.*$", "", ln) for ln in lines if not _BOILERPLATE.match(ln)]
    return useful[-1] if useful else ""


def _epoch_line(record) -> str:
    parts = [f"epoch {record.epoch}", f"loss {record.loss:.7g}"]  # 0-based, as the seed
    if record.val_loss is not None:
        parts.append(f"val_loss {record.val_loss:.7g}")
    parts += [f"{k} {v:.5g}" for k, v in record.metrics.items()]
    if record.params:
        parts += [f"{k} = {v:.7g}" for k, v in record.params.items()]
    return "  ".join(parts)
