"""The training panel driven as a user would: buttons clicked while a run is in progress,
the slider moved mid-run, the plot and the progress read back."""

from __future__ import annotations

import base64
import html
import re
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from IPython.utils.capture import capture_output

from tapemagic.display.lossplot import LossPlot, smooth, thin
from tapemagic.jupyter.panel import TrainingPanel

X = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
SGD_LOSSES = [19.457, 8.134604, 4.186867, 2.8102624, 2.330071, 2.1624107]
ADAM_LOSSES = [19.457, 10.991247, 5.402445, 2.563472, 2.0541918]
WAIT = 10.0


def sum_sq(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred))


def seed_panel(**kwargs):
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    panel = TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b, loss=sum_sq,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", view="widget",
        **{"learning_rate": 0.001, **kwargs},
    )  # fmt: skip
    return panel, a, b


def images_in(root) -> list:
    """Every Image widget in the panel's widget tree."""
    found, todo = [], [root]
    while todo:
        item = todo.pop()
        found += [item] if type(item).__name__ == "Image" else []
        todo.extend(getattr(item, "children", ()))
    return found


def until(condition, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def panel():
    made = []

    def make(**kwargs):
        p, a, b = seed_panel(**kwargs)
        made.append(p)
        return p, a, b

    yield make
    for p in made:
        p.close()


def test_seed_sgd_table_through_the_panel(panel):
    p, a, b = panel(epochs=6)
    p.run()
    np.testing.assert_allclose(p.trainer.history["loss"], SGD_LOSSES, rtol=1e-5)
    np.testing.assert_allclose([a.numpy(), b.numpy()], [0.2729075, 0.05813503], rtol=1e-5)
    assert "a" in p.params.value and "0.272907" in p.params.value
    assert bytes(p.plot.value).startswith(b"\x89PNG")
    assert "stopped · epoch 6" in p.status.value and "loss 2.16241" in p.status.value


def test_seed_adam_table_through_the_panel():
    model = keras.Sequential(
        [keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros")]
    )
    p = TrainingPanel(
        model=model, loss=sum_sq, data=(tf.constant(X)[:, None], tf.constant(Y)[:, None]),
        optimizer="adam", learning_rate=0.07, epochs=5, view="widget",
    )  # fmt: skip
    try:
        p.run()
        np.testing.assert_allclose(p.trainer.history["loss"], ADAM_LOSSES, rtol=1e-4)
        assert p.optimizer.value == "adam"
    finally:
        p.close()


def test_every_button_while_a_run_is_in_progress(panel):
    p, a, b = panel(epochs=10**7)
    p.train_button.click()
    until(lambda: p.trainer.epoch > 100)
    assert p.train_button.disabled and not p.stop_button.disabled

    p.pause_button.click()  # pause: the epoch counter stops
    until(lambda: p.trainer.paused)
    held = p.trainer.epoch
    time.sleep(0.3)
    assert p.trainer.epoch == held
    until(lambda: p.pause_button.description == "Resume")

    p.step_button.click()  # step: exactly one more epoch, then hold again
    until(lambda: p.trainer.epoch == held + 1 and p.trainer.paused)
    time.sleep(0.3)
    assert p.trainer.epoch == held + 1

    p.pause_button.click()  # resume: it goes on
    until(lambda: p.trainer.epoch > held + 100)

    p.stop_button.click()  # stop: the run ends, between steps
    assert p.wait(WAIT) and not p.trainer.running
    n = len(p.trainer.history)
    assert n == p.trainer.epoch and np.isfinite(p.trainer.history["loss"]).all()
    until(lambda: p.train_button.disabled is False and p.stop_button.disabled)

    p.reset_button.click()  # reset: the first weights, an empty history
    assert (a.numpy(), b.numpy()) == (0.0, 0.0) and len(p.trainer.history) == 0
    assert "epoch 0" in p.status.value


def test_reset_during_a_run_stops_it_first(panel):
    p, a, b = panel(epochs=10**7)
    p.train_button.click()
    until(lambda: p.trainer.epoch > 10)
    p.reset_button.click()
    assert not p.trainer.running and (a.numpy(), b.numpy()) == (0.0, 0.0)
    assert len(p.trainer.history) == 0 and p.status.value.startswith("stopped · epoch 0")
    assert not p.train_button.disabled and p.stop_button.disabled


def test_step_when_idle_trains_one_epoch(panel):
    p, a, b = panel()
    p.step_button.click()
    assert p.wait(WAIT) and len(p.trainer.history) == 1 and not p.trainer.running
    assert "epoch 1" in p.status.value
    p.step_button.click()
    assert p.wait(WAIT) and len(p.trainer.history) == 2
    np.testing.assert_allclose(p.trainer.history["loss"], SGD_LOSSES[:2], rtol=1e-5)


def test_learning_rate_slider_changes_the_rate_mid_run(panel):
    p, a, b = panel(epochs=10**7)
    p.train_button.click()
    until(lambda: p.trainer.epoch > 50)
    p.learning_rate.value = 0.0001
    until(lambda: p.trainer.history.last.learning_rate == pytest.approx(0.0001))
    p.stop_button.click()
    p.wait(WAIT)
    rates = p.trainer.history["learning_rate"]
    assert rates[0] == pytest.approx(0.001) and rates[-1] == pytest.approx(0.0001)
    switch = rates.index(rates[-1])
    assert all(r == pytest.approx(0.001) for r in rates[:switch])  # no epoch half-changed


def test_optimizer_and_batch_size_apply_when_stopped(panel):
    p, a, b = panel(epochs=10**7)
    p.train_button.click()
    until(lambda: p.trainer.epoch > 10)
    assert p.optimizer.disabled and p.batch_size.disabled  # set them when stopped
    p.stop_button.click()
    p.wait(WAIT)
    p.optimizer.value = "adam"
    p.batch_size.value = 8
    assert type(p.trainer.optimizer).__name__ == "Adam" and p.trainer.batch_size == 8
    assert p.batch_size.label == "8"
    p.batch_size.value = 0  # "all": the whole data in each step
    assert p.trainer.batch_size is None and p.batch_size.label == "all"


def test_device_lists_what_tensorflow_sees(panel):
    p, a, b = panel()
    seen = [d.name.replace("/device:", "/") for d in tf.config.list_logical_devices()]
    assert p.device.options == ("auto", *seen) and "/CPU:0" in seen
    chosen = "/GPU:0" if "/GPU:0" in seen else "/CPU:0"  # auto: the first GPU, else the CPU
    assert p.device.value == chosen
    p.run(2)
    p.device.value = "auto"  # history exists: refused, with a message
    assert p.device.value == chosen
    assert "press Reset first" in p.messages.value


def test_nan_pauses_with_a_message(panel):
    p, a, b = panel(epochs=50, learning_rate=1.0)  # diverges to Inf, then NaN
    with pytest.warns(Warning):
        p.run()
    assert p.trainer.fault is not None
    epoch = p.trainer.fault.epoch
    assert f"Training paused at epoch {epoch}: loss is inf" in p.messages.value
    assert "Weights restored to the last finite step" in p.messages.value
    until(lambda: "paused by a NaN/Inf" in p.status.value)
    assert p.pause_button.description == "Resume" and not p.pause_button.disabled
    p.learning_rate.value = 1e-5  # lower the rate, then Resume: the run carries on
    p.pause_button.click()
    p.wait(WAIT)
    assert p.trainer.fault is None and p.trainer.epoch == 50
    assert np.isfinite(p.trainer.history["loss"]).all()
    assert np.isfinite([a.numpy(), b.numpy()]).all()  # the last finite weights are back


def test_exception_in_user_code_then_a_new_run(panel):
    broken = {"now": False}
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    def flaky_loss(y_true, y_pred):
        if broken["now"]:
            raise RuntimeError("flaky loss")
        return sum_sq(y_true, y_pred)

    p = TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b, loss=flaky_loss,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", learning_rate=0.001,
        epochs=3, view="widget",
    )  # fmt: skip
    try:
        broken["now"] = True
        p.run()
        assert "flaky loss" in str(p.error)
        assert "<b>error</b> at epoch 0: RuntimeError: flaky loss" in p.messages.value
        assert "stopped by an error" not in p.messages.value  # said once, in the error line
        # One line: not TensorFlow's "in user code:" traceback through tapemagic's files.
        assert "in user code" not in p.messages.value and "File " not in p.messages.value
        assert len(p.trainer.history) == 0 and (a.numpy(), b.numpy()) == (0.0, 0.0)
        broken["now"] = False
        p.run()
        np.testing.assert_allclose(p.trainer.history["loss"], SGD_LOSSES[:3], rtol=1e-5)
        assert p.error is None and "<b>error</b>" not in p.messages.value
    finally:
        p.close()


def test_long_histories_keep_the_plot_bounded():
    plot = LossPlot()
    loss = np.exp(-np.linspace(0, 5, 100_000)) + 0.01 * np.random.default_rng(0).random(100_000)
    png = plot.render(loss, [None] * 100_000, log_scale=True, smoothing=0.5)
    assert png.startswith(b"\x89PNG") and plot.points_drawn() <= 2000
    png = plot.render(loss, loss * 1.1, smoothing=0.5)  # two lines, each thinned
    assert png.startswith(b"\x89PNG") and plot.points_drawn() <= 4000
    x, y = thin(np.arange(100_000.0), loss)
    assert len(y) <= 2000 and y.max() == loss.max() and y.min() == loss.min()


def test_empty_and_non_positive_histories_render_on_a_log_scale():
    plot = LossPlot()
    assert plot.render([], [], log_scale=True).startswith(b"\x89PNG")
    assert plot.render([0.0, -1.0], [None, None], log_scale=True).startswith(b"\x89PNG")
    assert plot.render([float("nan"), float("inf")], [], log_scale=False).startswith(b"\x89PNG")


def test_smoothing_matches_the_running_average():
    y = np.random.default_rng(1).random(1000)
    expected, acc, norm = [], 0.0, 0.0
    for v in y:
        acc, norm = 0.6 * acc + 0.4 * v, 0.6 * norm + 0.4
        expected.append(acc / norm)
    np.testing.assert_allclose(smooth(y, 0.6), expected, rtol=1e-12)


def test_plot_image_changes_in_place(panel):
    p, a, b = panel(epochs=3)
    image = p.plot
    assert images_in(p.widget) == [image]  # one Image in the panel: the plot
    first = image.value
    p.run()
    assert bytes(image.value) != bytes(first) and bytes(image.value).startswith(b"\x89PNG")
    linear = bytes(image.value)
    p.log_scale.value = True
    assert bytes(image.value).startswith(b"\x89PNG") and bytes(image.value) != linear
    assert p.plot is image and images_in(p.widget) == [image]  # the same widget, new bytes


def test_a_100000_epoch_run_keeps_the_plot_bounded(panel):
    p, a, b = panel(epochs=100_000)
    p.run()
    h = p.trainer.history
    assert len(h) == 100_000
    # The picture shown is the whole history drawn thinned: one line (no validation).
    plot = LossPlot()
    assert bytes(p.plot.value) == plot.render(h["loss"], h["val_loss"])
    assert plot.points_drawn() <= 2000


def test_twenty_panels_leave_no_thread_running():
    before = set(threading.enumerate())
    for _ in range(20):
        p, a, b = seed_panel(epochs=10**7)
        p.train_button.click()
        p.close()
    time.sleep(0.2)
    left = [t for t in threading.enumerate() if t not in before and t.name.startswith("tapemagic")]
    assert left == []


def test_text_view_prints_one_line_per_epoch(capsys):
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    p = TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b, loss=sum_sq,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", learning_rate=0.001,
        epochs=3, view="text",
    )  # fmt: skip
    p.run()
    p.close()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch")]
    assert lines[0].startswith("epoch 0  loss 19.457  a = 0.1169  b = 0.02392")
    assert len(lines) == 3


