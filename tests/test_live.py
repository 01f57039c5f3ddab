"""LivePanel (a Keras callback) and live() (a hand-written loop) on a real IPython shell.

Widgets work without a kernel (their comm falls back to a dummy), so the views really
render; the tests compare what the view holds with what Keras returns and the seed's
numbers, and drive the buttons with `Button.click()`.
"""

from __future__ import annotations

import base64
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run

from tapemagic.jupyter.live import LivePanel, live

X_SEED = np.array([1.0, 4.0, 6, 3, 3, 4, 5, 6, 7], "float32")
Y_SEED = np.array([0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2], "float32")
SEED_SGD = [19.457, 8.134604, 4.186867, 2.8102624, 2.330071, 2.1624107]


def seed_loss(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred))


def mlp(outputs: int = 1) -> keras.Model:
    inp = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    if outputs == 1:
        return keras.Model(inp, keras.layers.Dense(1)(h))
    return keras.Model(inp, [keras.layers.Dense(1, name=f"out{i + 1}")(h) for i in range(outputs)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(640, 8)).astype("float32")
    return x, x.sum(axis=1, keepdims=True).astype("float32")


def test_fit_draws_what_history_returns(ip, data):
    x, y = data
    keras.utils.set_random_seed(0)
    model = mlp()
    model.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    panel = LivePanel(view="widget", batch_size=32)
    h = model.fit(
        x, y, epochs=4, batch_size=32, validation_split=0.25, verbose=0, callbacks=[panel]
    )
    log = panel.log
    assert log.history() == h.history  # loss, mae, val_loss, val_mae: every epoch, exactly
    assert [row.epoch for row in log.rows] == [0, 1, 2, 3]
    # The plot shows History's curves and the running loss within each epoch, batch by batch.
    bx, by = log.batches()
    assert len(bx) == 4 * 15 and bx[14] == 1.0 and by[14] == pytest.approx(h.history["loss"][0])
    plot = panel.live_view._plot  # the lines drawn hold History's values
    assert list(plot.train_line.get_ydata()) == h.history["loss"]
    assert list(plot.val_line.get_ydata()) == h.history["val_loss"]
    png = bytes(panel.live_view.plot.value)
    assert png.startswith(b"\x89PNG")
    status = panel.live_view.status.value
    assert status.startswith("stopped · epoch 4/4") and "samples/s" in status
    assert f"val_loss {h.history['val_loss'][-1]:.6g}" in status and "lr 0.01" in status
    # A saved notebook keeps the final plot and a one-line summary.
    bundle = panel.live_view._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == png
    assert bundle["text/plain"].startswith("LivePanel: stopped · epoch 4/4")
    assert panel.live_view.stop_button.disabled and panel.live_view.pause_button.disabled


def test_seed_model_fit_with_adam(ip):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(keras.optimizers.Adam(0.07), seed_loss)
    panel = LivePanel(view="widget")
    h = model.fit(X_SEED[:, None], Y_SEED[:, None], epochs=5, batch_size=9, verbose=0,
                  callbacks=[panel])  # fmt: skip
    seed_adam = [19.457, 10.991247, 5.402445, 2.563472, 2.0541918]
    assert panel.log.column("loss") == pytest.approx(seed_adam, abs=2e-5)
    assert panel.log.column("loss") == h.history["loss"]
    assert panel.log.batches() == ([], [])  # one batch an epoch: the epoch's dot says it all


def test_early_stopping_and_other_callbacks(ip, data):
    x, y = data
    model = mlp()
    model.compile(keras.optimizers.SGD(0.0), "mse")  # no progress: patience runs out
    panel = LivePanel(view="widget")
    stop = keras.callbacks.EarlyStopping(patience=1)
    h = model.fit(x, y, epochs=20, validation_split=0.2, verbose=0, callbacks=[stop, panel])
    assert len(h.history["loss"]) == 2 and panel.log.history() == h.history
    assert panel.log.messages == ["stopped early by a callback at epoch 2"]
    assert panel.live_view.status.value.startswith("stopped · epoch 2/20")


def test_multi_output_one_line_per_loss(ip, data):
    x, y = data
    model = mlp(outputs=2)
    model.compile("adam", ["mse", "mae"])
    panel = LivePanel(view="widget")
    h = model.fit(x, [y, 2 * y], epochs=2, validation_split=0.25, verbose=0, callbacks=[panel])
    assert panel.log.history() == h.history
    lines = panel.live_view._plot._extra
    assert sorted(lines) == ["out1_loss", "out2_loss", "val_out1_loss", "val_out2_loss"]
    assert lines["val_out1_loss"].get_color() == lines["out1_loss"].get_color()
    assert lines["val_out1_loss"].get_linestyle() == "--"
    legend = [t.get_text() for t in panel.live_view._plot.axes.get_legend().get_texts()]
    assert legend == ["loss", "val_loss", "out1_loss", "out2_loss", "val_out1_loss",
                      "val_out2_loss"]  # fmt: skip


def test_verbose_and_text_view(ip, data, capsys):
    x, y = data
    model = mlp()
    model.compile("adam", "mse")
    panel = LivePanel(view="text")
    h = model.fit(x, y, epochs=2, verbose=2, callbacks=[panel])
    out = capsys.readouterr().out
    assert out.count("Epoch ") == 2  # Keras's own lines, nothing of ours
    assert panel.live_view is None and panel.log.history() == h.history


def test_stop_button_during_fit(ip, data):
    x, y = data
    model = mlp()
    model.compile("adam", "mse")
    panel = LivePanel(view="widget")

    class ClickStop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if panel.log.batches_run == 7:
                panel.live_view.stop_button.click()

    h = model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[panel, ClickStop()])
    # Clicked in batch 7's hook, after LivePanel's: fit ends after batch 8, the next.
    assert panel.log.batches_run == 8 and len(h.history["loss"]) == 1
    assert panel.log.messages == ["stopped at epoch 1 after batch 8 of 20 (Stop)"]
    assert panel.log.column("loss") == h.history["loss"]


