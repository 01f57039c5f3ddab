"""The record of a run told from outside: Keras `fit` callbacks or a hand-written loop.

`LiveLog` keeps what a live view shows, written by the training thread and read by a view
thread: per-epoch values by name (losses, validation losses, metrics, learning rate), the
running loss within the current epoch batch by batch, where the run stands and how fast it
goes. `LiveControls` carries Stop, Pause and Step from a view's buttons to the loop, which
reads them between batches. `LiveCallback` feeds both from Keras' callback hooks; it knows
Keras only, so the view that shows it lives elsewhere (tapemagic.jupyter.live).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras

POLL_EVERY_S = 0.1  # the loop asks its `poll` (a view's message pump) at most this often
MAX_BATCH_POINTS = 20_000  # batch-level points kept; beyond, every other one is dropped


class EpochRow(NamedTuple):
    """One finished epoch: its 0-based number and every value logged for it by name."""

    epoch: int
    values: Mapping[str, float]


class LiveState(NamedTuple):
    """Where a run stands, read at once for one refresh of a view."""

    epochs_done: int  # epochs logged
    epochs_total: int | None  # epochs the run is to do, when known
    batch: int  # batches done in the current epoch
    steps: int | None  # batches per epoch, when known
    running: bool
    paused: bool  # holding between batches
    pause_asked: bool  # Pause (or Step) pressed: holds at the next batch or epoch
    stop_asked: bool
    elapsed: float  # seconds of running time (pauses left out)
    epochs_per_s: float
    batches_per_s: float
    samples_per_s: float | None  # when the batch size is known
    eta: float | None  # seconds left, when the total is known
    learning_rate: float | None
    last: EpochRow | None


class BatchLosses(NamedTuple):
    """The running loss within epochs, batch by batch; x in epochs (2.5: halfway into
    the third)."""

    x: list[float]
    loss: list[float]


def is_loss(name: str) -> bool:
    """A loss line (train or validation): 'loss', 'val_loss', 'out1_loss', 'val_out1_loss'."""
    return name == "loss" or name.endswith("_loss")


class LiveControls:
    """Stop, Pause, Resume and Step, set from any thread and read by the loop."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.stop_asked = False
        self.pause_asked = False
        self.holding = False  # the loop is blocked in a pause right now
        self.hold_since = 0.0  # when the current hold began (time.monotonic())
        self._step = False  # Step: run to the end of the next epoch, then hold

    def stop(self) -> None:
        with self._cv:
            self.stop_asked = True
            self._cv.notify_all()

    def toggle_pause(self) -> None:
        with self._cv:
            self.pause_asked = not self.pause_asked
            self._step = False
            self._cv.notify_all()

    def step(self) -> None:
        """Let one more epoch run, then hold again (or hold after this one when running)."""
        with self._cv:
            self.pause_asked = True
            self._step = True
            self._cv.notify_all()

    def epoch_ended(self) -> None:
        """A Step's epoch is done: the next batch holds."""
        with self._cv:
            self._step = False

    def hold(self, poll: Callable[[], Any] | None = None) -> float:
        """Block while paused (not stepping, not stopping); calls `poll` every POLL_EVERY_S
        so that the button that resumes can be heard. Returns the seconds held."""
        start = time.monotonic()
        with self._cv:
            if not self.pause_asked or self._step or self.stop_asked:
                return 0.0
            self.holding, self.hold_since = True, start
        try:
            while True:
                with self._cv:
                    if not self.pause_asked or self._step or self.stop_asked:
                        break
                    if poll is None:
                        self._cv.wait(POLL_EVERY_S)
                        continue
                poll()
                with self._cv:  # a click handled by poll wakes nothing: check, then wait
                    if self.pause_asked and not self._step and not self.stop_asked:
                        self._cv.wait(POLL_EVERY_S)
        finally:
            with self._cv:
                self.holding = False
        return time.monotonic() - start


