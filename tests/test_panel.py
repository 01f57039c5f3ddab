"""The training panel driven as a user would: buttons clicked while a run is in progress,
the slider moved mid-run, the plot and the progress read back."""

from __future__ import annotations

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
        assert "<b>error</b>: RuntimeError: flaky loss" in p.messages.value
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
    with pytest.raises(ValueError, match="epochs must be a positive whole number, not -3"):
        p.run(-3)
    assert len(p.trainer.history) == 0 and not p.trainer.running


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
        assert "Detected at node" in str(p.error)  # what TensorFlow raises: a node trace
        shown = p.messages.value
        assert "stopped by an error at epoch 1: assertion failed: [user boom]" in shown
        assert "<b>error</b>: assertion failed: [user boom]</div>" in shown
        for noise in ("Graph execution error", "Detected at node", "File ", "[[", "[Op:"):
            assert noise not in shown, noise
        assert len(p.trainer.history) == 1 and "stopped · epoch 1" in p.status.value
    finally:
        p.close()
