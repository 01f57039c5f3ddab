"""Gradient health before the first epoch: each variable the first step's gradient misses,
named with its cause (docs/diagnosis.md), and a fix that works."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from test_health import X8, X_SEED, Y8, Y_SEED, mlp, quiet

from tapemagic.training.health import HealthThresholds
from tapemagic.training.trainer import Trainer


def test_a_layer_frozen_by_mistake_gets_no_gradient():
    model = mlp(16, 16)
    model.layers[1].trainable = False
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), optimizer="adam")
    name = model.layers[1].name
    (finding,) = trainer.findings  # before any epoch
    assert (finding.kind, finding.layer, finding.epoch) == ("no-gradient", name, 0)
    assert finding.cause == "untrainable-variable"
    assert f"model.get_layer('{name}').trainable = True" in finding.text
    assert list(trainer.messages) == [finding.text]


def test_a_frozen_sub_model_is_one_finding_whose_fix_works():
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((8,)), *[keras.layers.Dense(8) for _ in range(3)]],
                            name="base")  # fmt: skip
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(1)(base(inp)))
    base.trainable = False
    (finding,) = quiet(model=model, loss="mse", data=(X8, Y8)).findings
    assert (finding.layer, finding.cause) == ("base", "untrainable-variable")
    assert "and 2 more" in finding.text  # six weights, four named
    base.trainable = True
    inner = base.layers[1]
    inner.trainable = False  # a layer inside a trainable sub-model: not model.get_layer's
    (finding,) = quiet(model=model, loss="mse", data=(X8, Y8)).findings
    assert finding.layer == inner.name
    fix = finding.text.split("set ")[-1].split(" before")[0]
    assert fix == f"model.get_layer('base').get_layer('{inner.name}').trainable = True"
    exec(fix, {"model": model})  # the fix as written
    assert inner.trainable and quiet(model=model, loss="mse", data=(X8, Y8)).findings == []


def test_a_frozen_layer_can_be_meant():
    model = mlp(16, 16)
    model.layers[1].trainable = False
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), health=HealthThresholds(frozen=False))
    assert trainer.findings == []


def test_a_variable_off_the_losss_path():
    a, b, c = tf.Variable(1.0), tf.Variable(0.0), tf.Variable(2.0)
    trainer = quiet(
        params={"a": a, "b": b, "c": c}, predict=lambda x: a * x + b,
        data=(X_SEED, Y_SEED), loss="mse",
    )  # fmt: skip
    (finding,) = trainer.findings
    assert (finding.layer, finding.cause) == ("c", "structural-zero")
    assert "not on the loss's path" in finding.text


def test_an_integer_variable():
    class IntScale(keras.layers.Layer):
        def build(self, shape):
            self.k = self.add_weight(shape=(), dtype="int32", initializer="ones", name="k")

        def call(self, x):
            return x * tf.cast(self.k, x.dtype)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), IntScale(),
                              keras.layers.Dense(1)])  # fmt: skip
    trainer = quiet(model=model, loss="mse", data=(X8, Y8))
    (finding,) = trainer.findings
    assert finding.layer.endswith("/k") and finding.cause == "integer-source"
    assert "integer Variable (int32)" in finding.text and "float" in finding.text


def test_a_path_through_a_non_differentiable_op():
    a, b = tf.Variable(1.0), tf.Variable(0.5)
    trainer = quiet(
        params={"a": a, "b": b}, predict=lambda x: a * x + tf.round(b),
        data=(X_SEED, Y_SEED), loss="mse",
    )  # fmt: skip
    (finding,) = trainer.findings
    assert (finding.layer, finding.cause) == ("b", "non-differentiable-op")
    assert "Round" in finding.text and "stop_gradient" in finding.text


def test_a_path_through_numpy():
    a, b = tf.Variable(1.0), tf.Variable(0.5)

    def predict(x):
        squared = tf.reshape(tf.numpy_function(np.square, [b], tf.float32), [])
        return a * x + squared

    trainer = quiet(params={"a": a, "b": b}, predict=predict, data=(X_SEED, Y_SEED), loss="mse")
    (finding,) = trainer.findings
    assert (finding.layer, finding.cause) == ("b", "python-function")
    assert "PyFunc" in finding.text and "tf ops" in finding.text