class LiveLog:
    """Per-epoch values by name and batch-level running losses; thread-safe."""

    def __init__(self, batch_size: int | None = None) -> None:
        self._lock = threading.Lock()
        self.rows: list[EpochRow] = []
        self.batch_x: list[float] = []  # in epochs: 2.5 is halfway into the third epoch
        self.batch_loss: list[float] = []
        self.batch_size = batch_size
        self.epochs_total: int | None = None
        self.steps: int | None = None
        self.batch = 0
        self.learning_rate: float | None = None
        self.running = False
        self.messages: list[str] = []
        self.controls = LiveControls()
        self._run_start = 0  # epochs logged when this run began
        self._batches_run = 0  # batches done this run
        self.last_epoch_batches = 0  # batches the last logged epoch had run
        self._clock_start: float | None = None
        self._held = 0.0  # seconds paused this run
        self._stopped_at: float | None = None

    # -- written by the training thread ------------------------------------------------

    def begin(self, epochs: int | None = None, steps: int | None = None) -> None:
        with self._lock:
            self.epochs_total = epochs
            self.steps = steps
            self.batch = 0
            self.running = True
            self._run_start = len(self.rows)
            self._batches_run = 0
            self._clock_start = time.monotonic()
            self._held = 0.0
            self._stopped_at = None
        self.controls = LiveControls()

    def batch_end(self, batch: int, loss: float | None) -> None:
        """`batch` is 0-based within the epoch; `loss` the epoch's running mean so far."""
        with self._lock:
            self.batch = batch + 1
            self._batches_run += 1
            if loss is None or not self.steps or self.steps < 2:  # one batch: the epoch's dot
                return
            self.batch_x.append(len(self.rows) + min(self.batch / self.steps, 1.0))
            self.batch_loss.append(float(loss))
            if len(self.batch_x) > MAX_BATCH_POINTS:
                del self.batch_x[::2], self.batch_loss[::2]

    def epoch_end(self, values: Mapping[str, Any], epoch: int | None = None) -> EpochRow:
        """Log an epoch's values (numbers by name); `epoch` defaults to the one after
        the last logged."""
        clean = {k: _number(k, v) for k, v in values.items() if v is not None}
        with self._lock:
            after = self.rows[-1].epoch + 1 if self.rows else 0
            number = after if epoch is None else int(epoch)
            row = EpochRow(number, clean)
            self.rows.append(row)
            self.last_epoch_batches, self.batch = self.batch, 0
        self.controls.epoch_ended()
        return row

    @property
    def batch_points(self) -> int:
        """How many batch-level points are kept."""
        return len(self.batch_x)

    @property
    def batches_run(self) -> int:
        """Batches done this run, all epochs together."""
        with self._lock:
            return self._batches_run

    def held(self, seconds: float) -> None:
        with self._lock:
            self._held += seconds

    def end(self) -> None:
        with self._lock:
            self.running = False
            self._stopped_at = time.monotonic()

    def say(self, text: str) -> None:
        with self._lock:
            self.messages.append(text)

    # -- read by a view -------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every value name logged, in first-logged order."""
        with self._lock:
            rows = list(self.rows)
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row.values))
        return list(seen)

    def column(self, name: str) -> list[float | None]:
        """The value `name` took at each epoch (None where it was not logged)."""
        with self._lock:
            return [row.values.get(name) for row in self.rows]

    def history(self) -> dict[str, list[float | None]]:
        """Every column, Keras History style: {'loss': [...], 'val_loss': [...], ...}."""
        return {name: self.column(name) for name in self.names()}

    def batches(self) -> BatchLosses:
        with self._lock:
            return BatchLosses(list(self.batch_x), list(self.batch_loss))

    def state(self) -> LiveState:
        c = self.controls
        with self._lock:
            n = len(self.rows)
            done = n - self._run_start
            now = self._stopped_at if self._stopped_at is not None else time.monotonic()
            held = self._held
            if c.holding and self._stopped_at is None:  # the hold so far is not running time
                held += now - c.hold_since
            elapsed = max(now - self._clock_start - held, 0.0) if self._clock_start else 0.0
            steps, total, batches = self.steps, self.epochs_total, self._batches_run
            last = self.rows[-1] if self.rows else None
            batch, running = self.batch, self.running
        eps = done / elapsed if elapsed > 0 and done else 0.0
        bps = batches / elapsed if elapsed > 0 and batches else 0.0
        sps = bps * self.batch_size if self.batch_size and bps else None
        eta = None
        if running and total is not None:
            left_epochs = max(total - done - (batch / steps if steps else 0.0), 0.0)
            if steps and bps:
                eta = left_epochs * steps / bps
            elif eps:
                eta = left_epochs / eps
        return LiveState(
            n, total, batch, steps, running, c.holding, c.pause_asked, c.stop_asked,
            elapsed, eps, bps, sps, eta, self.learning_rate, last,
        )  # fmt: skip


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}={value!r} is not a number: log numbers (a float, or a scalar tensor)"
        ) from None


def current_lr(model: Any) -> float | None:
    """The optimizer's learning rate now (a schedule's current value), if it has one."""
    opt = getattr(model, "optimizer", None)
    try:
        lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
    except Exception:  # no optimizer yet, or one without a learning rate
        return None
    return lr if math.isfinite(lr) else None


class LiveCallback(keras.callbacks.Callback):
    """Feeds a `LiveLog` from `fit`'s hooks and applies its controls between batches:
    Stop sets `model.stop_training`, Pause holds the batch loop. `poll` (called on the
    training thread at most every POLL_EVERY_S, and while paused) is where a view lets
    its button clicks in."""

    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__()
        self.log = LiveLog(batch_size)
        self.poll: Callable[[], Any] | None = None
        self._next_poll = 0.0

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        params = self.params or {}
        self.log.begin(params.get("epochs"), params.get("steps"))
        self.log.learning_rate = current_lr(self.model)
        self._next_poll = 0.0

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        self.log.batch_end(batch, None if loss is None else float(loss))
        self._between_batches()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.log.learning_rate = current_lr(self.model)
        self.log.epoch_end(dict(logs or {}), epoch)
        self._between_batches()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self.log.end()

    def _between_batches(self) -> None:
        now = time.monotonic()
        if self.poll is not None and now >= self._next_poll:
            self._next_poll = now + POLL_EVERY_S
            self.poll()
        c = self.log.controls
        if c.pause_asked and not c.stop_asked:
            self.log.held(c.hold(self.poll))
        if c.stop_asked:
            self.model.stop_training = True
