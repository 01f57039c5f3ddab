"""The Trainer against Keras `model.fit` on the same model, data, order and callbacks.

Where the Trainer claims Keras behaviour (shapes given to a loss, the epoch loss it
reports, the samples `validation_split` holds out, the logs callbacks receive), the
two run side by side on clones with the same weights and must agree.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import pytest
import tensorflow as tf

from tapemagic.training.trainer import Trainer

X = np.array([1.0, 4.0, 6, 3, 3, 4, 5, 6, 7], "float32")[:, None]  # the seed's, as a column
Y = np.array([0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2], "float32")  # (n,): not a column
KERNEL = 0.054332256  # what keras.utils.set_random_seed(0) gives a Dense(1) on this input


def sum_sq(y_true, y_pred):
    """The seed's loss, written per sample: a sum over whatever shape it is given."""
    return tf.reduce_sum(tf.square(y_true - y_pred))


def twins(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The model and a clone with the same weights."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return model, clone


def seed_dense(activation: str | None = None) -> keras.Model:
    dense = keras.layers.Dense(
        1, activation=activation, kernel_initializer=keras.initializers.Constant(KERNEL)
    )
    return keras.Sequential([keras.Input((1,)), dense])


def assert_same_weights(a: keras.Model, b: keras.Model) -> None:
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


# -- shapes: (n,) targets against (n, 1) predictions --------------------------------------


def test_seed_loss_with_a_flat_target_is_compared_sample_by_sample_as_in_fit():
    fitted, trained = twins(seed_dense())
    fitted.compile(keras.optimizers.SGD(0.001), loss=sum_sq)
    expected = fitted.fit(X, Y, epochs=3, batch_size=9, shuffle=False, verbose=0).history
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # aligned as Keras does: nothing to warn about
        trainer = Trainer(
            model=trained, loss=sum_sq, data=(X, Y), optimizer=keras.optimizers.SGD(0.001)
        )
        history = trainer.run(3)
    # 13.69 is sum((Y - X w)^2); the (n, n) broadcast of (n,) against (n, 1) gives 129.66
    assert history["loss"][0] == pytest.approx(13.6871, abs=1e-4)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-6)
    assert_same_weights(fitted, trained)


def test_binary_crossentropy_with_a_flat_integer_target_trains_as_in_fit():
    labels = (Y > 1).astype("int32")  # (n,) int labels against (n, 1) sigmoid outputs
    fitted, trained = twins(seed_dense("sigmoid"))
    fitted.compile(keras.optimizers.Adam(0.1), loss="binary_crossentropy", metrics=["accuracy"])
    expected = fitted.fit(X, labels, epochs=4, batch_size=4, shuffle=False, verbose=0).history
    trainer = Trainer(
        model=trained,
        loss="binary_crossentropy",
        metrics=["accuracy"],
        data=(X, labels),
        batch_size=4,
        shuffle=False,
        optimizer=keras.optimizers.Adam(0.1),
    )
    history = trainer.run(4)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-6)
    np.testing.assert_allclose(history["accuracy"], expected["accuracy"], rtol=1e-6)
    assert history["loss"][-1] < history["loss"][0]
    assert_same_weights(fitted, trained)


# -- fit and the Trainer side by side, with callbacks --------------------------------------