def test_train_magic_builds_a_panel(ip):
    run(
        ip,
        "X = tf.constant([[1.], [4.], [6], [3], [3], [4], [5], [6], [7]])\n"
        "Y = tf.constant([[0.25], [1.2], [0.79], [0.52], [1.6], [1.7], [1.9], [2], [2]])\n"
        "model = tf.keras.Sequential([tf.keras.layers.Dense(1, kernel_initializer='zeros')])\n"
        "def loss_fn(y_true, y_pred):\n    return tf.reduce_sum(tf.square(y_true - y_pred))",
    )
    with capture_output() as cap:
        run(
            ip,
            "%train --model model --loss loss_fn --data X,Y --optimizer adam --lr 0.07 --epochs 5",
        )
    p = ip.user_ns["_panel"]
    try:
        assert isinstance(p, TrainingPanel)
        shown = [o.data.get("text/plain", "") for o in cap.outputs]
        assert len(shown) == 1 and shown[0].startswith("TrainingPanel(")  # shown, once
        assert p.optimizer.value == "adam" and p.epochs.value == 5
        assert p.learning_rate.value == pytest.approx(0.07)
        p.run()
        np.testing.assert_allclose(p.trainer.history["loss"], ADAM_LOSSES, rtol=1e-4)
    finally:
        p.close()


