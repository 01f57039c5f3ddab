"""Background threads whose end the kernel's main thread can wait for, even under Ctrl-C.

Python 3.11's `Thread.join`, when a KeyboardInterrupt (the kernel's Interrupt) lands in
it, releases the joined thread's state lock and marks it stopped while it still runs:
`is_alive()` then says False for a thread that goes on training. A `Worker` is waited
for on an event set when its target returns, which an interrupt leaves intact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Worker(threading.Thread):
    """A daemon thread that runs `target(*args)` once; `ended` and `wait` tell when it
    has returned (or raised)."""

    def __init__(self, target: Callable[..., Any], name: str, args: tuple = ()) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        self._over = threading.Event()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._over.set()

    @property
    def ended(self) -> bool:
        """The target has returned (a thread never started has not ended)."""
        return self._over.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the target has returned; False if `timeout` seconds passed first."""
        return self._over.wait(timeout)
