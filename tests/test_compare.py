"""Optimizers side by side: each copy's losses are exactly a single trainer's; the shared
controls; one landscape for all; the compare panel and `%train --compare`."""

from __future__ import annotations

import html
import logging
import os
import signal
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from test_trainer import ADAM_LOSSES, SGD_LOSSES, X, Y, dense_model, sum_sq

from tapemagic.training.compare import Comparison, parse_contenders
from tapemagic.training.trainer import Trainer


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def seed_kwargs() -> dict:
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    return dict(params={"a": a, "b": b}, predict=lambda x: a * x + b, loss=sum_sq,
                data=(tf.constant(X), tf.constant(Y)))  # fmt: skip


def single(optimizer: str, lr: float, epochs: int) -> list[float]:
    trainer = Trainer(**seed_kwargs(), optimizer=optimizer, learning_rate=lr)
    return trainer.run(epochs)["loss"]


def test_each_copy_gives_exactly_a_single_trainers_losses_params_style():
    kwargs = seed_kwargs()
    race = Comparison("sgd:0.001,momentum:0.001,adam:0.07", **kwargs)
    histories = race.run(6)
    assert list(histories) == ["sgd 0.001", "momentum 0.001", "adam 0.07"]
    assert histories["sgd 0.001"]["loss"] == single("sgd", 0.001, 6)
    assert histories["momentum 0.001"]["loss"] == single("momentum", 0.001, 6)
    assert histories["adam 0.07"]["loss"] == single("adam", 0.07, 6)
    np.testing.assert_allclose(histories["sgd 0.001"]["loss"], SGD_LOSSES, rtol=1e-5)
    np.testing.assert_allclose(histories["adam 0.07"]["loss"][:5], ADAM_LOSSES, rtol=1e-4)
    # the user's own Variables are not trained: each copy has its own
    assert kwargs["params"]["a"].numpy() == 0.0
    assert histories["adam 0.07"].last.params["a"] != histories["sgd 0.001"].last.params["a"]