def test_a_fit_that_raises_leaves_no_view_running(ip, data):
    """Keras calls no on_train_end when fit raises: the view sees fit gone from its thread,
    says so, turns its buttons off and stops refreshing; a stale SIGINT handler steps aside."""
    x, y = data
    model = mlp()
    model.compile("adam", "mse")
    panel = LivePanel(view="widget")

    class Fails(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="a callback failed"):
        model.fit(x, y, epochs=5, batch_size=256, verbose=0, callbacks=[panel, Fails()])
    view = panel.live_view
    _until(lambda: not panel.log.running and view._thread is not None)
    view._thread.join(timeout=10)
    assert not view._thread.is_alive()
    assert panel.log.messages == ["fit ended with an error at epoch 2"]
    assert view.status.value.startswith("stopped")
    assert view.stop_button.disabled and view.pause_button.disabled
    assert "fit ended with an error at epoch 2" in view.messages.value
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is not swallowed by the stale handler
        panel._on_sigint(2, None)


def seed_loop(board, epochs: int = 6) -> tuple[tf.Variable, tf.Variable]:
    """The tutorial's loop, with the three added lines (the with, log, and stop)."""
    X, Y = tf.constant(X_SEED), tf.constant(Y_SEED)
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    for epoch in range(epochs):
        with tf.GradientTape(persistent=True) as tape:
            loss = seed_loss(Y, a * X + b)
        board.log(epoch=epoch, loss=loss)
        a.assign_sub(tape.gradient(loss, a) * 0.001)
        b.assign_sub(tape.gradient(loss, b) * 0.001)
        if board.stop_requested:
            break
    return a, b


def test_live_reproduces_the_seed_sgd_table(ip, capsys):
    with live(view="text") as board:
        a, b = seed_loop(board)
    assert board.history()["loss"] == pytest.approx(SEED_SGD, abs=1e-6)
    assert board.epochs == [0, 1, 2, 3, 4, 5]
    assert (float(a), float(b)) == pytest.approx((0.2729075, 0.05813503), abs=1e-7)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "epoch 0  loss 19.457" and printed[-1] == "epoch 5  loss 2.162411"


def test_live_widget_view_and_stop(ip):
    with live(epochs=2000, view="widget") as board:
        view = board.live_view

        def click_when(epoch):
            if len(board.record.rows) == epoch:
                view.stop_button.click()

        X, Y = tf.constant(X_SEED), tf.constant(Y_SEED)
        a, b = tf.Variable(0.0), tf.Variable(0.0)
        for epoch in range(2000):
            with tf.GradientTape() as tape:
                loss = seed_loss(Y, a * X + b)
            ga, gb = tape.gradient(loss, [a, b])
            a.assign_sub(0.001 * ga)
            b.assign_sub(0.001 * gb)
            board.log(epoch=epoch, loss=loss)
            click_when(50)
            if board.stop_requested:
                break
    assert len(board.history()["loss"]) == 50
    assert board.record.messages == ["stopped at epoch 50 (Stop)"]
    assert view.status.value.startswith("stopped · epoch 50/2,000")
    assert list(view._plot.train_line.get_ydata()) == board.history()["loss"]