class Recorder(keras.callbacks.Callback):
    """The logs each hook receives."""

    def __init__(self):
        super().__init__()
        self.batches: list[tuple[int, dict]] = []
        self.epochs: list[tuple[int, dict]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((batch, dict(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch, dict(logs)))


def callbacks(csv_path: str) -> list:
    return [
        keras.callbacks.EarlyStopping(monitor="loss", min_delta=0.02, patience=2),
        keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=0.05),
        keras.callbacks.CSVLogger(csv_path),
        Recorder(),
    ]


@dataclass
class SideBySide:
    fit_history: dict
    trainer: Trainer
    fitted: keras.Model
    trained: keras.Model
    fit_csv: list[list[str]]
    trainer_csv: list[list[str]]
    fit_logs: Recorder
    trainer_logs: Recorder


MAX_EPOCHS = 60


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory) -> SideBySide:
    """53 samples, validation_split=0.25: Keras trains on floor(53 * 0.75) = 39 and
    validates on the last 14 (round(53 * 0.25) would be 13); batches of 16, 16 and a short
    7; Adam; EarlyStopping on the loss stops the run long before MAX_EPOCHS."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(53, 3)).astype("float32")
    w = np.array([[1.0], [-2.0], [0.5]], "float32")
    y = (x @ w + 0.3 * rng.normal(size=(53, 1))).astype("float32")
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    fitted, trained = twins(model)
    tmp = tmp_path_factory.mktemp("parity")
    fit_cbs, trainer_cbs = callbacks(str(tmp / "fit.csv")), callbacks(str(tmp / "trainer.csv"))
    fitted.compile(keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    fit_history = fitted.fit(
        x, y, epochs=MAX_EPOCHS, batch_size=16, shuffle=False, validation_split=0.25,
        callbacks=fit_cbs, verbose=0,
    ).history  # fmt: skip
    trainer = Trainer(
        model=trained, loss="mse", metrics=["mae"], optimizer=keras.optimizers.Adam(0.05),
        data=(x, y), batch_size=16, shuffle=False, validation_split=0.25, callbacks=trainer_cbs,
    )  # fmt: skip
    trainer.run(MAX_EPOCHS)
    read = [list(csv.reader((tmp / f"{n}.csv").open())) for n in ("fit", "trainer")]
    return SideBySide(fit_history, trainer, fitted, trained, *read, fit_cbs[-1], trainer_cbs[-1])


def test_early_stopping_on_the_loss_stops_at_the_same_epoch(side_by_side):
    epochs = len(side_by_side.fit_history["loss"])
    assert epochs < MAX_EPOCHS  # EarlyStopping acted
    assert len(side_by_side.trainer.history) == epochs


def test_epoch_losses_are_the_sample_weighted_means_fit_reports(side_by_side):
    fit, history = side_by_side.fit_history, side_by_side.trainer.history
    for key in ("loss", "mae", "val_loss", "val_mae"):
        np.testing.assert_allclose(history[key], fit[key], rtol=1e-6, err_msg=key)


def test_final_weights_are_fits(side_by_side):
    assert_same_weights(side_by_side.fitted, side_by_side.trained)


def test_reduce_lr_on_plateau_acts_at_the_same_epoch(side_by_side):
    rates = [float(r) for r in side_by_side.trainer.history["learning_rate"]]
    assert rates[0] == pytest.approx(0.05) and rates[-1] < 0.05  # it did reduce
    header = side_by_side.fit_csv[0]
    fit_rates = [float(row[header.index("learning_rate")]) for row in side_by_side.fit_csv[1:]]
    np.testing.assert_allclose(rates, fit_rates, rtol=1e-6)


def test_csv_logger_writes_the_same_rows(side_by_side):
    fit_rows, rows = side_by_side.fit_csv, side_by_side.trainer_csv
    assert rows[0] == fit_rows[0] == [
        "epoch", "learning_rate", "loss", "mae", "val_loss", "val_mae",
    ]  # fmt: skip
    assert len(rows) == len(fit_rows)
    for mine, theirs in zip(rows[1:], fit_rows[1:], strict=True):
        assert mine[0] == theirs[0]
        np.testing.assert_allclose(
            [float(v) for v in mine[1:]], [float(v) for v in theirs[1:]], 1e-6
        )


def test_callbacks_receive_the_logs_fit_gives(side_by_side):
    """on_train_batch_end: the running mean loss and metrics of the epoch so far (3 steps
    an epoch); on_epoch_end: loss, metrics and the validation ones."""
    fit_logs, logs = side_by_side.fit_logs, side_by_side.trainer_logs
    assert [b for b, _ in logs.batches] == [b for b, _ in fit_logs.batches]
    assert [b for b, _ in logs.batches[:6]] == [0, 1, 2, 0, 1, 2]
    for (_, mine), (_, theirs) in zip(logs.batches, fit_logs.batches, strict=True):
        assert list(mine) == list(theirs) == ["loss", "mae"]
        assert all(type(v) is float for v in mine.values())
        np.testing.assert_allclose(list(mine.values()), list(theirs.values()), rtol=1e-6)
    for (e, mine), (fe, theirs) in zip(logs.epochs, fit_logs.epochs, strict=True):
        assert e == fe and sorted(mine) == sorted(theirs)
        np.testing.assert_allclose(
            [mine[k] for k in sorted(mine)], [theirs[k] for k in sorted(theirs)], rtol=1e-6
        )
    # the last batch's running loss is the epoch's loss
    assert logs.batches[2][1]["loss"] == pytest.approx(logs.epochs[0][1]["loss"], rel=1e-6)
