"""Bad input to the Trainer: refused early, in one line that says what is wrong and the fix,
with nothing lost (weights, history and settings as they were)."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from tapemagic.training.pacing import MAX_EPOCHS
from tapemagic.training.trainer import Trainer

X = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]


def sum_sq(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred))


def seed_trainer(a: tf.Variable | None = None, b: tf.Variable | None = None, **kwargs) -> Trainer:
    a = a if a is not None else tf.Variable(0.0)
    b = b if b is not None else tf.Variable(0.0)
    kwargs = {"loss": sum_sq, "data": (X, Y), "learning_rate": 0.001, **kwargs}
    return Trainer(params={"a": a, "b": b}, predict=lambda x: a * x + b, **kwargs)


def refused(exc_type: type, message: str, make) -> BaseException:
    """`make()` raises exactly `message`, on one line."""
    with pytest.raises(exc_type) as info:
        make()
    assert str(info.value) == message
    assert "\n" not in str(info.value)
    return info.value


def line_of(fn, text: str) -> int:
    """The line number, in this file, of the line of `fn` that contains `text`."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


# -- learning rates ----------------------------------------------------------------------

RATE_RULE = "learning_rate must be a finite number above 0, got"
RATE_FIX = "use a small positive rate such as 0.01"


@pytest.mark.parametrize(
    "rate, message",
    [
        (0, f"{RATE_RULE} 0 (0 never moves the weights): {RATE_FIX}"),
        (-0.1, f"{RATE_RULE} -0.1 (a negative rate climbs the loss instead of descending it): "
               f"{RATE_FIX}"),
        (float("nan"), f"{RATE_RULE} nan (it is not finite): {RATE_FIX}"),
        (float("inf"), f"{RATE_RULE} inf (it is not finite): {RATE_FIX}"),
        ("fast", "learning_rate must be a number such as 0.01, got str 'fast'"),
        (True, "learning_rate must be a number such as 0.01, got bool True"),
    ],
)  # fmt: skip
def test_bad_learning_rates_are_refused_at_construction_and_by_the_setter(rate, message):
    a, b = tf.Variable(0.5), tf.Variable(0.25)
    refused(ValueError, message, lambda: seed_trainer(a, b, learning_rate=rate))
    assert (a.numpy(), b.numpy()) == (0.5, 0.25)
    trainer = seed_trainer(a, b, learning_rate=0.001)
    trainer.run(2)
    before = trainer.history.to_dict()

    def assign():
        trainer.learning_rate = rate

    refused(ValueError, message, assign)
    assert trainer.learning_rate == pytest.approx(0.001)
    assert float(trainer.optimizer.learning_rate.numpy()) == pytest.approx(0.001)
    assert trainer.history.to_dict() == before


def test_a_learning_rate_schedule_is_still_accepted_at_construction():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=1, decay_rate=0.5)
    trainer = seed_trainer(optimizer="adam", learning_rate=schedule)
    trainer.run(2)
    assert trainer.learning_rate == pytest.approx(0.0025)  # halved at each of the 2 steps


def test_an_optimizer_object_with_a_zero_rate_is_refused():
    refused(
        ValueError,
        "the optimizer's learning_rate must be a finite number above 0, got 0 (0 never moves "
        f"the weights): {RATE_FIX}",
        lambda: seed_trainer(optimizer=keras.optimizers.SGD(0.0), learning_rate=None),
    )


# -- epochs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "epochs, message",
    [
        (-1, f"epochs must be from 0 to {MAX_EPOCHS:,} (the most one run can count), got -1: "
             "run(n) trains n more epochs"),
        (MAX_EPOCHS + 1, f"epochs must be from 0 to {MAX_EPOCHS:,} (the most one run can count), "
                         f"got {MAX_EPOCHS + 1}: run(n) trains n more epochs"),
        (True, "epochs must be a whole number such as 100, got bool True"),
        (5.0, "epochs must be a whole number such as 100, got float 5.0 (pass 5)"),
        (2.5, "epochs must be a whole number such as 100, got float 2.5"),
        ("3", "epochs must be a whole number such as 100, got str '3'"),
    ],
)  # fmt: skip
def test_epochs_out_of_range_are_refused_before_anything_runs(epochs, message):
    trainer = seed_trainer()
    trainer.run(1)
    weights, history = trainer.param_values(), trainer.history.to_dict()
    refused(ValueError, message, lambda: trainer.run(epochs))
    assert trainer.param_values() == weights and trainer.history.to_dict() == history
    assert trainer.error is None and not trainer.running


