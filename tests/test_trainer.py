"""Tests of the headless Trainer: the seed's numbers, inputs, controls, faults, checkpoints."""

from __future__ import annotations

import csv
import threading
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tapemagic.training.history import History
from tapemagic.training.trainer import Trainer, TrainingFault

X = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
SGD_LOSSES = [19.457, 8.134604, 4.186867, 2.8102624, 2.330071, 2.1624107]
SGD_AB = [
    (0.116900004, 0.023920001),
    (0.18587564, 0.038291242),
    (0.22655392, 0.0470237),
    (0.25052384, 0.052426066),
    (0.2646282, 0.055861536),
    (0.2729075, 0.05813503),
]
ADAM_LOSSES = [19.457, 10.991247, 5.402445, 2.563472, 2.0541918]
WAIT = 10.0  # seconds: the bound on every wait for another thread


def sum_sq(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred))


def seed_trainer(**kwargs) -> tuple[Trainer, tf.Variable, tf.Variable]:
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    kwargs = {"loss": sum_sq, "data": (tf.constant(X), tf.constant(Y)), **kwargs}
    kwargs.setdefault("learning_rate", 0.001)
    return Trainer(params={"a": a, "b": b}, predict=lambda x: a * x + b, **kwargs), a, b


def dense_model() -> keras.Model:
    return keras.Sequential(
        [keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros")]
    )


def column(X_or_Y) -> tf.Tensor:
    return tf.constant(X_or_Y)[:, None]


# -- the seed's tables -------------------------------------------------------------------


def test_seed_sgd_table_params_style():
    trainer, a, b = seed_trainer(optimizer="sgd")
    history = trainer.run(6)
    np.testing.assert_allclose(history["loss"], SGD_LOSSES, rtol=1e-5)
    np.testing.assert_allclose(
        list(zip(history["a"], history["b"], strict=True)), SGD_AB, rtol=1e-5
    )
    np.testing.assert_allclose([a.numpy(), b.numpy()], SGD_AB[-1], rtol=1e-5)
    assert history["epoch"] == list(range(6))
    assert history.last.params == pytest.approx({"a": SGD_AB[-1][0], "b": SGD_AB[-1][1]})
    assert all(lr == pytest.approx(0.001) for lr in history["learning_rate"])
    assert all(g > 0 for g in history["grad_norm"])


def test_seed_adam_table_model_style():
    trainer = Trainer(
        model=dense_model(),
        loss=sum_sq,
        data=(column(X), column(Y)),
        optimizer=keras.optimizers.Adam(0.07),
    )
    np.testing.assert_allclose(trainer.run(5)["loss"], ADAM_LOSSES, rtol=1e-4)


def test_seed_adam_table_step_style():
    model, opt = dense_model(), keras.optimizers.Adam(0.07)

    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = sum_sq(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    trainer = Trainer(step=train_step, data=(column(X), column(Y)))
    np.testing.assert_allclose(trainer.run(5)["loss"], ADAM_LOSSES, rtol=1e-4)
    assert trainer.learning_rate == pytest.approx(0.07)  # found in the step's optimizer
    assert len(trainer.history.last.params) == 2
    trainer.reset()  # the step's weights and Adam slots were found and captured
    assert list(trainer.param_values().values()) == [0.0, 0.0]
    np.testing.assert_allclose(trainer.run(5)["loss"], ADAM_LOSSES, rtol=1e-4)


# -- inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        (np.array(X), np.array(Y)),  # float64 arrays: cast to the variables' float32
        (X, Y),  # lists
        "dataset",
    ],
)
def test_input_styles_give_the_seed_table(data):
    if data == "dataset":
        data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(9)
    trainer, _, _ = seed_trainer(data=data)
    np.testing.assert_allclose(trainer.run(6)["loss"], SGD_LOSSES, rtol=1e-5)


