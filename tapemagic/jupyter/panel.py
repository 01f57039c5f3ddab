"""`TrainingPanel`: a `Trainer` bound to core ipywidgets, with a live loss plot.

Training runs in a worker thread, so the kernel's main thread stays free to deliver
button clicks (a kernel handles one message at a time there); buttons only set the
trainer's thread-safe controls. A second thread refreshes the view at most ten times a second
whatever the epoch rate: progress, parameters, messages, and the plot, a PNG in an
`ipywidgets.Image` replaced in place (no `clear_output`, no flicker, no frontend
extension). Where no widget can show (terminal IPython, scripts) it prints one line
per epoch instead.
"""

from __future__ import annotations

import html
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
        if view not in ("auto", "widget", "text"):
            raise ValueError(f"view must be 'auto', 'widget' or 'text', not {view!r}")
        if trainer is None:  # told to the panel it supersedes, if any
            with ownership.labelled(_made_where("the panel")):
                trainer = Trainer(**kwargs)
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
        self._fault_left = 0  # epochs a NaN/Inf fault left undone: Resume runs them
        self._run_start: tuple[float, int] | None = None
        self._rate = 0.0  # epochs per second, smoothed
        self._last_plot = (0.0, -1, None)  # time, history length, view settings drawn
        self._plot_interval = REFRESH_S
        self._printed = 0
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
        self.epochs = w.BoundedIntText(
            value=epochs, min=1, max=10**8, description="epochs", style=WIDE
        )
        lr = t.learning_rate
        self.learning_rate = w.FloatLogSlider(
            value=lr or 1e-3, base=10, min=-6, max=1, step=0.1, description="learning rate",
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
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"TrainingPanel({self.trainer!r})"

    # -- actions (what the buttons do; callable from code too) -----------------------

    def train(self, epochs: int | None = None) -> None:
        """Start `epochs` (default: the epochs box) more epochs in a worker thread."""
        n = epochs if epochs is not None else self.epochs.value
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"epochs must be a positive whole number, not {n!r}")
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
            self._hold = False
            self._fault_left = 0
            self._run_start = (time.monotonic(), self.trainer.epoch)
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
        self.refresh()

    def step(self) -> None:
        """One epoch: during a run, hold after one more; when idle, train one."""
        if self.trainer.running:
            self.trainer.step()
            self._hold = True
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
        self.refresh(force_plot=True)

    def run(self, epochs: int | None = None) -> Any:
        """Train and block until done (for scripts); returns the history."""
        self.train(epochs)
        try:
            self.wait()
        except KeyboardInterrupt:  # Ctrl-C or Interrupt reaches this (the main) thread
            self._on_interrupt()
            while not self.wait(timeout=0.05):  # a stop asked before the run began: again
                self.trainer.request_stop()
            raise KeyboardInterrupt(f"training stopped at epoch {self.trainer.epoch}") from None
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
            self.error = err
        finally:
            release()
            if self._interrupted:
                self._say(f"interrupted at epoch {t.epoch}")
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
            with self._lock:  # a run started meanwhile keeps this thread going
                if (done and self._run_done.is_set()) or self._closed:
                    self._ticker = None
                    return

    # -- settings ----------------------------------------------------------------------

    def _on_lr(self, change) -> None:
        try:
            self.trainer.learning_rate = change.new  # applies mid-run, from the next call
        except (ValueError, TypeError) as err:
            self._say(str(err))

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
        self._superseded = f"superseded by {event.label or _made_where('a Trainer made')}"
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
        self.messages.value = _messages_html(list(self.trainer.messages)[-4:], self.error)

    # -- the view ----------------------------------------------------------------------

    def refresh(self, force_plot: bool = False) -> None:
        """Bring every widget up to date; the plot only when due (or forced)."""
        t = self.trainer
        running = t.running
        n = len(t.history)
        faulted = not running and self._fault_left > 0
        paused = (running and (t.paused or self._hold)) or faulted
        self.train_button.disabled = running
        self.stop_button.disabled = not (running or faulted)
        self.pause_button.disabled = not (running or faulted)
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        for box in (self.optimizer, self.batch_size, self.device):
            box.disabled = running or (box is self.optimizer and t.optimizer is None)
        self._update_progress(n, running, paused)
        self.strategy.value = html.escape(t.distribution() or "")
        self.params.value = _params_html(t.param_values())
        self.messages.value = _messages_html(list(t.messages)[-4:], self.error)
        self._maybe_plot(n, force_plot)
        if self.view == "text":
            self._print_new_epochs(n)
        if self._superseded:
            self._controls_off()

    def _update_progress(self, n: int, running: bool, paused: bool) -> None:
        t = self.trainer
        start_time, start_epoch = self._run_start or (time.monotonic(), n)
        done, total = n - start_epoch, max(t.target_epoch - start_epoch, 0)
        elapsed = time.monotonic() - start_time if self._run_start else 0.0
        if running and elapsed > 0 and done > 0:
            self._rate = done / elapsed
        self.progress.max = max(total, 1)
        self.progress.value = min(max(done, 0), self.progress.max)
        rate = self._rate
        per_epoch = t.samples_per_epoch
        parts = [f"epoch {n}" + (f" ({done}/{total} this run)" if total else "")]
        if self._run_start:
            parts.append(f"elapsed {_duration(elapsed)}")
        if running and rate > 0 and not paused:
            parts.append(f"ETA {_duration(max(total - done, 0) / rate)}")
        if rate > 0:
            parts.append(f"{rate:,.1f} epochs/s")
            if per_epoch:
                parts.append(f"{rate * per_epoch:,.0f} samples/s")
        state = "paused" if paused else "running" if running else "stopped"
        if not self.trainer.running and self._fault_left:
            state = "paused by a NaN/Inf (lower the learning rate, then Resume)"
        last = t.history.last
        if last is not None:
            parts.append(f"loss {last.loss:.6g}")
            if last.val_loss is not None:
                parts.append(f"val_loss {last.val_loss:.6g}")
            parts += [f"{k} {v:.4g}" for k, v in last.metrics.items()]
        self.status.value = html.escape(f"{state} · {' · '.join(parts)}")

    def _maybe_plot(self, n: int, force: bool) -> None:
        settings = (self.log_scale.value, self.smoothing.value)
        last_time, last_n, last_settings = self._last_plot
        now = time.monotonic()
        due = now - last_time >= self._plot_interval and n != last_n
        if not (force or due or settings != last_settings):
            return
        h = self.trainer.history
        started = time.monotonic()
        try:
            png = self._plot.render(
                h["loss"], h["val_loss"], log_scale=settings[0], smoothing=settings[1]
            )
        except Exception as err:  # a picture must never stop training or the view
            self._last_plot = (now, n, settings)
            self._say(f"the plot could not be drawn: {type(err).__name__}: {err}")
            return
        # Drawing must not slow training: keep it under about a tenth of wall time.
        self._plot_interval = max(REFRESH_S, 10 * (time.monotonic() - started))
        self.plot.value = png
        self._last_plot = (now, n, settings)

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


