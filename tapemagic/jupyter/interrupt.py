"""The kernel's Interrupt stops the training this kernel runs in worker threads.

Interrupt (the toolbar's stop button, `kernel:interrupt`) sends SIGINT to the kernel, and
only the main thread runs Python signal handlers. ipykernel's app ignores SIGINT at start;
around each message it handles (`Kernel.pre_handler_hook` and `post_handler_hook`) the
kernel saves the handler, installs `signal.default_int_handler` (a busy cell gets
KeyboardInterrupt) and puts the saved one back. So a panel's run, in a worker thread while
the kernel is idle, gets nothing. While such runs are going, this module installs a
handler that stops them and then does what the previous one did: as the handler in force
while the kernel is idle (the kernel's `saved_sigint_handler`, which the post-hook
restores), and around each cell (ipykernel's handling of the cell's own Interrupt is
kept). Once no run is left, the next cell puts the previous handlers back.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_stops: dict[int, Callable[[], None]] = {}  # token -> stop one run
_next = 0
_hooked: set[int] = set()  # shells whose cells this module wraps (ids)


class _Chain:
    """A SIGINT handler: stop every guarded run, then do what `prev` did."""

    def __init__(self, prev: Any) -> None:
        self.prev = prev

    def __call__(self, signum: int, frame: Any) -> None:
        stop_all()
        prev = self.prev
        if callable(prev):
            prev(signum, frame)  # default_int_handler in a cell: its KeyboardInterrupt
        elif prev == signal.SIG_DFL:
            raise KeyboardInterrupt


def stop_all() -> int:
    """Stop every guarded run (what Interrupt does); how many there were."""
    with _lock:
        stops = list(_stops.values())
    for stop in stops:
        stop()
    return len(stops)


def active() -> int:
    """How many guarded runs are going."""
    with _lock:
        return len(_stops)


def guard(stop: Callable[[], None]) -> Callable[[], None]:
    """Make the kernel's Interrupt call `stop` (thread-safe, quick: set a flag) until the
    returned release function is called (from any thread, e.g. the run's own at its end).
    Call it from the main thread; outside a kernel, Interrupt is Ctrl-C in a terminal,
    where a blocking run gets KeyboardInterrupt itself, and nothing is installed."""
    global _next
    with _lock:
        _next += 1
        token = _next
        _stops[token] = stop
    _install()

    def release() -> None:
        with _lock:
            _stops.pop(token, None)

    return release


def _kernel_shell() -> tuple[Any, Any]:
    try:
        from IPython import get_ipython
    except ImportError:
        return None, None
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    return (shell, kernel) if kernel is not None else (None, None)


def _install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    shell, kernel = _kernel_shell()
    if kernel is None:
        return
    # Inside a message handler (all main-thread code in a kernel is): the handler saved
    # there is the one in force once the kernel is idle again.
    saved = getattr(kernel, "saved_sigint_handler", None)
    if saved is not None and not isinstance(saved, _Chain):
        kernel.saved_sigint_handler = _Chain(saved)
    _wrap_current()
    if id(shell) not in _hooked:
        _hooked.add(id(shell))
        shell.events.register("pre_execute", _pre_execute)
        shell.events.register("post_execute", _post_execute)


def _wrap_current() -> None:
    """This cell's own handler (default_int_handler): stop the runs first, then raise."""
    current = signal.getsignal(signal.SIGINT)
    if current is not None and not isinstance(current, _Chain):
        signal.signal(signal.SIGINT, _Chain(current))


def _pre_execute() -> None:
    if active():
        _wrap_current()


def _post_execute() -> None:
    """After a cell, with no run left: the kernel's own handlers again."""
    if active():
        return
    _, kernel = _kernel_shell()
    saved = getattr(kernel, "saved_sigint_handler", None)
    if isinstance(saved, _Chain):
        kernel.saved_sigint_handler = saved.prev  # what the post-hook restores when idle
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, _Chain) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, current.prev)
