"""LivePanel's buttons in a real kernel while the cell that called `fit` is still running.

A kernel of this environment is driven through jupyter_client, as a frontend drives it:
cells are execute requests; a button click is what ipywidgets 8 sends for one, a
`comm_msg` to the button's model with `{"method": "custom", "content": {"event": "click"}}`;
the button's comm id comes from the `comm_open` the kernel published for it. The tests
read what a user would see: the widgets' state updates on IOPub, the cells' outputs, and
the fit's results printed by a later cell.
"""

from __future__ import annotations

import json
import queue
import time

import pytest
from jupyter_client.manager import start_new_kernel

SETUP = """
import numpy as np, keras, tensorflow as tf
from tapemagic import LivePanel
rng = np.random.default_rng(0)
x = rng.normal(size=(20000, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True).astype("float32")
def make_model():
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(0.001), "mse")
    return m
model = make_model()
panel = LivePanel()
clicked = []  # (epochs logged, batches run) when Stop was clicked, as the run saw it

class Watch(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        log = panel.log
        panel.live_view.stop_button.on_click(
            lambda _: clicked.append((len(log.rows), log.batches_run)))
views = []
"""

FIT = (
    "h = model.fit(x, y, batch_size=8, epochs=40, verbose=0, callbacks=[panel, Watch()])\n"
    "views.append(panel.live_view)\n"
    "print('fit returned', len(h.history['loss']), 'epochs')"
)


class Kernel:
    """A kernel and its client; IOPub messages kept by parent message id."""

    def __init__(self) -> None:
        self.km, self.kc = start_new_kernel(kernel_name="python3")
        self.seen: list[dict] = []

    def execute(self, code: str) -> str:
        return self.kc.execute(code)

    def drain(self, timeout: float = 0.05) -> None:
        while True:
            try:
                self.seen.append(self.kc.get_iopub_msg(timeout=timeout))
            except queue.Empty:
                return

    def wait_for(self, predicate, timeout: float = 120.0) -> dict:
        """The first IOPub message (seen or new) that satisfies predicate."""
        for msg in self.seen:
            if predicate(msg):
                return msg
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            self.seen.append(msg)
            if predicate(msg):
                return msg
        raise AssertionError("the kernel never sent the message waited for")

    def reply(self, msg_id: str, timeout: float = 180.0) -> dict:
        """The execute reply of msg_id (shell channel)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                msg = self.kc.get_shell_msg(timeout=1)
            except queue.Empty:
                self.drain()
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg
        raise AssertionError("no execute reply")

    def stdout(self, msg_id: str) -> str:
        self.wait_for(lambda m: _idle_of(m, msg_id))
        return "".join(
            m["content"]["text"]
            for m in self.seen
            if m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "stream"
            and m["content"]["name"] == "stdout"
        )

    def run(self, code: str) -> str:
        msg_id = self.execute(code)
        assert self.reply(msg_id)["content"]["status"] == "ok", self.stdout(msg_id)
        return self.stdout(msg_id)

    def button(self, description: str, after: int = 0) -> str:
        """The comm id of the newest button labelled `description` opened after seen[after]."""

        def is_button(m):
            state = m["content"].get("data", {}).get("state", {})
            return (
                m["msg_type"] == "comm_open"
                and state.get("_model_name") == "ButtonModel"
                and state.get("description") == description
            )

        self.wait_for(lambda m: is_button(m) and self.seen.index(m) >= after)
        return [m for m in self.seen[after:] if is_button(m)][-1]["content"]["comm_id"]

    def click(self, comm_id: str) -> None:
        content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
        self.kc.shell_channel.send(self.kc.session.msg("comm_msg", content))

    def status_updates(self, after: int = 0) -> list[str]:
        """Every value the status lines were set to, in order."""
        out = []
        for m in self.seen[after:]:
            if m["msg_type"] == "comm_msg":
                state = m["content"]["data"].get("state", {})
                value = state.get("value")
                if isinstance(value, str) and " · epoch " in value:
                    out.append(value)
        return out

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _idle_of(msg: dict, msg_id: str) -> bool:
    return (
        msg["msg_type"] == "status"
        and msg["parent_header"].get("msg_id") == msg_id
        and msg["content"]["execution_state"] == "idle"
    )


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.run(SETUP)
    yield k
    k.close()


def _running_batch(k: Kernel, after: int) -> None:
    """Wait until the status shows the run inside an epoch."""
    k.wait_for(
        lambda m: (
            k.seen.index(m) >= after
            and m["msg_type"] == "comm_msg"
            and "running · epoch" in str(m["content"]["data"].get("state", {}).get("value", ""))
            and "batch" in str(m["content"]["data"].get("state", {}).get("value", ""))
        )
    )


def test_stop_ends_fit_at_the_batch_where_the_click_arrives(kernel):
    k = kernel
    k.run("model = make_model(); clicked.clear()")
    start = len(k.seen)
    fit = k.execute(FIT)
    stop = k.button("Stop", after=start)
    _running_batch(k, start)
    after = k.execute("print('next cell ran after fit:', 'h' in dir())")  # queued behind fit
    k.click(stop)
    reply = k.reply(fit)
    assert reply["content"]["status"] == "ok"
    out = k.stdout(fit)
    epochs = int(out.split()[2])
    assert epochs < 40
    report = json.loads(
        k.run(
            "import json; print(json.dumps({'clicked': clicked, 'rows': len(panel.log.rows), "
            "'batches': panel.log.batches_run, 'stop': model.stop_training, "
            "'messages': panel.log.messages, 'history': h.history['loss'], "
            "'drawn': panel.log.column('loss')}))"
        )
    )
    [(rows_then, batches_then)] = report["clicked"]
    # Keras ends fit after the batch in whose hook the click was let in: no batch more.
    assert report["batches"] == batches_then
    assert report["rows"] in (rows_then, rows_then + 1) and report["rows"] == epochs
    assert report["stop"] is True
    assert (
        report["messages"][-1].startswith("stopped at epoch") and "(Stop)" in report["messages"][-1]
    )
    assert report["drawn"] == report["history"]  # the cut epoch too, as History has it
    # The execute request queued during fit ran after it, not in the middle of it.
    assert k.stdout(after).strip() == "next cell ran after fit: True"
    final = k.status_updates(start)[-1]
    assert final.startswith("stopped · epoch")


def test_pause_holds_between_batches_then_resume_and_stop(kernel):
    k = kernel
    k.run("model = make_model(); clicked.clear()")
    start = len(k.seen)
    fit = k.execute(FIT)
    stop, pause = k.button("Stop", after=start), k.button("Pause", after=start)
    _running_batch(k, start)
    k.click(pause)
    k.wait_for(lambda m: k.seen.index(m) >= start and "paused · epoch" in str(m["content"]))
    held_at = [s for s in k.status_updates(start) if s.startswith("paused")][-1]
    time.sleep(1.0)  # while paused, nothing moves
    k.drain()
    later = k.status_updates(start)
    position = held_at.split(" · elapsed")[0].replace("paused", "")
    assert all(position in s for s in later[later.index(held_at) :]), later[-3:]
    k.click(pause)  # Resume
    k.wait_for(
        lambda m: (
            k.seen.index(m) >= start
            and "running · epoch" in str(m["content"])
            and position not in str(m["content"])
        )
    )
    k.click(stop)
    assert k.reply(fit)["content"]["status"] == "ok"
    assert "fit returned" in k.stdout(fit)


def test_rerunning_the_cell_leaves_one_live_view(kernel):
    k = kernel
    k.run("views.clear()")
    short = FIT.replace("epochs=40", "epochs=1").replace("x, y,", "x[:800], y[:800],")
    k.run(short)
    k.run(short)
    out = k.run(
        "print([v.replaced for v in views], [v.stop_button.disabled for v in views])\n"
        "print(views[0].messages.value)"
    )
    assert out.splitlines()[0] == "[True, False] [True, True]"
    assert "replaced by a newer view of this cell" in out


def test_interrupt_stops_fit_between_batches(kernel):
    k = kernel
    k.run("model = make_model(); clicked.clear()")
    start = len(k.seen)
    fit = k.execute(FIT)
    _running_batch(k, start)
    k.km.interrupt_kernel()
    reply = k.reply(fit)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert "training stopped at epoch" in reply["content"]["evalue"]
    out = k.run("print(panel.log.messages[-1], model.stop_training, panel.log.running)")
    assert out.startswith("interrupted at epoch") and out.strip().endswith("True False")


def test_a_cell_queued_behind_fit_keeps_its_context_for_the_next_cells(kernel):
    """A cell the pump handed back runs in the kernel's own cell context, as every cell
    does: what it sets in context variables (the decimal context is one) carries on."""
    k = kernel
    k.run("import contextvars, decimal\nmark = contextvars.ContextVar('mark', default='unset')")
    baseline = k.run("print(decimal.getcontext().prec)").strip()
    k.run("model = make_model(); clicked.clear()")
    start = len(k.seen)
    fit = k.execute(FIT)
    stop = k.button("Stop", after=start)
    _running_batch(k, start)
    queued = k.execute("mark.set('set behind fit'); decimal.getcontext().prec = 5")
    k.drain(0.5)  # the pump has handed it back by now: the queued cell is not lost
    k.click(stop)
    assert k.reply(fit)["content"]["status"] == "ok"
    assert k.reply(queued)["content"]["status"] == "ok"
    out = k.run("print(mark.get(), decimal.getcontext().prec)")
    k.run(f"decimal.getcontext().prec = {baseline}")
    assert out.strip() == "set behind fit 5"


BREAK_PUMP = """
from tapemagic.jupyter import comm_pump
kernel = get_ipython().kernel
pump = comm_pump._pump_for(kernel)