def test_epoch_counts_are_taken_as_given():
    trainer = seed_trainer()
    assert len(trainer.run(0)) == 0 and trainer.epoch == 0  # 0: nothing, not 1
    trainer.run(np.int64(2))
    assert trainer.epoch == 2
    # a huge count is kept as it is (the run is stopped after its first call)
    stopper = trainer.add_listener(lambda record: trainer.request_stop())
    trainer.run(10**9)
    trainer.remove_listener(stopper)
    assert trainer.target_epoch == 2 + 10**9  # not capped, not rounded
    assert 2 < trainer.epoch < 2 + 10**9


# -- data --------------------------------------------------------------------------------


def test_a_list_of_xy_pairs_is_refused_as_ambiguous():
    x1, y1, x2, y2 = np.ones(3), np.ones(3), np.zeros(2), np.zeros(2)
    refused(
        ValueError,
        "data: a list of 2 (x, y) pairs is ambiguous (it would read as X=(x1, y1), "
        "Y=(x2, y2)); pass one tuple (X, Y) with the samples stacked, e.g. "
        "(np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])), or a "
        "tf.data.Dataset",
        lambda: seed_trainer(data=[(x1, y1), (x2, y2)]),
    )
    samples = list(zip(X, Y, strict=True))  # nine (x, y) samples
    error = refused(ValueError, error_text_for(samples), lambda: seed_trainer(data=samples))
    assert "9 (x, y) pairs" in str(error)
    assert seed_trainer(data=(X, Y)).samples_per_epoch == 9  # the pair (X, Y) as ever


def error_text_for(pairs: list) -> str:
    return (
        f"data: a list of {len(pairs)} (x, y) pairs; pass one tuple (X, Y) with the samples "
        "stacked, e.g. (np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])), or "
        "a tf.data.Dataset"
    )


def test_nan_and_inf_in_the_data_are_named_before_training():
    a, b = tf.Variable(0.5), tf.Variable(0.25)
    bad_x = np.array(X)
    bad_x[[1, 3]] = [np.nan, np.inf]
    refused(
        ValueError,
        "data: X has 1 NaN and 1 Inf (in 2 of 9 samples: rows 1, 3); remove or fill them "
        "before training, e.g. keep only the rows where np.isfinite(X)",
        lambda: seed_trainer(a, b, data=(bad_x, Y)),
    )
    bad_y = np.array(Y)[:, None].repeat(2, axis=1)
    bad_y[4, 1] = np.nan
    refused(
        ValueError,
        "validation_data: Y has 1 NaN (in 1 of 9 samples: row 4); remove or fill them before "
        "training, e.g. keep only the rows where np.isfinite(Y).all(axis=1)",
        lambda: seed_trainer(a, b, validation_data=(np.array(X)[:, None], bad_y)),
    )
    assert (a.numpy(), b.numpy()) == (0.5, 0.25)


def test_nan_in_a_datasets_first_batch_is_named_before_training():
    a = tf.Variable(0.5)
    x = np.array(X)
    x[1] = np.nan
    ds = tf.data.Dataset.from_tensor_slices((x, Y)).batch(4)
    refused(
        ValueError,
        "data (its first batch): X has 1 NaN (in 1 of 4 samples: row 1); remove or fill them "
        "before training, e.g. keep only the rows where np.isfinite(X)",
        lambda: Trainer(params=[a], predict=lambda x: a * x, loss="mse", data=ds),
    )
    assert a.numpy() == 0.5