def test_pause_holds_the_loop_and_step_lets_one_epoch_through(ip):
    seen = []
    with live(view="widget") as board:
        c = board.record.controls

        def steer():
            try:
                c.toggle_pause()
                _until(lambda: c.holding)
                n = len(board.record.rows)
                seen.append(n)
                time.sleep(0.3)  # held: no epoch goes by
                seen.append(len(board.record.rows))
                c.step()
                _until(lambda: len(board.record.rows) > n and c.holding)
                time.sleep(0.3)
                seen.append(len(board.record.rows))
                board.live_view.refresh()
                seen.append(board.live_view.status.value)
            finally:
                c.stop()

        thread = threading.Thread(target=steer)
        thread.start()
        seed_loop(board, epochs=100_000)
        thread.join()
    assert seen[1] == seen[0]  # Pause holds
    assert seen[2] == seen[0] + 1  # Step: exactly one more epoch, then held again
    assert seen[3].startswith(f"paused · epoch {seen[2]}")
    assert len(board.history()["loss"]) == seen[2]


def _until(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_rerun_cell_replaces_the_view(ip):
    ip.user_ns["live"] = live
    cell = "with live(view='widget') as board:\n    board.log(loss=1.0)\nboards.append(board)"
    ip.user_ns["boards"] = []
    run(ip, cell)
    run(ip, cell)
    first, second = (b.live_view for b in ip.user_ns["boards"])
    assert first.replaced and not second.replaced
    assert "replaced by a newer view of this cell" in first.messages.value
    assert first.stop_button.disabled


def test_bad_input_is_one_clear_line(ip):
    with pytest.raises(ValueError, match="epochs must be a positive int"), live(epochs=0):
        pass
    with pytest.raises(ValueError, match="view must be 'auto', 'widget' or 'text'"):
        LivePanel(view="plot")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        LivePanel(batch_size=0)
    with live(view="text") as board:
        with pytest.raises(TypeError, match="log\\(\\) needs at least one value"):
            board.log(epoch=3)
        with pytest.raises(TypeError, match="loss='abc' is not a number"):
            board.log(loss="abc")


def test_keyboard_interrupt_in_a_loop_is_said_and_raised(ip):
    with pytest.raises(KeyboardInterrupt), live(view="widget") as board:
        for epoch in range(10):
            board.log(loss=1.0 / (epoch + 1))
            if epoch == 3:
                raise KeyboardInterrupt
    assert board.record.messages == ["interrupted at epoch 4"]
    assert board.live_view.status.value.startswith("stopped · epoch 4")


def test_log_without_epoch_numbers_the_one_after_the_last(ip):
    with live(view="text") as board:
        board.log(epoch=1, loss=np.float32(2.0), val_loss=None)  # a loop counting from 1
        board.log(loss=tf.constant(1.5), mae=np.float64(0.5))
        board.log(epoch=10, loss=1.0)
        board.log(loss=0.5)
    assert board.epochs == [1, 2, 10, 11]
    assert board.history() == {"loss": [2.0, 1.5, 1.0, 0.5], "mae": [None, 0.5, None, None]}


def test_dataset_of_unknown_length_counts_batches_without_a_total(ip, data):
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).filter(lambda a, b: True)
    model = mlp()
    model.compile("adam", "mse")
    panel = LivePanel(view="widget", batch_size=32)
    seen = []

    class Read(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                panel.live_view.refresh()
                seen.append(panel.live_view.status.value)

    h = model.fit(ds, epochs=2, verbose=0, callbacks=[panel, Read()])
    assert panel.params["steps"] is None and panel.log.history() == h.history
    assert seen[0].startswith("running · epoch 0/2 · batch 4 · ")
    assert seen[1].startswith("running · epoch 1/2 · batch 4 · ") and "ETA" in seen[1]


def test_two_fits_in_one_cell_keep_both_views(ip, data):
    x, y = data
    ip.user_ns.update(LivePanel=LivePanel, mlp=mlp, x=x[:64], y=y[:64], views=[])
    cell = (
        "model = mlp(); model.compile('adam', 'mse'); panel = LivePanel(view='widget')\n"
        "for _ in range(2):\n"
        "    model.fit(x, y, epochs=1, verbose=0, callbacks=[panel])\n"
        "    views.append(panel.live_view)"
    )
    run(ip, cell)
    first, second = ip.user_ns["views"]
    assert not first.replaced and not second.replaced and first.messages.value == ""
    run(ip, cell)  # the re-run replaces both
    assert [v.replaced for v in ip.user_ns["views"]] == [True, True, False, False]