class _Unexpected:
    '''The kernel as the pump sees it, with one part it relies on gone (another ipykernel).'''
    def __getattr__(self, name):
        if name == "_parent_ident":
            raise AttributeError(name)
        return getattr(kernel, name)

pump.kernel = _Unexpected()
"""


def test_a_pump_that_cannot_read_the_kernel_leaves_the_click_for_after_the_cell(kernel):
    """If the kernel is not laid out as the pump expects, the click it read is handed back:
    fit runs to its end, the click acts once the cell ends, the view says why, and the
    kernel goes on running cells."""
    k = kernel
    k.run("model = make_model(); clicked.clear()\n" + BREAK_PUMP)
    try:
        start = len(k.seen)
        short = FIT.replace("epochs=40", "epochs=3").replace("x, y,", "x[:4000], y[:4000],")
        fit = k.execute(short)
        stop = k.button("Stop", after=start)
        _running_batch(k, start)
        k.click(stop)
        assert k.reply(fit)["content"]["status"] == "ok"
        assert "fit returned 3 epochs" in k.stdout(fit)
        report = json.loads(
            k.run(
                "import json; print(json.dumps({'clicked': clicked, 'broken': pump.broken, "
                "'messages': panel.log.messages}))"
            )
        )
        assert report["broken"] is True
        assert len(report["clicked"]) == 1  # handled after the cell: the whole run was logged
        assert report["clicked"][0][0] == 3
        assert any("the buttons act when the cell ends" in m for m in report["messages"])
    finally:
        k.run("pump.kernel = kernel; pump.broken = False")