def test_bad_epochs(panel):
    p, a, b = panel()
    for bad in (-3, 0, 10**13, 2.5, True):
        expected = f"epochs must be a whole number from 1 to 1,000,000,000,000, not {bad!r}"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            p.run(bad)
    assert len(p.trainer.history) == 0 and not p.trainer.running
    with pytest.raises(ValueError, match="not 0$"):  # refused before taking a, b over
        TrainingPanel(
            params=[a, b], predict=lambda x: a * x + b, loss=sum_sq,
            data=(tf.constant(X), tf.constant(Y)), epochs=0,
        )  # fmt: skip
    assert "superseded" not in p.messages.value and not p.train_button.disabled


def test_train_magic_bad_input(ip):
    with capture_output() as cap:
        result = ip.run_cell("%train --model m --loss mse --data X,Y --epochs 0")
    assert "UsageError: --epochs must be 1 or more, not 0" in cap.stdout + cap.stderr
    with capture_output() as cap:
        result = ip.run_cell("%train --model nope --loss mse --data X,Y")
    assert not result.success
    assert (
        cap.stdout + cap.stderr
    ).strip() == "UsageError: --model nope: no such name; define it first"


def test_errors_from_compiled_code_keep_the_users_message():
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    def predict(x):  # fails inside the compiled loop once a has moved (epoch 1)
        tf.debugging.Assert(a < 0.05, ["user boom"])
        return a * x + b

    p = TrainingPanel(
        params=[a, b], predict=predict, loss=sum_sq, data=(tf.constant(X), tf.constant(Y)),
        optimizer="sgd", learning_rate=0.001, epochs=3, view="widget",
    )  # fmt: skip
    try:
        p.run()
        shown = p.messages.value
        # The first line of the error, which Trainer.run makes the user's own message and
        # line: the panel shows that line, with the error's type.
        first = str(p.error).splitlines()[0]
        assert first.startswith("user boom") and "test_panel.py" in first
        assert f"<b>error</b> at epoch 1: InvalidArgumentError: {html.escape(first)}</div>" in shown
        assert "stopped by an error" not in shown  # said once, in the error line
        for noise in ("Graph execution error", "Detected at node", "File ", "[[", "[Op:"):
            assert noise not in shown, noise
        assert len(p.trainer.history) == 1 and "stopped · epoch 1" in p.status.value
    finally:
        p.close()


