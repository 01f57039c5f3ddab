"""The live view for training code people already have: `model.fit` and their own loops.

- `model.fit(..., callbacks=[LivePanel()])`: the loss plot (validation, one line per loss of
  a multi-output model, the running loss batch by batch), progress, ETA, speed, learning
  rate and messages, with Stop (fit ends after the current batch), Pause/Resume and Step
  (one epoch) buttons that work while the cell that called `fit` is still running.
- `with live() as board:` around a hand-written loop: `board.log(epoch=..., loss=...,
  val_loss=..., **metrics)` draws the same view; `board.stop_requested` is Stop, and
  `log()` (or `board.wait_if_paused()`) holds while Pause is pressed.

The training stays in the cell's own thread; between batches (at most every 0.1 s, and
while paused) it lets the kernel's pending widget messages in (comm_pump), which is how a
click reaches a busy kernel. The kernel's Interrupt stops `fit` after the current batch
(and a second one at once) and raises KeyboardInterrupt once fit has ended cleanly; in
your own loop it is Python's KeyboardInterrupt, and the view says where it stopped.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tapemagic.jupyter import comm_pump, interrupt
from tapemagic.jupyter.live_view import LiveView, in_kernel
from tapemagic.training.livelog import POLL_EVERY_S, LiveCallback, LiveLog

PRINT_EVERY_S = 0.5  # text view: at most two printed lines a second (and the last)


def _check_view(view: str) -> str:
    if view not in ("auto", "widget", "text"):
        raise ValueError(f"view must be 'auto', 'widget' or 'text', not {view!r}")
    if view == "auto":
        return "widget" if in_kernel() else "text"
    return view


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(
            f"batch_size must be a positive int (the fit's batch size, for samples/s), "
            f"not {batch_size!r}"
        )


class LivePanel(LiveCallback):
    """A Keras callback that shows training live: `model.fit(..., callbacks=[LivePanel()])`.

    `batch_size`: fit's batch size, to show samples/s (Keras does not tell callbacks).
    `view`: "widget", "text" (nothing shown: Keras prints its own progress) or "auto"
    (widgets inside a Jupyter kernel). Each `fit` shows a new view; re-running the cell
    replaces the one it showed before.
    """

    def __init__(self, *, batch_size: int | None = None, view: str = "auto") -> None:
        _check_batch_size(batch_size)
        super().__init__(batch_size)
        self.view = _check_view(view)
        self.live_view: LiveView | None = None
        self._batch_size = batch_size
        self._interrupted = False
        self._sigint: Any = None
        self._fit_frame: Any = None  # fit's own frame: on its thread's stack while it runs
        self._fit_thread = 0

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.log = LiveLog(self._batch_size)  # each fit its own record and view
        super().on_train_begin(logs)
        self._interrupted = False
        self._fit_frame, self._fit_thread = _caller_named("fit"), threading.get_ident()
        if self.view == "widget":
            self.live_view = LiveView(self.log, "LivePanel")
            self.live_view.show()
            self.live_view.start(watch=self._still_fitting)
        self.poll = _poller(self.log)
        self._catch_interrupt()

    def _still_fitting(self) -> bool:
        """False once fit has left its thread without on_train_end, which Keras does not call
        when fit raises: the view then says so, turns its buttons off and stops refreshing."""
        if not self.log.running or self._fit_running():
            return True
        self.log.end()
        self.log.say(f"fit ended with an error at epoch {self.log.state().epochs_done}")
        self._fit_frame = None
        return False

    def _fit_running(self) -> bool:
        frame = self._fit_frame
        if frame is None:  # fit's frame not found (another trainer): trust the hooks
            return self.log.running
        current = sys._current_frames().get(self._fit_thread)
        while current is not None:
            if current is frame:
                return True
            current = current.f_back
        return False

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._fit_frame = None
        self._release_interrupt()
        super().on_train_end(logs)
        s = self.log.state()
        where = f"epoch {s.epochs_done}"
        cut = self.log.last_epoch_batches
        if s.steps and 0 < cut < s.steps:  # Keras logs a cut epoch as an epoch, as History
            where += f" after batch {cut:,} of {s.steps:,}"
        if self._interrupted:
            self.log.say(f"interrupted at {where}")
        elif s.stop_asked:
            self.log.say(f"stopped at {where} (Stop)")
        elif s.epochs_total is not None and s.epochs_done < s.epochs_total:
            self.log.say(f"stopped early by a callback at epoch {s.epochs_done}")
        if self.live_view is not None:
            self.live_view.finish()
        if self._interrupted:
            raise KeyboardInterrupt(f"training stopped at {where}")

    # -- the kernel's Interrupt: stop after the current batch -----------------------------

    def _catch_interrupt(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._sigint = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)

    def _release_interrupt(self) -> None:
        if self._sigint is not None:
            if signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # A second one, or a stale handler (fit ended, or raised without on_train_end).
        if self._interrupted or not self.log.running or not self._fit_running():
            self._release_interrupt()
            raise KeyboardInterrupt
        self._interrupted = True
        self.log.controls.stop()
        interrupt.stop_all()  # and the panels' runs in worker threads, as Interrupt does


def _caller_named(name: str) -> Any:
    """The nearest frame of Keras's `name` (fit) on this thread's stack, or None."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == name and "keras" in code.co_filename:
            return frame
        frame = frame.f_back
    return None