def _made_where(what: str) -> str:
    """'the panel in cell [7]': the cell running now, as its prompt numbers it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return f"{what} later"
    count = getattr(get_ipython(), "execution_count", None)
    # IPython counts a cell before running it: the running cell's number is one less.
    return f"{what} in cell [{count - 1}]" if count else f"{what} later"


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


def _messages_html(lines: list[str], error: BaseException | None) -> str:
    items = [f"<div>{html.escape(_one_line(line))}</div>" for line in lines]
    if error is not None:
        text = _one_line(f"{type(error).__name__}: {error}")
        items.append(f"<div style='color:#d62728'><b>error</b>: {html.escape(text)}</div>")
    return "".join(items)


_BOILERPLATE = re.compile(
    r"^(File |Detected at node|Graph execution error|\[\[|in user code:|\[Op:)"
)


def _one_line(text: str) -> str:
    """A tf.function error carries TensorFlow's traceback ("in user code: File ...",
    "Detected at node ..."): keep what comes before it and the user's own message."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return text.strip()
    head = lines[0]
    for marker in ("in user code:", "Graph execution error:"):
        head = head.split(marker)[0]
    head = head.rstrip(": ")
    if head.isidentifier():  # just the exception's name: the message names it again
        head = ""
    elif head.endswith(("Error", "Exception")):  # "...at epoch 0: RuntimeError"
        head = head.rsplit(":", 1)[0]
    useful = [re.sub(r"\s*\[\[.*$", "", ln) for ln in lines[1:] if not _BOILERPLATE.match(ln)]
    message = useful[-1] if useful else lines[-1]
    return f"{head}: {message}" if head else message


def _epoch_line(record) -> str:
    parts = [f"epoch {record.epoch}", f"loss {record.loss:.7g}"]  # 0-based, as the seed
    if record.val_loss is not None:
        parts.append(f"val_loss {record.val_loss:.7g}")
    parts += [f"{k} {v:.5g}" for k, v in record.metrics.items()]
    if record.params:
        parts += [f"{k} = {v:.7g}" for k, v in record.params.items()]
    return "  ".join(parts)