# -- an honest status -------------------------------------------------------------------


def test_reset_shows_epoch_0_nothing_of_the_last_run_and_an_empty_plot(panel):
    p, a, b = panel(epochs=6)
    empty = bytes(p.plot.value)
    plot = LossPlot()
    assert empty == plot.render([], [])  # sensible axes: epochs 1 to 10, "no epochs yet"
    assert plot.axes.get_xlim() == (0.0, 10.5) and plot.empty_text.get_visible()
    assert p.status.value == "stopped · epoch 0 · lr 0.001"
    p.run()
    assert p.status.value.startswith("stopped · epoch 6 (6/6 this run) · elapsed ")
    assert "epochs/s" in p.status.value and p.progress.value == 6
    p.reset_button.click()
    assert p.status.value == "stopped · epoch 0 · lr 0.001"  # no elapsed, no rate
    assert p.progress.value == 0 and bytes(p.plot.value) == empty
    p.reset_button.click()  # said once, with a count, not twice
    assert p.messages.value.count("reset to the initial weights") == 1
    assert "reset to the initial weights (×2)" in p.messages.value


def test_elapsed_leaves_out_paused_time_and_stops_with_the_run(panel):
    p, a, b = panel(epochs=10**7)
    p.train_button.click()
    until(lambda: p.trainer.epoch > 100)
    p.pause_button.click()
    until(lambda: p.status.value.startswith("paused at epoch"))
    held = p.status.value
    time.sleep(1.2)  # more than the one-second resolution of "elapsed"
    p.refresh()
    assert p.status.value == held  # neither the epoch, the elapsed time nor the rate moved
    assert int(re.search(r"paused at epoch ([\d,]+)", held)[1].replace(",", "")) == len(
        p.trainer.history
    )
    p.stop_button.click()
    assert p.wait(WAIT)
    until(lambda: p.status.value.startswith("stopped"))
    stopped = p.status.value
    time.sleep(1.2)
    p.log_scale.value = True  # the view refreshes; the run is over, so nothing moves
    assert p.status.value == stopped


