"""Notebook habits: one owner per model, and Interrupt stops training.

First the core registry (`tapemagic.training.ownership`) and Ctrl-C in a main-thread
run, in this process. Then what a user does in a real ipykernel, driven through
jupyter_client as a frontend does: re-running the cell that made a panel while it trains,
re-running a `%train` cell, pressing Train (a real widget message), and the kernel's
Interrupt (`KernelManager.interrupt_kernel`, the toolbar's stop button) during a
button-started run and during a blocking run. One kernel serves all the kernel tests.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import pytest
import tensorflow as tf

from tapemagic import Trainer
from tapemagic.training import ownership
from tapemagic.variables import unwrap

X = np.linspace(-1.0, 1.0, 64).astype("float32")
Y = (2.0 * X + 1.0).astype("float32")


def params_trainer(a, b, **kw) -> Trainer:
    kw = {"loss": "mse", "data": (X, Y), "learning_rate": 0.1, "seed": 0, **kw}
    return Trainer(params=[a, b], predict=lambda x: a * x + b, **kw)


def run_in_thread(trainer: Trainer, epochs: int) -> threading.Thread:
    thread = threading.Thread(target=trainer.run, args=(epochs,), daemon=True)
    thread.start()
    return thread


def until(trainer: Trainer, epoch: int) -> None:
    """Block until `trainer` has finished `epoch` epochs (or stopped running)."""
    done = threading.Event()

    def listen(record):
        if record.epoch + 1 >= epoch:
            done.set()

    trainer.add_listener(listen)
    try:
        while not done.wait(0.05) and (trainer.running or trainer.epoch == 0):
            pass
    finally:
        trainer.remove_listener(listen)


# -- the registry ----------------------------------------------------------------------


def test_a_new_trainer_supersedes_the_old_one_which_refuses_to_run_or_reset():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    old = params_trainer(a, b)
    old.run(3)
    new = params_trainer(a, b)
    assert old.superseded_by is new and new.superseded_by is None
    before = (a.numpy(), b.numpy(), len(old.history))
    for call in (lambda: old.run(1), old.reset, old.step, old.restore_last_finite):
        with pytest.raises(RuntimeError) as err:
            call()
        message = str(err.value)
        assert message == (
            "this Trainer was superseded by a newer Trainer, made later on the same "
            "variables: train with that one (or make a new Trainer here)"
        )
        assert not old.running
    assert (a.numpy(), b.numpy(), len(old.history)) == before  # nothing was touched
    new.run(2)
    assert new.epoch == 2


def test_a_running_trainer_is_stopped_between_steps_when_a_new_one_is_made():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    old = params_trainer(a, b)
    thread = run_in_thread(old, 10**7)
    until(old, 5)
    new = params_trainer(a, b)  # returns once the old run has ended
    assert not old.running
    thread.join()
    assert old.epoch == len(old.history) >= 5 and old.epoch < 10**7
    assert old.error is None and old.messages[-1] == f"stopped at epoch {old.epoch}"
    # The new trainer starts from the weights the old one stopped at: nothing moved after.
    start = (a.numpy(), b.numpy())
    assert start == (old.param_values()["a"], old.param_values()["b"])
    new.run(2)
    new.reset()
    assert (a.numpy(), b.numpy()) == start


def test_a_trainer_made_inside_the_old_ones_run_takes_over_without_waiting_for_itself():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    old = params_trainer(a, b)
    made = []

    def make_new(record):  # in the old run's own thread, as a callback could
        if record.epoch == 2 and not made:
            made.append(params_trainer(a, b))

    old.add_listener(make_new)
    thread = run_in_thread(old, 10**7)
    thread.join(60)  # a bound for a deadlock, not a speed
    assert not thread.is_alive() and made and old.superseded_by is made[0]
    assert old.epoch == len(old.history) < 10**7 and old.error is None


def test_trainers_on_different_variables_run_side_by_side():
    first = params_trainer(tf.Variable(0.0), tf.Variable(0.0))
    second = params_trainer(tf.Variable(0.0), tf.Variable(0.0))
    threads = [run_in_thread(first, 10**7), run_in_thread(second, 10**7)]
    until(first, 3)
    until(second, 3)
    assert first.running and second.running  # both at once, neither superseded
    assert first.superseded_by is None and second.superseded_by is None
    for t in (first, second):
        t.request_stop()
    for thread in threads:
        thread.join()


def test_sharing_one_variable_is_enough_and_keras_variables_count_by_their_tf_variable():
    import keras

    a, b, c = tf.Variable(0.0), tf.Variable(0.0), tf.Variable(0.0)
    ab = params_trainer(a, b)
    bc = Trainer(params=[b, c], predict=lambda x: b * x + c, loss="mse", data=(X, Y), seed=0)
    assert ab.superseded_by is bc

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    by_model = Trainer(model=model, loss="mse", data=(X[:, None], Y), seed=0)
    w = unwrap(model.layers[0].kernel)  # the tf.Variable under the Keras Variable
    by_params = Trainer(
        params=[w], predict=lambda x: tf.matmul(x, w), loss="mse", data=(X[:, None], Y[:, None])
    )
    assert by_model.superseded_by is by_params


def test_a_failed_construction_supersedes_nothing():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    old = params_trainer(a, b)
    with pytest.raises(ValueError):
        params_trainer(a, b, loss=lambda y, p: None)
    assert old.superseded_by is None
    old.run(1)
    assert old.epoch == 1


def test_the_label_given_by_whoever_made_the_new_trainer_names_it_and_watchers_hear():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    old = params_trainer(a, b)
    heard = []
    ownership.watch(old, heard.append)
    with ownership.labelled("the panel in cell [7]"):
        new = params_trainer(a, b)
    assert [(e.new, e.label, e.was_running) for e in heard] == [
        (new, "the panel in cell [7]", False)
    ]
    with pytest.raises(RuntimeError, match=r"superseded by the panel in cell \[7\], made later"):
        old.run(1)
    late = []
    ownership.watch(old, late.append)  # watching an already superseded trainer: told at once
    assert late == heard


def test_the_registry_holds_trainers_and_watchers_weakly():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    trainer = params_trainer(a, b)

    class Watcher:
        def on(self, event):
            pass

    watcher = Watcher()
    ownership.watch(trainer, watcher.on)
    refs = weakref.ref(trainer), weakref.ref(watcher)
    del trainer, watcher
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_a_newer_panel_supersedes_the_old_one_which_says_so_with_its_controls_off():
    from tapemagic import TrainingPanel

    a, b = tf.Variable(0.0), tf.Variable(0.0)
    kw = {"params": [a, b], "predict": lambda x: a * x + b, "loss": "mse", "data": (X, Y)}
    old = TrainingPanel(**kw, learning_rate=0.1, seed=0, view="widget")
    old.train(10**7)
    until(old.trainer, 3)
    new = TrainingPanel(**kw, learning_rate=0.1, seed=0, view="widget")
    assert not old.trainer.running and old.trainer.superseded_by is new.trainer
    assert "superseded by the panel " in old.messages.value
    old.refresh()  # a later refresh (the log-scale box, say) keeps them off
    off = [c.disabled for c in (old.train_button, old.step_button, old.reset_button)]
    assert off == [True, True, True]
    with pytest.raises(RuntimeError, match=r"^this panel was superseded by the panel .*: train"):
        old.train(1)
    assert not new.train_button.disabled
    new.run(2)
    assert new.trainer.epoch == 2
    with pytest.raises(RuntimeError, match="^this Trainer was superseded by the panel"):
        TrainingPanel(old.trainer, view="widget")  # a panel on the superseded trainer


def test_a_panel_changing_its_device_is_not_superseded_by_its_own_new_trainer():
    from tapemagic import TrainingPanel

    a, b = tf.Variable(0.0), tf.Variable(0.0)
    p = TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b, loss="mse", data=(X, Y), view="widget"
    )
    first = p.trainer
    p.device.value = "auto"  # the device menu makes a new Trainer on the same variables
    assert p.trainer is not first and first.superseded_by is p.trainer
    assert not p.train_button.disabled and "superseded" not in p.messages.value
    p.run(2)
    assert p.trainer.epoch == 2


# -- Ctrl-C in a main-thread run -------------------------------------------------------


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_ctrl_c_stops_a_main_thread_run_between_steps_with_one_short_keyboard_interrupt():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    trainer = params_trainer(a, b)
    before = signal.getsignal(signal.SIGINT)

    def interrupt(record):  # in the training (main) thread, as a terminal's Ctrl-C would
        if record.epoch == 3:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.add_listener(interrupt)
    with pytest.raises(KeyboardInterrupt) as err:
        trainer.run(10**7)
    trainer.remove_listener(interrupt)
    n = trainer.epoch
    assert str(err.value) == f"training stopped at epoch {n}" and 3 < n < 10**7
    frames = [f.name for f in err.traceback]
    assert frames[-1] == "run" and "_train" not in frames  # raised by run itself
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
    assert len(trainer.history) == n and not trainer.running and trainer.error is None
    assert np.isfinite(list(trainer.param_values().values())).all()
    trainer.run(2)
    assert trainer.epoch == len(trainer.history) == n + 2


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_ctrl_c_during_a_blocking_panel_run_outside_a_kernel(capsys):
    from tapemagic import TrainingPanel

    a, b = tf.Variable(0.0), tf.Variable(0.0)
    p = TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b, loss="mse", data=(X, Y), view="text"
    )
    sent = []

    def interrupt(record):  # in the panel's worker: the signal goes to the main thread
        if record.epoch == 3 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))

    p.trainer.add_listener(interrupt)
    with pytest.raises(KeyboardInterrupt) as err:
        p.run(10**7)
    n = p.trainer.epoch
    assert str(err.value) == f"training stopped at epoch {n}" and 3 < n < 10**7
    files = {os.path.basename(f.path) for f in err.traceback}
    assert "threading.py" not in files and [f.name for f in err.traceback][-1] == "run"
    assert not p.trainer.running and len(p.trainer.history) == n
    assert f"interrupted at epoch {n}" in list(p.trainer.messages)
    p.run(2)
    assert p.trainer.epoch == len(p.trainer.history) == n + 2


# -- a real kernel -----------------------------------------------------------------------


@dataclass
class Reply:
    """What a frontend shows for one executed cell."""

    stdout: str
    count: int  # the cell's execution count, "[N]"
    error: dict | None = None  # ename, evalue, traceback
    seen: list[str] = field(default_factory=list)  # every stream text, from any thread


class Kernel:
    """One ipykernel, driven as a frontend drives it."""

    def __init__(self, km, kc):
        self.km, self.kc = km, kc

    def run(self, code: str, interrupt_after: str | None = None, timeout: float = 180) -> Reply:
        """Execute `code`; with `interrupt_after`, press Interrupt once that text has been
        printed (by the cell or a thread it started)."""
        msg_id = self.kc.execute(code)
        out, seen, error, sent = [], [], None, False
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            kind, content = msg["msg_type"], msg["content"]
            mine = msg["parent_header"].get("msg_id") == msg_id
            if kind == "stream":
                seen.append(content["text"])
                if mine:
                    out.append(content["text"])
                if interrupt_after and not sent and interrupt_after in "".join(seen):
                    self.km.interrupt_kernel()
                    sent = True
            elif kind == "error" and mine:
                error = content
            elif kind == "status" and mine and content["execution_state"] == "idle":
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        return Reply("".join(out), reply["content"]["execution_count"], error, seen)

    def ok(self, code: str, **kw) -> str:
        reply = self.run(code, **kw)
        assert reply.error is None, "\n".join(reply.error["traceback"])
        return reply.stdout

    def value(self, expr: str):
        """A Python literal computed in the kernel."""
        import ast

        return ast.literal_eval(self.ok(f"print(repr({expr}))").strip())

    def click(self, button: str) -> None:
        """Press a widget Button as JupyterLab does: a comm message to its model."""
        model_id = self.value(f"{button}.model_id")
        data = {"method": "custom", "content": {"event": "click"}}
        msg = self.kc.session.msg("comm_msg", {"comm_id": model_id, "data": data})
        self.kc.shell_channel.send(msg)


SETUP = """
import threading, time, signal
import numpy as np, tensorflow as tf, keras
from tapemagic import Trainer, TrainingPanel
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 2)).astype("float32")
Y = (X @ np.array([[1.5], [-2.0]], "float32") + 0.5).astype("float32")
def make_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
def trainers():
    return [t.name for t in threading.enumerate()].count("tapemagic-train")