class _Poller:
    """`comm_pump.pump`; should the pump give up during the run (a kernel not laid out as it
    expects), the view says once that the buttons now act when the cell ends."""

    def __init__(self, record: LiveLog) -> None:
        self.record = record
        self.told = False

    def __call__(self) -> int:
        handled = comm_pump.pump()
        if not self.told and not comm_pump.available():
            self.told = True
            self.record.say(comm_pump.BROKEN_NOTE)
        return handled


def _poller(record: LiveLog) -> _Poller | None:
    """A poller where widget messages can be let in while the cell runs, else None."""
    return _Poller(record) if comm_pump.available() else None


class Board:
    """What `live()` yields: log epochs, read Stop, hold on Pause."""

    def __init__(self, record: LiveLog, view: LiveView | None) -> None:
        self.record = record
        self.live_view = view
        self._poll = _poller(record)
        self._next_poll = 0.0
        self._printed_at = 0.0
        self._printed = 0

    def log(
        self,
        epoch: int | None = None,
        loss: Any = None,
        val_loss: Any = None,
        **metrics: Any,
    ) -> None:
        """Record one epoch (numbers or scalar tensors; `epoch` defaults to the next one),
        then hold here while Pause is pressed."""
        values = {"loss": loss, "val_loss": val_loss, **metrics}
        if all(v is None for v in values.values()):
            raise TypeError("log() needs at least one value, e.g. board.log(loss=loss)")
        self.record.epoch_end(values, epoch)
        if self.live_view is None:
            self._print()
        self.wait_if_paused()

    @property
    def stop_requested(self) -> bool:
        """True once Stop was pressed: end your loop (`if board.stop_requested: break`)."""
        self._pump()
        return self.record.controls.stop_asked

    def wait_if_paused(self) -> None:
        """Hold while Pause is pressed (Step lets one more epoch through)."""
        self._pump()
        c = self.record.controls
        if c.pause_asked and not c.stop_asked:
            self.record.held(c.hold(self._poll))

    def history(self) -> dict[str, list[float | None]]:
        """What was logged, Keras History style: {'loss': [...], 'val_loss': [...]}."""
        return self.record.history()

    @property
    def epochs(self) -> list[int]:
        return [row.epoch for row in self.record.rows]

    def _pump(self) -> None:
        now = time.monotonic()
        if self._poll is not None and now >= self._next_poll:
            self._next_poll = now + POLL_EVERY_S
            self._poll()

    def _print(self, final: bool = False) -> None:
        rows = self.record.rows
        now = time.monotonic()
        if not rows or self._printed == len(rows):
            return
        if final or now - self._printed_at >= PRINT_EVERY_S or self._printed == 0:
            row = rows[-1]
            skipped = len(rows) - self._printed - 1
            more = f"  (+{skipped} epochs)" if skipped > 0 and not final else ""
            values = "  ".join(f"{k} {v:.7g}" for k, v in row.values.items())
            print(f"epoch {row.epoch}  {values}{more}")
            self._printed, self._printed_at = len(rows), now


@contextmanager
def live(
    epochs: int | None = None, *, batch_size: int | None = None, view: str = "auto"
) -> Iterator[Board]:
    """Show a hand-written training loop live::

        with live(epochs=2000) as board:
            for epoch in range(2000):
                loss = train_step()
                board.log(epoch=epoch, loss=loss)
                if board.stop_requested:
                    break

    `epochs` (optional) gives the progress bar and the ETA. `view` as for `LivePanel`;
    the text view prints at most two epoch lines a second."""
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive int (the loop's length), not {epochs!r}")
    _check_batch_size(batch_size)
    record = LiveLog(batch_size)
    record.begin(epochs)
    view = LiveView(record, "live") if _check_view(view) == "widget" else None
    board = Board(record, view)
    if view is not None:
        view.show()
        view.start()
    try:
        yield board
    except KeyboardInterrupt:
        record.say(f"interrupted at epoch {len(record.rows)}")
        raise
    finally:
        record.end()
        if record.controls.stop_asked:
            record.say(f"stopped at epoch {len(record.rows)} (Stop)")
        if view is not None:
            view.finish()
        else:
            board._print(final=True)