def gated_panel(gate: threading.Event, inside: threading.Event, **kwargs) -> TrainingPanel:
    """The seed's panel whose steps wait at `gate` (set: they pass), flagging `inside`."""

    def at_gate():
        inside.set()
        gate.wait(WAIT)
        return np.float32(0.0)

    a, b = tf.Variable(0.0), tf.Variable(0.0)
    return TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b + tf.numpy_function(at_gate, [], tf.float32),
        loss=sum_sq, data=(tf.constant(X), tf.constant(Y)), optimizer="sgd",
        learning_rate=0.001, view="widget", **kwargs,
    )  # fmt: skip


def test_pausing_until_the_run_holds_then_paused_at_epoch_n():
    gate, inside = threading.Event(), threading.Event()
    gate.set()
    p = gated_panel(gate, inside, epochs=10**7)
    try:
        p.train_button.click()
        until(lambda: p.trainer.epoch > 3)
        gate.clear()
        inside.clear()
        until(inside.is_set)  # a step is held inside a compiled call: it cannot pause yet
        p.pause_button.click()
        assert p.status.value.startswith("pausing · epoch ")
        assert p.pause_button.description == "Resume"
        gate.set()
        until(lambda: p.status.value.startswith("paused at epoch"))
        n = int(re.search(r"paused at epoch ([\d,]+)", p.status.value)[1].replace(",", ""))
        assert n == p.trainer.epoch == len(p.trainer.history)
        time.sleep(0.3)
        p.refresh()
        assert p.status.value.startswith(f"paused at epoch {n:,} ")
    finally:
        gate.set()
        p.close()


def test_learning_rate_in_the_status_and_a_slider_change_said_once(panel):
    p, a, b = panel()
    assert "· lr 0.001" in p.status.value
    p.learning_rate.value = 0.01
    assert "· lr 0.01" in p.status.value
    assert p.messages.value.count("learning rate set to 0.01 for the next run") == 1
    p.run(2)
    assert p.trainer.history["learning_rate"] == pytest.approx([0.01, 0.01])
    assert p.messages.value.count("learning rate set to") == 1  # not repeated by the run
    p.trainer.learning_rate = 0.5  # set from code: the slider follows, without a message
    p.refresh()
    assert p.learning_rate.value == pytest.approx(0.5) and "· lr 0.5" in p.status.value
    assert "learning rate set to 0.5" not in p.messages.value


def test_the_slider_range_holds_the_trainers_rate(panel):
    p, a, b = panel(learning_rate=100.0)
    assert p.learning_rate.value == 100.0 and p.learning_rate.max >= 3
    assert "· lr 100" in p.status.value
    q, a, b = panel(learning_rate=1e-8)
    assert q.learning_rate.value == pytest.approx(1e-8) and q.learning_rate.min <= -10