def test_keras_loss_name_and_minibatches_match_a_hand_loop():
    """'mse' by name; batches of 4 without shuffling against the same loop by hand. The
    epoch loss is Keras fit's: the steps' losses weighted by their batch sizes (4, 4, 1)."""
    trainer, a, b = seed_trainer(loss="mse", batch_size=4, shuffle=False, learning_rate=0.01)
    history = trainer.run(3)
    ra, rb = tf.Variable(0.0), tf.Variable(0.0)
    expected = []
    for _ in range(3):
        losses, sizes = [], []
        for lo in range(0, 9, 4):
            x = tf.constant(X[lo : lo + 4], tf.float32)
            y = tf.constant(Y[lo : lo + 4], tf.float32)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(y - (ra * x + rb)))
            ga, gb = tape.gradient(loss, [ra, rb])
            ra.assign_sub(0.01 * ga)
            rb.assign_sub(0.01 * gb)
            losses.append(float(loss))
            sizes.append(len(X[lo : lo + 4]))
        expected.append(np.average(losses, weights=sizes))
    np.testing.assert_allclose(history["loss"], expected, rtol=1e-6)
    np.testing.assert_allclose([a.numpy(), b.numpy()], [ra.numpy(), rb.numpy()], rtol=1e-6)


def test_shuffle_is_reproducible_with_a_seed():
    runs = [seed_trainer(batch_size=2, seed=7)[0].run(3)["loss"] for _ in range(2)]
    assert runs[0] == runs[1]
    other = seed_trainer(batch_size=2, seed=8)[0].run(3)["loss"]
    assert other != runs[0]


def test_validation_split_and_metrics():
    trainer, a, b = seed_trainer(validation_split=1 / 3, metrics=["mae"])
    record = trainer.run(1)[0]
    # training metric: predictions before the update (a = b = 0) on the first 6 samples
    assert record.metrics["mae"] == pytest.approx(np.mean(np.abs(Y[:6])), rel=1e-6)
    assert record.loss == pytest.approx(float(np.sum(np.square(Y[:6]))), rel=1e-6)
    # validation: the last 3 samples, with the weights after the epoch
    pred = a.numpy() * np.array(X[6:], np.float32) + b.numpy()
    assert record.val_loss == pytest.approx(float(np.sum((np.array(Y[6:]) - pred) ** 2)), 1e-5)
    assert record.metrics["val_mae"] == pytest.approx(float(np.mean(np.abs(Y[6:] - pred))), 1e-5)


def test_validation_data_with_batches_and_a_keras_model():
    model = dense_model()
    trainer = Trainer(
        model=model,
        loss="mse",
        data=(column(X), column(Y)),
        validation_data=(column(X[:4]), column(Y[:4])),
        batch_size=3,
        optimizer="adam",
        learning_rate=0.05,
        metrics=["mae"],
    )
    history = trainer.run(4)
    assert len(history) == 4
    pred = model(column(X[:4])).numpy()
    val_mse = float(np.mean((np.array(Y[:4])[:, None] - pred) ** 2))
    assert history.last.val_loss == pytest.approx(val_mse, rel=1e-5)
    assert set(history.last.metrics) == {"mae", "val_mae"}