def test_copies_in_one_compiled_call_are_bit_for_bit_single_trainers():
    """The seed's copies run in one fused call (race.py), every optimizer written out as
    Keras computes it: after 700 epochs each copy's losses, gradients and weights equal a
    single trainer's exactly, and the optimizers' own state carries on from the call."""
    race = Comparison("sgd:0.001,momentum:0.001,adam:0.07,rmsprop:0.01,adagrad:0.1",
                      **seed_kwargs())  # fmt: skip
    assert race.threads_because is None
    histories = race.run(700)
    assert race.errors == {}
    for c, copy in zip(race.contenders, race.trainers, strict=True):
        alone = Trainer(**seed_kwargs(), optimizer=c.optimizer, learning_rate=c.learning_rate)
        expected = alone.run(700)
        got = histories[c.label]
        assert got["loss"] == expected["loss"], c.label
        assert got["grad_norm"] == expected["grad_norm"], c.label
        assert copy.param_values() == alone.param_values(), c.label
        opt, ref = copy.optimizer, alone.optimizer
        assert int(opt.iterations.numpy()) == int(ref.iterations.numpy()) == 700
        for mine, theirs in zip(opt.variables, ref.variables, strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_one_call_stays_bit_for_bit_with_many_weights_for_every_optimizer():
    """RMSprop's and Adagrad's x / sqrt(y) becomes x * rsqrt(y) in TensorFlow's graph, whose
    last bit depends on the array's layout: their updates go weight by weight, as Keras
    applies them to scalar variables. Eight and twenty weights, all five optimizers."""
    rng = np.random.default_rng(3)
    for n in (8, 20):
        xs = tf.constant(rng.normal(size=(30, n)).astype("float32"))
        ys = tf.constant(rng.normal(size=(30,)).astype("float32"))

        def linear(n=n, xs=xs, ys=ys):
            ws = [tf.Variable(0.1 * (j + 1)) for j in range(n)]

            def predict(x):
                out = ws[0] * x[:, 0]
                for j in range(1, n):
                    out = out + ws[j] * x[:, j]
                return out

            return dict(params=ws, predict=predict, loss=sum_sq, data=(xs, ys))

        spec = "sgd:0.001,momentum:0.001,adam:0.01,rmsprop:0.001,adagrad:0.01"
        race = Comparison(spec, **linear())
        assert race.threads_because is None
        histories = race.run(60)
        for c, copy in zip(race.contenders, race.trainers, strict=True):
            alone = Trainer(**linear(), optimizer=c.optimizer, learning_rate=c.learning_rate)
            assert histories[c.label]["loss"] == alone.run(60)["loss"], (n, c.label)
            assert copy.param_values() == alone.param_values(), (n, c.label)


def test_a_failing_fused_call_leaves_every_copy_to_its_own_loop():
    """Whatever breaks the fused call (here, its tracing), no copy loses an epoch or gets
    another's error: each runs its own loop from where it stands, and the comparison says
    why it no longer runs them together."""
    race = Comparison("sgd:0.001,adam:0.07", **seed_kwargs())

    def broken(*args):
        raise RuntimeError("injected")

    race._table.fused._run = broken
    histories = race.run(6)
    assert race.errors == {}
    assert race.threads_because == "the fused call failed: RuntimeError: injected"
    assert "one thread each" in repr(race)
    assert histories["sgd 0.001"]["loss"] == single("sgd", 0.001, 6)
    assert histories["adam 0.07"]["loss"] == single("adam", 0.07, 6)


def test_interrupting_a_comparison_stops_every_copy():
    """Ctrl-C, or the kernel's Interrupt, is SIGINT to the process."""
    race = Comparison("sgd:1e-5,adam:1e-5", **seed_kwargs())
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt, match="comparison stopped at epochs sgd 1e-05: "):
        race.run(2_000_000)
    assert not race.running
    epochs = [t.epoch for t in race.trainers]
    time.sleep(0.3)
    assert [t.epoch for t in race.trainers] == epochs  # nothing trains in the background


def test_step_during_a_run_leaves_a_stopped_copy_where_it_is():
    race = Comparison("sgd:0.05,adam:1e-5", **seed_kwargs())
    with pytest.warns(RuntimeWarning, match="loss is inf"):
        race.start(10_000_000)
        sgd, adam = race.trainers
        until(lambda: sgd.fault is not None and not sgd.running)
    stopped_at = sgd.epoch
    race.pause()
    assert adam.wait_paused(10)
    race.step()
    until(lambda: adam.paused and adam.epoch > 0)
    assert sgd.epoch == stopped_at and not sgd.running
    race.request_stop()
    assert race.wait(10)