def wait_epochs(p, n):
    t = p.trainer if hasattr(p, "trainer") else p
    while t.epoch < n and (t.running or t.epoch == 0) and p.error is None:
        time.sleep(0.01)
def state(t):
    w = np.concatenate([np.ravel(v.numpy()) for v in t.variables])
    return [t.epoch, len(t.history), t.running, bool(np.isfinite(w).all()),
            bool(np.isfinite(t.history["loss"]).all())]
print("ready")
"""

PANEL = (
    "p = TrainingPanel(model=model, loss='mse', data=(X, Y), optimizer='adam', "
    "learning_rate=0.01, batch_size=16, seed=0, epochs=10**6)\np"
)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("kernel")))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        k = Kernel(km, kc)
        assert "ready" in k.ok(SETUP)
        yield k
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_rerunning_a_panel_cell_while_it_trains_leaves_one_training_thread(kernel):
    kernel.ok("model = make_model()")
    kernel.ok(PANEL)
    kernel.click("p.train_button")
    kernel.ok("wait_epochs(p, 3); old = p; print(trainers())")
    rerun = kernel.run(PANEL)  # the same cell again, as Shift-Enter does
    assert rerun.error is None
    assert kernel.value("[old is not p, old.trainer.running, trainers()]") == [True, False, 0]
    assert kernel.value("state(old.trainer)")[2:] == [False, True, True]
    # The old panel says why and offers nothing to press.
    message = kernel.value("old.messages.value")
    assert f"superseded by the panel in cell [{rerun.count}]" in message
    controls = (
        "old.train_button, old.pause_button, old.step_button, old.stop_button, "
        "old.reset_button, old.epochs, old.learning_rate, old.optimizer, old.batch_size"
    )
    assert kernel.value(f"[c.disabled for c in [{controls}]]") == [True] * 9
    kernel.click("p.train_button")  # the new panel trains: one thread, the new one
    kernel.ok("wait_epochs(p, 3)")
    now = kernel.value("[trainers(), p.trainer.running, p.train_button.disabled]")
    assert now == [1, True, True]
    kernel.ok("p.stop(); assert p.wait(60)")
    assert kernel.value("trainers()") == 0


def test_rerunning_a_train_magic_cell_keeps_the_loss_on_the_single_trainer_curve(kernel):
    kernel.ok("model = make_model(); w0 = [w.numpy() for w in model.weights]")
    magic = (
        "%train --model model --loss mse --data X,Y --optimizer adam --lr 0.05 "
        "--batch-size 16 --seed 0 --epochs 1000000"
    )
    kernel.ok(magic)
    kernel.ok("first = _panel")
    kernel.click("first.train_button")
    kernel.ok("wait_epochs(first, 5)")
    kernel.ok(magic)  # re-run while the first panel trains
    kernel.ok("second = _panel")
    first_epochs = kernel.value("[first.trainer.epoch, first.trainer.batch, first.trainer.running]")
    epochs, batch, running = first_epochs
    assert batch == 0 and not running and epochs >= 5
    kernel.click("second.train_button")  # Train on the new panel
    kernel.ok("wait_epochs(second, 20); second.stop(); assert second.wait(60)")
    assert kernel.value("trainers()") == 0
    # The same story headless: the first trainer's epochs, then a fresh one (a new Adam).
    kernel.ok(
        "ref = make_model(); ref.set_weights(w0)\n"
        "args = dict(model=ref, loss='mse', data=(X, Y), optimizer='adam', "
        "learning_rate=0.05, batch_size=16, seed=0)\n"
        f"r1 = Trainer(**args); r1.run({epochs})\n"
        "r2 = Trainer(**args); r2.run(len(second.trainer.history))"
    )
    first_loss, ref1 = kernel.value(
        "[list(first.trainer.history['loss']), list(r1.history['loss'])]"
    )
    second_loss, ref2 = kernel.value(
        "[list(second.trainer.history['loss']), list(r2.history['loss'])]"
    )
    assert len(second_loss) >= 20
    np.testing.assert_allclose(first_loss, ref1, rtol=1e-5)
    np.testing.assert_allclose(second_loss, ref2, rtol=1e-5)


def test_interrupt_stops_a_button_started_run_and_a_new_run_continues(kernel):
    kernel.ok("model = make_model()")
    kernel.ok(PANEL)
    kernel.click("p.train_button")
    kernel.ok("wait_epochs(p, 3)")
    kernel.km.interrupt_kernel()  # the kernel is idle: the toolbar's stop button
    kernel.ok("assert p.wait(60), 'still training'")  # a bound for a hang, not a speed
    epoch, n, running, finite_w, finite_loss = kernel.value("state(p.trainer)")
    assert (epoch == n >= 3, running, finite_w, finite_loss) == (True, False, True, True)
    assert f"interrupted at epoch {epoch}" in kernel.value("p.messages.value")
    assert kernel.value("[trainers(), p.train_button.disabled, p.error]") == [0, False, None]
    # A new run continues from there: same history, three more epochs.
    kernel.ok("p.run(3)")
    assert kernel.value("state(p.trainer)") == [epoch + 3, epoch + 3, False, True, True]
    # With no run left, the kernel's own Interrupt handling is back: a busy cell gets its
    # KeyboardInterrupt, and an idle kernel ignores Interrupt as before.
    busy = kernel.run("print('sleeping', flush=True); time.sleep(60)", interrupt_after="sleeping")
    assert busy.error["ename"] == "KeyboardInterrupt"
    assert kernel.value("get_ipython().kernel.saved_sigint_handler == signal.SIG_IGN")
    kernel.km.interrupt_kernel()
    assert kernel.value("1 + 1") == 2


def test_interrupt_during_a_busy_cell_stops_the_button_run_too(kernel):
    kernel.ok("model = make_model()")
    kernel.ok(PANEL)
    kernel.click("p.train_button")
    kernel.ok("wait_epochs(p, 3)")
    busy = kernel.run("print('waiting', flush=True); time.sleep(60)", interrupt_after="waiting")
    assert busy.error["ename"] == "KeyboardInterrupt"  # the cell's own, as without a panel
    kernel.ok("assert p.wait(60), 'still training'")  # a bound for a hang, not a speed
    epoch = kernel.value("p.trainer.epoch")
    assert kernel.value("state(p.trainer)") == [epoch, epoch, False, True, True]
    assert f"interrupted at epoch {epoch}" in kernel.value("p.messages.value")


@pytest.mark.parametrize(
    "call", ["p.run(10**6)", "p.trainer.run(10**6)"], ids=["panel.run", "trainer.run"]
)
def test_interrupt_stops_a_blocking_run_with_one_short_keyboard_interrupt(kernel, call):
    kernel.ok("model = make_model()")
    kernel.ok(PANEL)
    cell = (
        "p.trainer.add_listener(lambda r: r.epoch == 3 and print('epoch 3 done', flush=True))\n"
        + call
    )
    reply = kernel.run(cell, interrupt_after="epoch 3 done")
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    match = re.fullmatch(r"training stopped at epoch (\d+)", reply.error["evalue"])
    assert match, reply.error["evalue"]
    traceback = "\n".join(reply.error["traceback"])
    assert "threading" not in traceback and "_train" not in traceback
    stopped = int(match.group(1))
    assert kernel.value("state(p.trainer)") == [stopped, stopped, False, True, True]
    assert kernel.value("trainers()") == 0
    kernel.ok("p.run(3)")
    assert kernel.value("state(p.trainer)") == [stopped + 3, stopped + 3, False, True, True]