def test_accuracy_means_what_fit_means():
    labels = (np.array(X) > 4).astype("float32")[:, None]
    model = keras.Sequential(
        [keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros")]
    )
    trainer = Trainer(
        model=model,
        loss="binary_crossentropy",
        data=(column(X), labels),
        optimizer="adam",
        learning_rate=0.1,
        metrics=["accuracy"],
    )
    history = trainer.run(300)
    # Binary accuracy, as fit reads 'accuracy' for one sigmoid output: p = 0.5 everywhere
    # counts as "0", right for 5 of 9 (categorical accuracy on one column would be 1).
    assert history["accuracy"][0] == pytest.approx(5 / 9)
    assert history["accuracy"][-1] >= 0.8 and history[-3:][0].epoch == 297


# -- learning rate, listeners, callbacks -------------------------------------------------


class SetRate(keras.callbacks.Callback):
    def __init__(self, trainer_ref: list, at: int, rate: float):
        super().__init__()
        self.ref, self.at, self.rate = trainer_ref, at, rate

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            self.ref[0].learning_rate = self.rate


def test_learning_rate_change_mid_run_from_a_callback():
    ref: list = []
    trainer, _, _ = seed_trainer(callbacks=[SetRate(ref, at=2, rate=0.0005)])
    ref.append(trainer)
    history = trainer.run(6)
    np.testing.assert_allclose(history["learning_rate"], [0.001] * 3 + [0.0005] * 3, rtol=1e-6)
    # the same as training 3 epochs, then setting the rate between runs
    twin, _, _ = seed_trainer()
    twin.run(3)
    twin.learning_rate = 0.0005
    assert twin.run(3)["loss"] == history["loss"]
    assert twin.history["a"] == history["a"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside Keras's ReduceLROnPlateau
def test_keras_callbacks_see_a_model_they_can_stop():
    stopper = keras.callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=1)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", min_delta=100.0, patience=1)
    trainer, _, _ = seed_trainer(callbacks=[stopper, plateau])
    history = trainer.run(50)
    assert len(history) == 2  # patience 1: the second epoch without a 100 drop stops it
    assert history["learning_rate"][-1] == pytest.approx(0.001)
    assert trainer.learning_rate == pytest.approx(0.0001)  # ReduceLROnPlateau: factor 0.1


def test_listeners_get_every_epoch():
    trainer, _, _ = seed_trainer()
    seen = []
    trainer.add_listener(lambda record: seen.append(record.epoch))
    trainer.run(300)
    assert seen == list(range(300))


# -- controls from another thread --------------------------------------------------------


def until(predicate, timeout: float = WAIT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_pause_step_resume_stop_from_another_thread():
    trainer, _, _ = seed_trainer(learning_rate=1e-4)
    errors: list = []

    def work():
        try:
            trainer.run(10**9)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        assert until(lambda: trainer.epoch > 100)
        trainer.pause()
        assert trainer.wait_paused(WAIT) and trainer.paused
        held = trainer.epoch
        time.sleep(0.3)
        assert trainer.epoch == held  # the epoch counter stopped
        trainer.step()
        assert until(lambda: trainer.epoch == held + 1 and trainer.paused)
        time.sleep(0.2)
        assert trainer.epoch == held + 1  # exactly one epoch, then held again
        trainer.learning_rate = 2e-4  # while paused: applies when it continues
        trainer.resume()
        assert until(lambda: trainer.epoch > held + 100)
        trainer.request_stop()
        assert trainer.wait(WAIT)
    finally:
        trainer.request_stop()
        worker.join(WAIT)
    assert not worker.is_alive() and not errors
    assert not trainer.running and len(trainer.history) == trainer.epoch
    rates = trainer.history["learning_rate"]
    assert rates[held] == pytest.approx(1e-4) and rates[-1] == pytest.approx(2e-4)
    # the weights match the last record: stop never lands mid-update
    assert trainer.param_values() == trainer.history.last.params


def test_second_concurrent_run_is_refused():
    trainer, _, _ = seed_trainer()
    worker = threading.Thread(target=lambda: trainer.run(10**9), daemon=True)
    worker.start()
    try:
        assert until(lambda: trainer.running)
        with pytest.raises(RuntimeError, match="already running"):
            trainer.run(1)
        with pytest.raises(RuntimeError, match="request_stop"):
            trainer.reset()
    finally:
        trainer.request_stop()
        worker.join(WAIT)
    assert not worker.is_alive()


# -- faults ------------------------------------------------------------------------------


def test_nan_gradient_pauses_naming_the_variable():
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    def loss(y_true, y_pred):  # d/da sqrt(a) is infinite at a = 0
        return sum_sq(y_true, y_pred) + tf.sqrt(a)

    trainer = Trainer(params=[a, b], predict=lambda x: a * x + b, loss=loss, data=(X, Y))
    with pytest.warns(TrainingFault, match=r"epoch 0: .*non-finite gradient for a\b"):
        trainer.run(5)
    assert trainer.fault.epoch == 0 and trainer.fault.variables == ["a"]
    assert len(trainer.history) == 0 and trainer.epoch == 0
    assert (a.numpy(), b.numpy()) == (0.0, 0.0)  # restored: the bad update is undone


@pytest.mark.parametrize("batch_size", [None, 3])
def test_divergence_restores_the_last_finite_weights(batch_size):
    trainer, a, _ = seed_trainer(learning_rate=0.5, batch_size=batch_size, shuffle=False)
    with pytest.warns(TrainingFault, match=r"Training paused at epoch \d+"):
        trainer.run(1000)
    fault = trainer.fault
    assert fault is not None and 0 < fault.epoch < 1000
    # Back to before the step that made the bad weights, with the history cut to match.
    assert len(trainer.history) == trainer.epoch <= fault.epoch
    assert np.isfinite(trainer.history["loss"]).all()
    assert np.isfinite(a.numpy())
    if batch_size is None:  # whole epochs: one epoch back, the weights of the last record
        assert trainer.epoch == fault.epoch - 1
        assert trainer.param_values() == trainer.history.last.params
        trainer.learning_rate = 1e-5  # no Reset needed: a smaller rate gets through
        trainer.run(10)
        assert trainer.fault is None and np.isfinite(trainer.history["loss"]).all()
        assert trainer.epoch == len(trainer.history) == fault.epoch + 9
    trainer.reset()  # those weights are huge: start again with a sane rate
    trainer.learning_rate = 0.001
    if batch_size is None:
        np.testing.assert_allclose(trainer.run(6)["loss"], SGD_LOSSES, rtol=1e-5)
    assert trainer.run(2) and trainer.fault is None


def test_keep_mode_then_restore_last_finite():
    trainer, a, b = seed_trainer(learning_rate=0.5, on_nonfinite="keep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingFault)
        trainer.run(1000)
    assert "restore_last_finite" in trainer.fault.message
    assert trainer.restore_last_finite()
    assert trainer.param_values() == trainer.history.last.params
    assert not trainer.restore_last_finite()  # nothing left to restore


def test_error_in_user_code_then_a_new_run():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    broken = {"on": False}

    def predict(x):
        if broken["on"]:
            raise RuntimeError("bug in predict")
        return a * x + b

    trainer = Trainer(params=[a, b], predict=predict, loss=sum_sq, data=(X, Y), learning_rate=0.001)
    broken["on"] = True
    with pytest.raises(RuntimeError, match="bug in predict"):
        trainer.run(3)
    assert isinstance(trainer.error, RuntimeError) and not trainer.running
    assert len(trainer.history) == 0 and (a.numpy(), b.numpy()) == (0.0, 0.0)
    broken["on"] = False
    np.testing.assert_allclose(trainer.run(6)["loss"], SGD_LOSSES, rtol=1e-5)
    assert trainer.error is None


def test_error_inside_a_compiled_call_rolls_the_call_back():
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    def predict(x):  # fails at run time, inside a call of many epochs, when a passes 0.25
        tf.debugging.assert_less(a, 0.25, message="a grew too large")
        return a * x + b

    trainer = Trainer(params=[a, b], predict=predict, loss=sum_sq, data=(X, Y), learning_rate=0.001)
    with pytest.raises(tf.errors.InvalidArgumentError, match="a grew too large"):
        trainer.run(100)
    n = len(trainer.history)
    assert n < 4 and trainer.epoch == n
    if n:  # weights match the last record: the failed call left nothing behind
        assert trainer.param_values() == trainer.history.last.params
    else:
        assert (a.numpy(), b.numpy()) == (0.0, 0.0)


# -- reset, checkpoints, history ---------------------------------------------------------


def test_reset_restores_the_first_weights_and_optimizer_state():
    trainer = Trainer(
        model=dense_model(),
        loss=sum_sq,
        data=(column(X), column(Y)),
        optimizer="adam",
        learning_rate=0.07,
    )
    first = trainer.run(5)["loss"]
    trainer.reset()
    assert len(trainer.history) == 0 and trainer.epoch == 0
    assert all(v == 0.0 for v in trainer.param_values().values())
    assert int(trainer.optimizer.iterations.numpy()) == 0
    assert trainer.run(5)["loss"] == first


def test_checkpoint_resume_continues_identically(tmp_path):
    def make(directory=None):
        return Trainer(
            model=dense_model(),
            loss="mse",
            data=(column(X), column(Y)),
            optimizer="adam",
            learning_rate=0.05,
            batch_size=2,
            seed=3,
            checkpoint_dir=directory,
            checkpoint_every=2,
        )

    ref = make()
    reference = ref.run(6)
    first = make(str(tmp_path))
    first.run(3)
    assert len(list(tmp_path.glob("ckpt-*.index"))) == 2  # epoch 2, and at the end (3)
    resumed = make(str(tmp_path))  # new weights, same directory: picks up at epoch 3
    assert resumed.epoch == 3 and resumed.history["loss"] == first.history["loss"]
    assert list(resumed.param_values().values()) == list(first.param_values().values())
    resumed.run(3)
    np.testing.assert_allclose(resumed.history["loss"], reference["loss"], rtol=1e-6)
    np.testing.assert_allclose(
        list(resumed.param_values().values()), list(ref.param_values().values()), rtol=1e-6
    )


def test_history_exports(tmp_path):
    trainer, _, _ = seed_trainer(validation_split=1 / 3)
    history = trainer.run(3)
    data = history.to_dict()
    assert list(data)[:6] == ["epoch", "loss", "val_loss", "learning_rate", "grad_norm", "seconds"]
    assert data["a"] == history["a"] and len(data["loss"]) == 3
    path = tmp_path / "history.csv"
    history.to_csv(str(path))
    rows = list(csv.reader(path.open()))
    assert rows[0] == list(data) and len(rows) == 4
    assert float(rows[1][1]) == pytest.approx(data["loss"][0])
    assert History.from_json(history.to_json()).to_dict() == data
    assert "3 epochs" in repr(history) and "<table>" in history._repr_html_()
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            history.to_pandas()
    else:
        assert list(history.to_pandas()["loss"]) == data["loss"]


# -- devices and bad input ---------------------------------------------------------------


def test_device_cpu_places_the_variables_there():
    trainer = Trainer(
        model=dense_model(), loss="mse", data=(column(X), column(Y)), optimizer="adam", device="CPU"
    )
    trainer.run(1)
    assert trainer.device == "/CPU:0"
    for v in trainer.variables + trainer.optimizer.variables:
        assert v.value.device.endswith("CPU:0")


def test_missing_gpu_is_a_clear_error():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=r"device='GPU' is not available; TensorFlow sees: /CPU:0"):
        seed_trainer(device="GPU")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "adamm"}, "unknown optimizer 'adamm': use one of sgd, momentum, adam"),
        ({"data": (X, Y[:8])}, "X has 9 samples but Y has 8 samples"),
        ({"loss": None}, "loss is missing: pass loss="),
        ({"loss": "msee"}, "unknown loss 'msee'"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"validation_split": 1.5}, "validation_split must be between 0 and 1"),
        ({"data": None}, "data: missing"),
        ({"metrics": ["nope"]}, "unknown metric 'nope'"),
    ],
)
def test_bad_arguments_get_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        seed_trainer(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_model_arguments_get_one_line_errors():
    a = tf.Variable(0.0)
    cases = [
        (dict(loss=sum_sq, data=(X, Y)), "nothing to train"),
        (dict(params=[a], loss=sum_sq, data=(X, Y)), "params= needs predict="),
        (dict(params=[3.0], predict=lambda x: x, loss=sum_sq, data=(X, Y)), "not a tf.Variable"),
        (
            dict(params=[tf.Variable(3)], predict=lambda x: x, loss=sum_sq, data=(X, Y)),
            "int32 Variable; gradients exist only for float",
        ),
        (  # docs/diagnosis.md#no-gradient-for-any-variable, with the variables named
            dict(params={"a": a}, predict=lambda x: x * 2.0, loss=sum_sq, data=(X, Y)),
            "no gradient reaches any of a from the loss",
        ),
        (  # the seed's unexpanded X into Dense
            dict(model=dense_model(), loss=sum_sq, data=(X, Y)),
            r"cannot take a batch of X with shape \(2,\) \(for 1-D X, pass X\[:, None\]\)",
        ),
        (
            dict(
                params=[a],
                predict=lambda x: a * x,
                loss=sum_sq,
                data=tf.data.Dataset.from_tensor_slices((X, Y)).batch(3),
                validation_split=0.2,
            ),
            "validation_split needs in-memory",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            Trainer(**kwargs)
        assert "\n" not in str(info.value), message


def test_broadcasting_shapes_warn():
    """(n,) against (n, 1) is aligned as Keras does (tests/test_keras_parity.py); ranks two
    apart are not, in Keras either: the loss then sees a broadcast, and says so."""
    with pytest.warns(UserWarning, match=r"broadcast to \(2, 1, 2\) in the loss \(as under"):
        Trainer(model=dense_model(), loss=sum_sq, data=(column(X)[:, None], Y))


# -- more settings between and within runs -----------------------------------------------


def test_optimizer_and_batch_size_change_between_runs():
    trainer, _, _ = seed_trainer(learning_rate=0.002)
    trainer.run(2)
    trainer.optimizer = "momentum"
    trainer.batch_size = 3
    assert trainer.learning_rate == pytest.approx(0.002)  # kept across the change
    trainer.run(2)
    assert type(trainer.optimizer).__name__ == "SGD" and trainer.optimizer.momentum == 0.9
    assert int(trainer.optimizer.iterations.numpy()) == 6  # 2 epochs of 3 batches
    assert len(trainer.history) == 4
    trainer.step()  # idle: one epoch, blocking
    assert trainer.epoch == 5
    with pytest.raises(ValueError, match="unknown optimizer"):
        trainer.optimizer = "nope"


class StopAtBatch(keras.callbacks.Callback):
    """Asks the trainer to stop from a batch hook (replayed after each compiled call)."""

    def __init__(self, ref: list, batch: int):
        super().__init__()
        self.ref, self.batch = ref, batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.ref[0].request_stop()


def test_stop_mid_epoch_checkpoint_and_resume(tmp_path):
    """A stop inside a big epoch keeps its partial sums; a new trainer finishes it exactly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1)).astype("float32")
    y = (3 * x + 1).astype("float32")

    def make(directory=None, callbacks=None):
        return Trainer(
            model=dense_model(),
            loss="mse",
            data=(x, y),
            batch_size=4,
            optimizer="adam",
            learning_rate=0.01,
            seed=5,
            checkpoint_dir=directory,
            callbacks=callbacks,
        )

    ref = make()
    ref.run(2)
    holder: list = []
    first = make(str(tmp_path), [StopAtBatch(holder, batch=5)])
    holder.append(first)
    first.run(2)
    # Batch hooks replay after each compiled call, so the stop lands at the end of the call
    # that ran batch 5: inside epoch 0 (16 batches), the first calls being a few steps each.
    assert first.epoch == 0 and len(first.history) == 0 and 5 < first.batch < 16
    resumed = make(str(tmp_path))
    assert (resumed.epoch, resumed.batch) == (0, first.batch)  # the saved steps of epoch 0
    resumed.run(2)
    np.testing.assert_allclose(resumed.history["loss"], ref.history["loss"], rtol=1e-6)


def test_terminate_on_nan_callback_and_datasets_for_validation():
    ds = tf.data.Dataset.from_tensor_slices((column(X), column(Y))).batch(3)
    trainer = Trainer(
        model=dense_model(),
        loss="mse",
        data=ds,
        validation_data=ds.take(1),
        metrics=["mae"],
        learning_rate=5.0,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    with pytest.warns(TrainingFault):
        trainer.run(200)
    assert trainer.fault is not None and np.isfinite(trainer.history["val_loss"]).all()
    assert len(trainer.history) == trainer.fault.epoch
