"""Widget messages reach a cell that is still running.

A kernel reads the shell channel's messages on its main thread, one at a time: while a
cell runs (`model.fit(...)` in the main thread), a button click waits until the cell ends.
ipykernel 7 has a shell-channel thread that forwards each message the main shell is to
handle over an in-process socket, which the main thread's event loop reads between
messages. `pump()`, called by the running cell's own code (a Keras callback between
batches), reads that socket itself: widget messages (comm_open, comm_msg, comm_close) are
handled at once, as the kernel would, with the message as parent so that what they show
goes where it belongs; every other request (the next cells' execute requests, completions,
kernel info) is handed back to the kernel's event loop in arrival order, where it queues
behind the running cell as it would have. Nothing runs out of order: only widget messages
overtake, which is the point, and the kernel does the same for a cell that awaits.

Where this cannot work (no kernel, ipykernel 6 without the shell-channel thread, a cell run
in a subshell thread) `pump()` does nothing and the buttons act once the cell ends.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})
# What a user is told when the kernel turns out not to be as the pump expects.
BROKEN_NOTE = (
    "widget messages could not be read while the cell runs: the buttons act when the cell ends"
)


class _Pump:
    def __init__(self, kernel: Any, socket: Any, recv: Any, reply_to: Any) -> None:
        self.kernel = kernel
        self.socket = socket
        self.recv = recv  # the kernel's own callback for this socket (its stream's on_recv)
        self.reply_to = reply_to  # where the main shell's replies go (the kernel's choice)
        self.broken = False  # the kernel's layout was not as expected: pump no more

    def run(self) -> int:
        if self.broken:
            return 0
        handled = 0
        try:
            # poll(0): is a message waiting (zmq's POLLIN, 1)? Asked of the kernel's own
            # socket object, so this module needs no zmq of its own. The loop always ends on
            # a poll that finds nothing, also once broken: the socket's file descriptor
            # signals only new arrivals after its state was read, so a read with no poll
            # after it would leave the kernel's own stream deaf to the next message.
            while self.socket.poll(0, 1):
                frames = self.socket.recv_multipart(copy=False)
                mine = False
                try:
                    mine = not self.broken and self._is_comm(frames)
                finally:  # an Interrupt here must not lose the message: the kernel gets it
                    if not mine:
                        self._defer(frames)
                if mine:
                    handled += self._handle(frames)
        except Exception:  # a closed socket, another layout: buttons act after the cell
            self._break()
        return handled

    def _break(self) -> None:
        self.broken = True
        self.kernel.log.warning(f"tapemagic: {BROKEN_NOTE}")

    def _is_comm(self, frames: list) -> bool:
        session = self.kernel.session
        if session is None or len(frames) < 2:  # the kernel's own one-frame notes
            return False
        try:
            _, rest = session.feed_identities(frames, copy=False)
            header = session.deserialize(rest, content=False, copy=False)["header"]
        except Exception:  # the kernel logs a bad message when it gets it back
            return False
        return header.get("msg_type") in COMM_TYPES

    def _handle(self, frames: list) -> int:
        """What the kernel does for a widget message while a cell runs: the handler, with
        the message as parent for its side effects, then the cell's parent back."""
        k = self.kernel
        try:  # the kernel's parts first: the message is still the kernel's to read after
            parent = k.get_parent("shell")
            ident = k._parent_ident["shell"]
            handlers = k.shell_handlers
        except Exception:  # not the layout this was written for: the kernel handles it later
            self._defer(frames)
            self._break()
            return 0
        # Reading its content records its signature: from here on it is handled only here.
        idents, rest = k.session.feed_identities(frames, copy=False)
        msg = k.session.deserialize(rest, content=True, copy=False)
        handler = handlers.get(msg["header"]["msg_type"])
        if handler is None:
            return 0
        k.set_parent(idents, msg, channel="shell")
        try:
            result = handler(self.reply_to, idents, msg)
            if inspect.isawaitable(result):  # finishes once the loop runs again
                asyncio.ensure_future(result)
        except Exception:  # as the kernel does: a broken handler must not stop training
            k.log.error("Exception in a widget message handler:", exc_info=True)
        finally:
            k.set_parent(ident, parent, channel="shell")
        return 1

    def _defer(self, frames: list) -> None:
        """Back to the kernel's loop, as its stream would have delivered it: through the
        kernel's own callback, so it runs in the kernel's cell context (a cell's context
        variables, the decimal context among them, carry on to the next cell) and queues
        behind the running cell (the shell's lock is held) in the order received."""
        recv = self.recv

        def again(frames: list = frames) -> None:
            result = recv(frames)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)

        self.kernel.io_loop.add_callback(again)


_pumps: dict[int, _Pump | None] = {}  # kernel id -> its pump (None: cannot pump there)


def _pump_for(kernel: Any) -> _Pump | None:
    key = id(kernel)
    if key not in _pumps:
        _pumps[key] = None
        try:
            manager = kernel.shell_channel_thread.manager
            pair = manager.get_shell_channel_to_subshell_pair(None)
            recv = pair.to_stream._recv_callback  # what the main thread's stream calls
            reply_to = manager.get_subshell_to_shell_channel_socket(None)
            needed = (kernel.session, kernel.shell_handlers, kernel._parent_ident, kernel.io_loop)
            if callable(recv) and pair.to_socket is not None and all(n is not None for n in needed):
                _pumps[key] = _Pump(kernel, pair.to_socket, recv, reply_to)
        except Exception:  # another ipykernel layout: no pump, buttons act after the cell
            pass
    return _pumps[key]


def available() -> bool:
    """Whether `pump()` can let widget messages in here (a kernel's main thread, a pump
    that has not given up)."""
    p = _current()
    return p is not None and not p.broken


def _current() -> _Pump | None:
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    return None if kernel is None else _pump_for(kernel)


def pump() -> int:
    """Handle the widget messages waiting for this kernel; how many there were. Call it
    from the running cell's own code (the main thread); elsewhere it does nothing."""
    p = _current()
    return p.run() if p is not None else 0