def test_a_validation_split_that_is_not_a_number_is_refused():
    refused(
        ValueError,
        "validation_split must be a fraction such as 0.2, got str '0.2'",
        lambda: seed_trainer(validation_split="0.2"),
    )


def test_an_unbatched_dataset_is_refused():
    ds = tf.data.Dataset.from_tensor_slices((np.ones((20, 3)), np.ones((20, 1))))
    refused(
        ValueError,
        "data: the Dataset yields single samples (x with shape (3,), y with shape (1,)), not "
        "batches; batch it: ds.batch(32)",
        lambda: Trainer(model=keras.Sequential([keras.layers.Dense(1)]), loss="mse", data=ds),
    )
    flat = tf.data.Dataset.from_tensor_slices((X, Y))
    refused(
        ValueError,
        "data: the Dataset yields single samples (x with shape (), y with shape ()), not "
        "batches; batch it: ds.batch(32)",
        lambda: seed_trainer(data=flat),
    )
    seed_trainer(data=flat.batch(4))  # batched: accepted


# -- losses and predictions --------------------------------------------------------------

FLOAT_LOSS = "e.g. tf.reduce_mean(tf.square(y_true - y_pred))"


@pytest.mark.parametrize(
    "loss, message",
    [
        (lambda t, p: tf.cast(tf.reduce_sum(p), tf.int32),
         "loss returned int32 3, which has no gradient: compute it in floats from y_pred (no "
         f"int(), round() or integer casts), {FLOAT_LOSS}"),
        (lambda t, p: None,
         "loss returned None: end the loss function with `return` and the loss value, e.g. "
         "return tf.reduce_mean(tf.square(y_true - y_pred))"),
        (lambda t, p: "small",
         f"loss returned a string tensor, not a number: return a float tensor computed from "
         f"y_pred, {FLOAT_LOSS}"),
    ],
)  # fmt: skip
def test_losses_that_do_not_return_a_float_are_refused(loss, message):
    a, b = tf.Variable(0.5), tf.Variable(0.25)
    refused(ValueError, message, lambda: seed_trainer(a, b, loss=loss))
    assert (a.numpy(), b.numpy()) == (0.5, 0.25)


def test_predictions_of_another_width_than_y_are_refused_with_the_fix():
    x = np.ones((20, 3), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    weights = [w.copy() for w in model.get_weights()]
    refused(
        ValueError,
        "loss fails on (Y with shape (2, 2), predictions with shape (2, 3)): "
        "InvalidArgumentError: Incompatible shapes: [2,2] vs. [2,3]; the predictions need Y's "
        "shape per sample ((2,), they have (3,)): change the model's output (or predict) or "
        "reshape Y",
        lambda: Trainer(model=model, loss=sum_sq, data=(x, np.ones((20, 2)))),
    )
    assert all((w == v).all() for w, v in zip(model.get_weights(), weights, strict=True))


def test_validation_data_of_another_width_is_refused_at_construction():
    x = np.ones((20, 3), "float32")
    y = np.ones((20, 1), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="out")])
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError) as info:
        Trainer(model=model, loss="mse", data=(x, y), validation_data=(x[:, :2], y))
    error = info.value
    text = str(error)
    # Keras's own line is quoted; its wording differs between Keras versions.
    assert text.startswith(
        "validation_data: the model fails on a batch of its X with shape (2, 2), where "
        "training batches have shape (2, 3): ValueError: Input 0 "
    )
    assert (
        "expected axis -1 of input shape to have value 3, but received input with shape "
        "(2, 2); pass validation X with the same features as the training X" in text
    )
    assert "\n" not in text
    assert "kwargs=" not in str(error)
    wide = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    refused(
        ValueError,
        "validation_data: loss fails on (Y with shape (2, 2), predictions with shape (2, 3)): "
        "InvalidArgumentError: Incompatible shapes: [2,2] vs. [2,3]; pass validation Y shaped "
        "like the training Y",
        lambda: Trainer(
            model=wide, loss=sum_sq, data=(x, np.ones((20, 3))), validation_data=(x, y[:, [0, 0]])
        ),
    )
    assert all((w == v).all() for w, v in zip(model.get_weights(), weights, strict=True))


