"""Thread-safe controls: what a panel sets from its thread and the loop reads between calls.

A widget runs `Trainer.run` in a worker thread: a Jupyter kernel handles one message at
a time on its main thread, so a run there would hold every button click until it ended.
Every flag lives behind one condition variable; the loop blocks on it while paused, so a
pause costs no CPU, and stop, resume, one-more-epoch and a new learning rate all wake it
at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Controls:
    """Stop, pause, resume, step and a pending learning rate, shared between threads."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._running = False
        self._stop = False
        self._pause = False
        self._waiting = False  # the loop is blocked in a pause right now
        self._step_until: int | None = None
        self._lr_pending: float | None = None

    # -- asked by anyone -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def paused(self) -> bool:
        """True while a run is holding between steps."""
        return self._running and self._waiting

    @property
    def step_until(self) -> int | None:
        """While stepping through a pause: the epoch at which to hold again."""
        return self._step_until

    def request_stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    def pause(self) -> None:
        with self._cv:
            self._pause = True
            self._cv.notify_all()

    def resume(self) -> None:
        with self._cv:
            self._pause = False
            self._step_until = None
            self._cv.notify_all()

    def step_while_running(self, epoch: int) -> bool:
        """Let a running loop do one more epoch, then hold; False if no run is going."""
        with self._cv:
            if not self._running:
                return False
            self._pause = True
            self._step_until = epoch + 1
            self._cv.notify_all()
            return True

    def wait_idle(self, timeout: float | None) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: not self._running, timeout)

    def set_learning_rate(self, value: float, apply: Callable[[float], None]) -> None:
        """Apply now when idle; else keep it for the loop to apply before its next call,
        or, when the run has no next call, before its final checkpoint (see `end`)."""
        with self._cv:
            if self._running:
                self._lr_pending = value
            else:
                self._lr_pending = None
                apply(value)

    @property
    def pending_learning_rate(self) -> float | None:
        return self._lr_pending

    # -- used by the training loop ---------------------------------------------------

    def begin(self) -> None:
        """Mark a run as started; a second concurrent run is an error."""
        with self._cv:
            if self._running:
                raise RuntimeError(
                    "this trainer is already running (in another thread); request_stop() "
                    "and wait() first"
                )
            self._running, self._stop, self._pause = True, False, False
            self._waiting, self._step_until = False, None

    def end(
        self,
        apply_lr: Callable[[float], None] | None = None,
        persist: Callable[[], None] = lambda: None,
        again: bool = True,
    ) -> None:
        """End a run. The rule for a learning rate set while it ran: one that no call
        took yet is applied now, before `persist` (the run's final checkpoint) records
        it; with `again`, one set while `persist` runs is applied and persisted in turn,
        until none comes. When this returns the run is over and no rate is pending: the
        next run, the checkpoint and a trainer resumed from it use the last rate set.
        (`again=False` where `persist` must run the same number of times everywhere, as
        with several workers: a rate set during it is applied, and saved next time.
        Without `apply_lr`, for a run that never started training, a rate stays pending.)"""
        try:
            self._apply_pending(apply_lr)
            persist()
            while again and apply_lr is not None:
                with self._cv:
                    if self._lr_pending is None:
                        self._finish()  # in the same hold as the check: nothing slips in
                        return
                self._apply_pending(apply_lr)
                persist()
        finally:
            with self._cv:
                if self._running:
                    self._finish(apply_lr)

    def _apply_pending(self, apply_lr: Callable[[float], None] | None) -> None:
        if apply_lr is None:
            return
        with self._cv:
            value, self._lr_pending = self._lr_pending, None
            if value is not None:
                apply_lr(value)

    def _finish(self, apply_lr: Callable[[float], None] | None = None) -> None:
        """With the lock held: the run is over (a rate still pending applies now)."""
        if apply_lr is not None and self._lr_pending is not None:
            apply_lr(self._lr_pending)
            self._lr_pending = None
        self._running = self._pause = self._waiting = False
        self._step_until = None
        self._cv.notify_all()

    def wait_turn(self, epoch: int, apply_lr: Callable[[float], None]) -> bool:
        """Between calls: hold while paused; apply a pending learning rate; False = stop."""
        with self._cv:
            while not self._stop:
                stepping = self._step_until is not None and epoch < self._step_until
                if not self._pause or stepping:
                    self._waiting = False
                    if self._lr_pending is not None:
                        apply_lr(self._lr_pending)
                        self._lr_pending = None
                    return True
                self._step_until = None
                self._waiting = True
                self._cv.notify_all()
                self._cv.wait()
            self._waiting = False
            return False

    def wait_paused(self, timeout: float | None) -> bool:
        """Block until a run is holding in a pause (for tests and scripted panels)."""
        with self._cv:
            return self._cv.wait_for(lambda: self.paused or not self._running, timeout)