def test_the_epochs_box_refuses_out_of_range_values_with_a_message(panel):
    p, a, b = panel(epochs=100)
    for bad in (0, -5, 10**13):
        p.epochs.value = bad
        assert p.epochs.value == 100
        assert (
            f"epochs must be a whole number from 1 to 1,000,000,000,000, not {bad}; kept 100"
            in p.messages.value
        )
    p.epochs.value = 10**9  # large, but a number of epochs: kept as typed
    assert p.epochs.value == 10**9


def test_the_fault_message_goes_when_reset_clears_the_fault(panel):
    p, a, b = panel(epochs=50, learning_rate=1.0)
    with pytest.warns(Warning):
        p.run()
    assert "loss is inf" in p.messages.value
    p.reset_button.click()
    assert "loss is inf" not in p.messages.value and "paused by" not in p.status.value
    assert p.trainer.fault is None and p.status.value == "stopped · epoch 0 · lr 1"


# -- a plot that keeps up -----------------------------------------------------------------


def test_the_first_epoch_shows_as_a_marker(panel):
    p, a, b = panel()
    empty = bytes(p.plot.value)
    p.step_button.click()
    assert p.wait(WAIT) and len(p.trainer.history) == 1
    h, plot = p.trainer.history, LossPlot()
    assert bytes(p.plot.value) == plot.render(h["loss"], h["val_loss"])
    assert bytes(p.plot.value) != empty
    assert plot.train_line.get_marker() == "o" and plot.points_drawn() == 1
    plot.render(np.ones(1000))
    assert plot.train_line.get_marker() in ("", "None")  # long histories: a plain line


def test_an_epoch_slower_than_the_redraws_shows_its_progress():
    n = 200_000
    x = np.linspace(0.0, 1.0, n, dtype=np.float32)
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    p = TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b, loss=sum_sq, data=(x, 2 * x),
        batch_size=1, optimizer="sgd", learning_rate=1e-4, epochs=1, view="widget",
    )  # fmt: skip
    try:
        empty = bytes(p.plot.value)
        p.train_button.click()
        inside = r"^running · epoch 0 \(0/1 this run\) · batch [\d,]+/200,000 · elapsed "
        until(lambda: re.search(inside, p.status.value))
        p.stop_button.click()
        assert p.wait(WAIT)
        t = p.trainer
        assert len(t.history) == 0 and 0 < t.batch < n  # stopped inside the first epoch
        assert p.status.value.startswith(f"stopped · epoch 0 (0/1 this run) · batch {t.batch:,}/")
        # The plot shows how far into the epoch the run got: a dotted line, no loss yet.
        assert bytes(p.plot.value) == LossPlot().render([], [], progress=t.batch / n)
        assert bytes(p.plot.value) != empty
    finally:
        p.close()


# -- what a saved notebook and the text view show ----------------------------------------


def test_the_panel_bundle_carries_the_plot_and_a_one_line_summary(panel):
    p, a, b = panel(epochs=6)
    p.run()
    bundle = p._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # live frontends: the widget
    assert base64.b64decode(bundle["image/png"]) == bytes(p.plot.value)
    assert bundle["text/plain"] == f"TrainingPanel: {html.unescape(p.status.value)}"
    assert bundle["text/plain"].startswith("TrainingPanel: stopped · epoch 6 (6/6 this run)")
    assert "\n" not in bundle["text/plain"]


SAVED_CELLS = [
    "import tensorflow as tf\n"
    "from tapemagic import TrainingPanel\n"
    "a, b = tf.Variable(0.0), tf.Variable(0.0)\n"
    "X = tf.constant([1.0, 4.0, 6, 3, 3, 4, 5, 6, 7])\n"
    "Y = tf.constant([0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2])\n"
    "panel = TrainingPanel(params=[a, b], predict=lambda x: a * x + b,\n"
    "    loss=lambda t, p: tf.reduce_sum(tf.square(t - p)), data=(X, Y), optimizer='sgd',\n"
    "    learning_rate=0.001, epochs=3)\n"
    "panel",
    "history = panel.run()\nprint(repr(history['loss']))",
]