def test_where_the_model_does_not_allow_one_call_the_copies_run_in_threads_exactly():
    """One call only where every copy's numbers stay bit for bit a single trainer's; the
    comparison says why not, and its threads give the single trainers' losses."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(40, 3)).astype("float32")
    ys = (xs @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")

    def vector():
        w, b = tf.Variable(tf.zeros([3, 1])), tf.Variable(0.0)
        return dict(params={"w": w, "b": b}, predict=lambda x: x @ w + b, loss="mse",
                    data=(tf.constant(xs), tf.constant(ys)))  # fmt: skip

    def wave():
        a, c = tf.Variable(0.5), tf.Variable(1.0)
        return dict(params={"a": a, "c": c}, predict=lambda x: a * tf.sin(c * x), loss="mse",
                    data=(tf.constant(xs[:, :1]), tf.constant(np.sin(xs[:, :1]))))  # fmt: skip

    def batched():
        return dict(seed_kwargs(), batch_size=3)

    many = tf.constant(rng.normal(size=(9000,)).astype("float32") * 0.01)

    def big():
        a, b = tf.Variable(0.0), tf.Variable(0.0)
        return dict(params={"a": a, "b": b}, predict=lambda v: a * v + b, loss=sum_sq,
                    data=(many, 2 * many))  # fmt: skip

    cases = {
        "weights that are not scalars": vector,
        "ops that are not computed alike whatever the layout (Sin)": wave,
        "mini-batches": batched,
        "more than 8,192 numbers in one array": big,
    }
    for why, make in cases.items():
        race = Comparison("sgd:0.01,adam:0.01", **dict(make(), seed=5))
        assert race.threads_because is not None and race.threads_because.startswith(why)
        histories = race.run(4)
        for c in race.contenders:
            alone = Trainer(**dict(make(), seed=5), optimizer=c.optimizer,
                            learning_rate=c.learning_rate)  # fmt: skip
            assert histories[c.label]["loss"] == alone.run(4)["loss"], (why, c.label)
    model_race = Comparison("sgd,adam", model=dense_model(), loss=sum_sq,
                            data=(tf.constant(X)[:, None], tf.constant(Y)[:, None]))  # fmt: skip
    assert model_race.threads_because.startswith("a Keras model")


def test_each_copy_gives_exactly_a_single_trainers_losses_model_style():
    data = (tf.constant(X)[:, None], tf.constant(Y)[:, None])
    race = Comparison(["sgd:0.001", "adam:0.07"], model=dense_model(), loss=sum_sq, data=data)
    histories = race.run(5)
    alone = Trainer(model=dense_model(), loss=sum_sq, data=data,
                    optimizer=keras.optimizers.Adam(0.07)).run(5)["loss"]  # fmt: skip
    assert histories["adam 0.07"]["loss"] == alone
    np.testing.assert_allclose(histories["adam 0.07"]["loss"], ADAM_LOSSES, rtol=1e-4)
    np.testing.assert_allclose(histories["sgd 0.001"]["loss"], SGD_LOSSES[:5], rtol=1e-5)


def test_an_unbuilt_random_model_starts_every_copy_from_the_same_weights():
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
    x = np.random.default_rng(0).normal(size=(40, 2)).astype("float32")
    y = x[:, :1] - x[:, 1:]
    race = Comparison("sgd:0.01,adam:0.01", model=model, loss="mse", data=(x, y))
    first = [t.trajectory.points().initial for t in race.trainers]
    np.testing.assert_array_equal(first[0], first[1])
    histories = race.run(2)
    assert histories["sgd 0.01"]["loss"][0] == histories["adam 0.01"]["loss"][0]


def test_shared_controls_and_reset():
    race = Comparison("sgd:0.001,adam:0.07", **seed_kwargs())
    race.start(100_000)
    race.pause()
    for t in race.trainers:
        assert t.wait_paused(10)
    epochs = [t.epoch for t in race.trainers]
    race.step()
    for t, before in zip(race.trainers, epochs, strict=True):
        until(lambda t=t, before=before: t.epoch == before + 1 and t.paused)
    race.request_stop()
    assert race.wait(10) and not race.running
    race.reset()
    assert all(t.epoch == 0 and len(t.history) == 0 for t in race.trainers)


def test_one_landscape_holds_every_path():
    race = Comparison("sgd:0.001,adam:0.07", **seed_kwargs())
    race.run(20)
    both = race.landscape(resolution=31)
    assert both.labels == ["sgd 0.001", "adam 0.07"]
    land = both.landscape
    assert land.axis_names == ("a", "b") and land.values.shape == (31, 31)
    for path, trainer in zip(both.paths, race.trainers, strict=True):
        np.testing.assert_allclose(path[-1], list(trainer.param_values().values()), rtol=1e-6)
        assert np.all((land.x[0] <= path[:, 0]) & (path[:, 0] <= land.x[-1]))
        assert np.all((land.y[0] <= path[:, 1]) & (path[:, 1] <= land.y[-1]))
    slope, intercept = np.polyfit(np.array(X), np.array(Y), 1)
    np.testing.assert_allclose(land.minimum, [slope, intercept], rtol=1e-4)


def test_contender_errors_say_what_to_write():
    assert [c.label for c in parse_contenders("sgd, adam:0.07", 0.001)] == [
        "sgd 0.001",
        "adam 0.07",
    ]
    with pytest.raises(ValueError, match="unknown optimizer 'adamw' in 'adamw'"):
        parse_contenders("sgd,adamw")
    with pytest.raises(ValueError, match="the learning rate after ':' must be a number"):
        parse_contenders("sgd:fast,adam")
    with pytest.raises(ValueError, match="at least two optimizers"):
        parse_contenders("adam")
    for empty in ("", " , ", []):
        with pytest.raises(ValueError, match="compare needs at least two optimizers, e.g."):
            parse_contenders(empty)
    with pytest.raises(ValueError, match="optimizer= is not for a comparison"):
        Comparison("sgd,adam", optimizer="sgd", **seed_kwargs())


# -- the compare panel and %train --compare ------------------------------------------------


def test_rerunning_the_cell_stops_and_supersedes_the_older_comparison():
    import tapemagic

    kwargs = seed_kwargs()
    old = tapemagic.compare("sgd:0.001,adam:0.07", epochs=10**7, view="widget", **kwargs)
    old.train()
    until(lambda: all(t.epoch > 5 for t in old.comparison.trainers))
    new = tapemagic.compare("sgd:0.001,adam:0.07", epochs=5, view="widget", **kwargs)
    assert not old.comparison.running  # stopped, not training in the background
    epochs = [t.epoch for t in old.comparison.trainers]
    status = html.unescape(old.status.value)
    assert status.startswith("superseded by a newer comparison of the same model")
    assert old.train_button.disabled and old.step_button.disabled
    old.train()  # a click on the old panel does nothing
    with pytest.raises(RuntimeError, match="superseded by a newer one of the same model"):
        old.comparison.start(5)
    assert [t.epoch for t in old.comparison.trainers] == epochs
    assert new.run()["sgd 0.001"]["loss"] == single("sgd", 0.001, 5)
    new.close()
    assert not new.comparison.running


def test_six_copies_run_together_without_errors_or_retracing_warnings():
    """Every copy trains (their steps are traced at once, each in its own thread), and
    TensorFlow's log, which a notebook shows under the cell, says nothing of retracing."""
    heard: list[str] = []

    class Hear(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    hear = Hear(logging.WARNING)
    tf.get_logger().addHandler(hear)
    try:
        race = Comparison(
            "sgd:0.001,momentum:0.001,adam,rmsprop,adagrad,sgd:0.002", **seed_kwargs()
        )
        race.run(60)
        race.landscape(resolution=11)
    finally:
        tf.get_logger().removeHandler(hear)
    assert race.errors == {} and [t.epoch for t in race.trainers] == [60] * 6
    assert not [m for m in heard if "retracing" in m], heard


def test_a_copy_that_diverges_stops_and_says_so_the_others_go_on():
    import tapemagic

    panel = tapemagic.compare("sgd:0.05,adam:0.07", epochs=40, view="widget", **seed_kwargs())
    with pytest.warns(RuntimeWarning, match="loss is inf"):
        histories = panel.run()
    sgd, adam = panel.comparison.trainers
    assert sgd.fault is not None and adam.epoch == 40 and len(histories["adam 0.07"]) == 40
    status = html.unescape(panel.status.value)
    assert f"sgd 0.05: epoch {sgd.epoch}" in status
    assert f"(stopped by a NaN/Inf at epoch {sgd.fault.epoch}: lower its rate)" in status
    assert bytes(panel.landscape_image.value).startswith(b"\x89PNG") and panel.error is None


def test_compare_panel_draws_losses_and_paths_with_shared_buttons():
    import tapemagic

    panel = tapemagic.compare("sgd:0.001,adam:0.07", epochs=50, view="widget", **seed_kwargs())
    assert panel.pause_button.disabled and panel.stop_button.disabled
    panel.comparison.start(100_000)
    panel._start_ticker()
    until(lambda: all(t.epoch > 10 for t in panel.comparison.trainers))
    until(lambda: "running" in panel.status.value)
    assert panel.train_button.disabled and not panel.stop_button.disabled
    panel.stop_button.click()
    assert panel.comparison.wait(10)
    assert panel.wait(10)
    status = html.unescape(panel.status.value)
    assert status.startswith("idle · sgd 0.001: epoch ") and " · adam 0.07: epoch " in status
    assert bytes(panel.losses.value).startswith(b"\x89PNG")
    assert bytes(panel.landscape_image.value).startswith(b"\x89PNG")
    assert [len(p) for p in panel.landscape.paths] == [
        len(t.trajectory) for t in panel.comparison.trainers
    ]
    panel.reset_button.click()
    assert all(t.epoch == 0 for t in panel.comparison.trainers)
    histories = panel.run(6)
    assert histories["sgd 0.001"]["loss"] == single("sgd", 0.001, 6)


def test_train_magic_compare(ip):
    run(ip, f"X = tf.constant({X!r})\nY = tf.constant({Y!r})")
    run(ip, "a, b = tf.Variable(0.0), tf.Variable(0.0)\npredict = lambda x: a * x + b")
    run(ip, "def loss_fn(y, p):\n    return tf.reduce_sum(tf.square(y - p))")
    run(ip, "%train --params a,b --predict predict --loss loss_fn --data X,Y "
            "--compare sgd:0.001,momentum,adam:0.07 --lr 0.001 --epochs 5")  # fmt: skip
    panel = ip.user_ns["_panel"]
    assert type(panel).__name__ == "ComparePanel"
    assert panel.comparison.labels == ["sgd 0.001", "momentum 0.001", "adam 0.07"]
    histories = panel.run()
    assert histories["adam 0.07"]["loss"] == single("adam", 0.07, 5)
    result = ip.run_cell("%train --params a,b --predict predict --loss loss_fn --data X,Y "
                         "--compare sgd,adam --optimizer sgd")  # fmt: skip
    assert "give --compare or --optimizer, not both" in str(result.error_in_exec)


def test_the_legend_on_the_contours_is_dark_text_in_a_light_box():
    from tapemagic.display.landscape_plot import LandscapePlot, Path

    race = Comparison("sgd:0.001,adam:0.07", **seed_kwargs())
    race.run(5)
    both = race.landscape(resolution=11)
    plot = LandscapePlot()
    paths = [Path(lb, p) for lb, p in zip(both.labels, both.paths, strict=True)]
    plot.render(both.landscape, paths)
    legend = plot.axes.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["minimum", "sgd 0.001", "adam 0.07"]
    assert legend.get_frame().get_visible() and legend.get_frame().get_facecolor()[:3] == (1, 1, 1)
    assert all(t.get_color() == "black" for t in legend.get_texts())


def test_a_fresh_model_comparison_waits_for_paths_without_an_error():
    import tapemagic

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x[:, :1] ** 2
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])  # fmt: skip
    panel = tapemagic.compare("sgd:0.01,adam:0.01", model=model, loss="mse", data=(x, y),
                              epochs=3, view="widget")  # fmt: skip
    assert panel.error is None and panel.landscape is None
    assert panel.note.value == "the copies' paths are drawn once they have trained an epoch"
    with pytest.raises(ValueError, match="the copies have not moved yet: .* train an epoch first"):
        panel.comparison.landscape()
    panel.run()
    assert panel.error is None and panel.landscape.landscape.kind == "pca"
    assert bytes(panel.landscape_image.value).startswith(b"\x89PNG")
    panel.reset()
    assert panel.landscape is None and panel.error is None
    panel.close()