# -- errors raised by the user's code inside the compiled step ----------------------------


def test_an_assert_in_predict_raises_the_users_message_and_line_without_the_node_trace():
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    def predict(x):
        tf.debugging.Assert(a < 0.05, ["user boom"])  # fails once a has moved (epoch 1)
        return a * x + b

    trainer = Trainer(params=[a, b], predict=predict, loss=sum_sq, data=(X, Y), learning_rate=0.001)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        trainer.run(3)
    err = info.value
    line = line_of(predict, '"user boom"')
    assert str(err) == f"user boom (in predict, {__file__}, line {line})"
    assert isinstance(err.__cause__, tf.errors.InvalidArgumentError)  # TensorFlow's, chained
    assert "Detected at node" in str(err.__cause__)
    assert trainer.error is err
    # the failing call is undone: one epoch recorded, the weights after it
    assert len(trainer.history) == 1 and trainer.epoch == 1
    np.testing.assert_allclose([a.numpy(), b.numpy()], [0.116900004, 0.023920001], rtol=1e-5)


def test_a_python_error_raised_while_compiling_names_the_users_line():
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    def predict(x):
        if not tf.executing_eagerly():  # the eager probe passes; the compiled loop does not
            raise ValueError("predict only runs eagerly here")
        return a * x + b

    trainer = Trainer(
        params=[a, b], predict=predict, loss=sum_sq, data=(X, Y), batch_size=4,
        learning_rate=0.001,
    )  # fmt: skip
    with pytest.raises(ValueError) as info:
        trainer.run(2)
    line = line_of(predict, "raise ValueError")
    assert str(info.value) == (
        f"predict only runs eagerly here (in predict, {__file__}, line {line})"
    )
    assert "in user code" in str(info.value.__cause__)
    assert trainer.error is info.value
    assert len(trainer.history) == 0 and (a.numpy(), b.numpy()) == (0.0, 0.0)


def test_an_assert_in_a_step_function_names_the_step_and_undoes_the_call():
    a = tf.Variable(0.0)
    optimizer = keras.optimizers.SGD(0.01)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(y - a * x))
        optimizer.apply_gradients(zip(tape.gradient(loss, [a]), [a], strict=True))
        tf.debugging.Assert(a < 0.05, ["a grew too much"])
        return loss

    trainer = Trainer(step=step, params=[a], data=(X, Y))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        trainer.run(5)
    line = line_of(step, '"a grew too much"')
    assert str(info.value) == f"a grew too much (in step, {__file__}, line {line})"
    assert trainer.error is info.value and trainer.epoch == 0 and a.numpy() == 0.0


def test_a_step_function_that_fails_to_compile_is_refused_at_construction():
    a = tf.Variable(0.0)

    def step(x, y):
        raise RuntimeError("my step is not written yet")

    line = line_of(step, "raise RuntimeError")
    refused(
        ValueError,
        "step fails when compiled on a batch of X with shape (2,): my step is not written yet "
        f"(in step, {__file__}, line {line})",
        lambda: Trainer(step=step, params=[a], data=(X, Y)),
    )


def test_warnings_point_at_the_users_own_line():
    """A warning names the line the user can change, not a line inside tapemagic."""
    a, b, c = tf.Variable(0.0), tf.Variable(0.0), tf.Variable(0.0)
    x, y = np.arange(6, dtype="float32"), np.arange(6, dtype="float32")

    def sum_sq(y_true, y_pred):
        return tf.reduce_sum(tf.square(y_true - y_pred))

    cases = [  # a broadcast the loss does; a variable the loss does not depend on
        dict(params=[a, b], predict=lambda v: a * v + b, loss=sum_sq, data=(x, y[:, None, None])),
        dict(params=[a, c], predict=lambda v: a * v, loss="mse", data=(x, y)),
    ]
    for kwargs in cases:
        with pytest.warns(UserWarning) as caught:
            line = inspect.currentframe().f_lineno + 1
            Trainer(**kwargs)
        assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]