def test_a_saved_notebook_shows_the_plot_and_summary_without_a_kernel():
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in SAVED_CELLS])
    # Saved as JupyterLab saves by default: the outputs, without the widgets' state.
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False).execute()
    shown = [o for o in nb.cells[0].outputs if o.output_type == "display_data"]
    assert len(shown) == 1  # one output, updated in place when the run ended
    data = shown[0].data
    assert "application/vnd.jupyter.widget-view+json" in data  # live frontends: the widget
    assert data["text/plain"].startswith("TrainingPanel: stopped · epoch 3 (3/3 this run)")
    printed = [o.text for o in nb.cells[1].outputs if o.get("name") == "stdout"]
    losses = [float(v) for v in printed[0].strip(" []\n").split(",")]  # the kernel's history
    assert base64.b64decode(data["image/png"]) == LossPlot().render(losses, [None] * 3)
    # What nbconvert (and so nbviewer) renders from the saved file: the picture, no widget
    # placeholder.
    page, _ = HTMLExporter().from_notebook_node(nb)
    assert f'src="data:image/png;base64,{data["image/png"]}"' in page.replace("\n", "")
    assert "VBox(children" not in page and "Error displaying widget" not in page


def test_the_text_view_prints_the_error_that_stopped_a_run(capsys):
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    broken = {"now": False}

    def broken_loss(y_true, y_pred):
        if broken["now"]:  # fine when the trainer checks it, broken when the run compiles
            raise RuntimeError("my loss is broken")
        return sum_sq(y_true, y_pred)

    p = TrainingPanel(
        params=[a, b], predict=lambda x: a * x + b, loss=broken_loss,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", learning_rate=0.001,
        epochs=3, view="text",
    )  # fmt: skip
    try:
        broken["now"] = True
        p.run()
    finally:
        p.close()
    out = capsys.readouterr().out
    assert out.count("error at epoch 0: RuntimeError: my loss is broken") == 1


def test_an_error_line_shows_the_cause_not_kerass_argument_list():
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 3), dtype=np.float32), rng.random((32, 1), dtype=np.float32)
    narrow = rng.random((8, 2), dtype=np.float32)  # validation data of the wrong width
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 3"):
        TrainingPanel(
            model=keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), loss="mse",
            data=(x, y), validation_data=(narrow, y[:8]), optimizer="sgd", epochs=2,
        )  # fmt: skip
    broken = {"now": False}

    class Checked(keras.layers.Layer):
        def call(self, inputs, **kwargs):  # Keras lists its arguments after the message
            if broken["now"]:
                raise ValueError("these features do not match the weights")
            return inputs

    model = keras.Sequential([keras.Input((3,)), Checked(), keras.layers.Dense(1)])
    p = TrainingPanel(
        model=model, loss="mse", data=(x, y), optimizer="sgd", learning_rate=0.01, epochs=2,
        view="widget",
    )  # fmt: skip
    try:
        broken["now"] = True  # fails when the run compiles its step
        p.run()
        shown = p.messages.value
        assert "<b>error</b> at epoch 0: ValueError: " in shown
        assert "these features do not match the weights" in shown
        assert "kwargs=" not in shown and "inspect._empty" not in shown
        assert "Arguments received" not in shown
    finally:
        p.close()


def test_close_keeps_the_last_view_with_its_controls_off(panel):
    """A closed panel stays in the notebook as the record of its run (a saved notebook
    shows its plot): its controls are off and it says so; training it again is refused."""
    p, *_ = panel()
    p.run(4)
    png = bytes(p.plot.value)
    p.close()
    assert p.trainer.epoch == 4 and not p.trainer.running
    assert bytes(p.plot.value) == png and p.plot.comm is not None  # model kept
    assert all(b.disabled for b in (p.train_button, p.step_button, p.reset_button))
    assert "closed at epoch 4: make a new panel to train more" in p.messages.value
    p.log_scale.value = True  # the view's own settings still redraw it...
    assert bytes(p.plot.value) != png
    assert p.train_button.disabled  # ...without turning the controls back on
    with pytest.raises(RuntimeError, match="this panel is closed: make a new panel"):
        p.train(3)
    p.close()  # twice is harmless
    assert p.messages.value.count("closed at epoch 4") == 1
