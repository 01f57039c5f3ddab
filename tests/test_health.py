"""Gradient health: the per-layer statistics equal a GradientTape's, each finding fires on
its broken model and on no healthy one (missing gradients: test_health_first_step.py)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tapemagic.training.health import HealthThresholds
from tapemagic.training.trainer import Trainer

X_SEED = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y_SEED = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
RNG = np.random.default_rng(0)
X8 = RNG.normal(size=(256, 8)).astype("float32")
Y8 = (X8[:, :1] * X8[:, 1:2] + 0.3 * X8[:, 2:3]).astype("float32")


def mlp(*hidden, activation="relu", inputs=8, **dense) -> keras.Model:
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(n, activation=activation, **dense) for n in hidden]
    return keras.Sequential([keras.Input((inputs,)), *layers, keras.layers.Dense(1)])


def kinds(trainer: Trainer) -> list[tuple[str, str]]:
    return [(f.kind, f.layer) for f in trainer.findings]


def quiet(**kwargs) -> Trainer:
    """A Trainer, its probe's warnings (about the same missing gradients) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(**kwargs)


# -- the statistics ---------------------------------------------------------------------


def by_layer(model, values) -> dict[str, float]:
    """Per top-level layer: the root of the summed squares of its variables' values."""
    out: dict[str, float] = {}
    for v, g in zip(model.trainable_variables, values, strict=True):
        name = v.path.split("/")[-2]
        out[name] = out.get(name, 0.0) + float(tf.reduce_sum(tf.square(g)))
    return {k: np.sqrt(s) for k, s in out.items()}


def test_full_batch_statistics_equal_a_gradient_tape():
    model = mlp(16, 16)
    w0 = [v.numpy() for v in model.trainable_variables]
    sub = keras.Model(model.inputs[0], [layer.output for layer in model.layers[:2]])
    active = [np.asarray(a).max(axis=0) > 0 for a in sub(X8)]  # before the step
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(Y8 - model(X8, training=True)))
    grads = tape.gradient(loss, model.trainable_variables)
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), optimizer="sgd", learning_rate=0.1)
    trainer.run(1)
    table = trainer.history.gradients
    names = [layer.name for layer in model.layers]
    assert table.layers == names and table.relu_layers == names[:2] and len(table) == 1
    expected = by_layer(model, grads)
    for name in names:
        assert table.column(name, "grad_norm")[0] == pytest.approx(expected[name], rel=1e-5)
    w1 = [v.numpy() for v in model.trainable_variables]
    change = by_layer(model, [a - b for a, b in zip(w1, w0, strict=True)])
    norm = by_layer(model, w1)
    for name in names:
        ratio = table.column(name, "update_ratio")[0]
        assert ratio == pytest.approx(change[name] / norm[name], rel=1e-4)
    for name, act in zip(names[:2], active, strict=True):
        assert table.column(name, "dead_fraction")[0] == pytest.approx(1 - act.mean())


def test_batched_statistics_are_the_epochs_root_mean_square_and_its_change():
    """Two epochs of 4 batches: the gradient norm is the RMS of the steps' norms, the
    update the epoch's weight change per step; whatever the calls' spans were."""
    model = mlp(8)
    copy = mlp(8)
    trainer = Trainer(
        model=model, loss="mse", data=(X8[:64], Y8[:64]), batch_size=16, shuffle=False,
        optimizer="sgd", learning_rate=0.05,
    )  # fmt: skip
    trainer.run(2)
    table = trainer.history.gradients
    for epoch in range(2):
        start = [v.numpy() for v in copy.trainable_variables]
        squares: dict[int, float] = {}
        for b in range(4):
            xb, yb = X8[16 * b : 16 * b + 16], Y8[16 * b : 16 * b + 16]
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(yb - copy(xb, training=True)))
            grads = tape.gradient(loss, copy.trainable_variables)
            for i, n in enumerate(by_layer(copy, grads).values()):
                squares[i] = squares.get(i, 0.0) + n**2
            for v, g in zip(copy.trainable_variables, grads, strict=True):
                v.assign_sub(0.05 * g)
        end = [v.numpy() for v in copy.trainable_variables]
        change = list(by_layer(copy, [a - b for a, b in zip(end, start, strict=True)]).values())
        for i in range(len(table.layers)):
            ours = table.layer_stat("grad_norm")[epoch, i]
            assert ours == pytest.approx(np.sqrt(squares[i] / 4), rel=1e-4)
            upd = table.layer_stat("update_norm")[epoch, i]
            assert upd == pytest.approx(change[i] / 4, rel=1e-3)


def test_the_seeds_statistics_come_from_its_recorded_parameters():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    trainer = Trainer(
        params={"a": a, "b": b}, predict=lambda x: a * x + b, data=(X_SEED, Y_SEED),
        loss=lambda y, p: tf.reduce_sum(tf.square(y - p)), learning_rate=0.001,
    )  # fmt: skip
    trainer.run(3)
    table = trainer.history.gradients
    assert table.layers == ["a", "b"]
    x, y = np.array(X_SEED), np.array(Y_SEED)
    ga, gb = -2 * np.sum(x * y), -2 * np.sum(y)  # at a = b = 0
    assert table.column("a")[0] == pytest.approx(abs(ga), rel=1e-5)
    assert table.column("b")[0] == pytest.approx(abs(gb), rel=1e-5)
    assert table.column("a", "update_ratio")[0] == pytest.approx(1.0)  # from 0: all of it
    values = trainer.history["a"]
    assert table.column("a", "weight_norm") == pytest.approx(np.abs(values), rel=1e-6)
    assert table.column("a", "update_norm")[2] == pytest.approx(abs(values[2] - values[1]))


def test_a_small_models_epoch_split_across_calls_has_its_net_change():
    """Parameters recorded in the history give the weight statistics; the first epoch
    is spread over several calls (the first call is one step), its change is still the
    epoch's net change per step."""
    a, b = tf.Variable(0.5), tf.Variable(-0.3)
    trainer = Trainer(
        params={"a": a, "b": b}, predict=lambda x: a * x + b, data=(X_SEED, Y_SEED),
        loss="mse", optimizer="sgd", learning_rate=0.01, batch_size=2, shuffle=False,
    )  # fmt: skip
    trainer.run(3)
    table = trainer.history.gradients
    for name, start in (("a", 0.5), ("b", -0.3)):
        values = np.array([start, *trainer.history[name]])
        net = np.abs(np.diff(values)) / 5  # 5 steps an epoch
        assert table.column(name, "update_norm") == pytest.approx(net, rel=1e-5)


# -- findings on broken models ----------------------------------------------------------


def test_a_deep_sigmoid_stack_has_a_vanishing_gradient():
    model = mlp(*[32] * 10, activation="sigmoid")
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), optimizer="sgd", learning_rate=0.1)
    trainer.run(6)
    first = model.layers[0].name
    assert ("vanishing", first) in kinds(trainer)
    finding = next(f for f in trainer.findings if f.kind == "vanishing")
    assert f"layer {first}'s gradient norm" in finding.text and "ReLU" in finding.text
    assert finding.epoch == 2 and finding.text in trainer.messages


def test_a_rate_too_large_explodes_the_update_ratio():
    trainer = Trainer(model=mlp(32, 32), loss="mse", data=(X8, Y8), optimizer="sgd",
                      learning_rate=1.0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it ends in a NaN fault, after the findings
        trainer.run(12)
    found = {f.kind for f in trainer.findings}
    assert {"update-too-large", "exploding"} <= found
    large = next(f for f in trainer.findings if f.kind == "update-too-large")
    assert "learning rate is too high" in large.text and "learning_rate=" in large.text


def test_dead_relus():
    model = mlp(32, 32, bias_initializer=keras.initializers.Constant(-10.0))
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), optimizer="adam", batch_size=32)
    trainer.run(4)
    names = [layer.name for layer in model.layers[:2]]
    assert trainer.history.gradients.column(names[0], "dead_fraction") == [1.0] * 4
    # its zero gradient and small updates are not news beside that
    assert kinds(trainer) == [("dead-relu", names[0]), ("dead-relu", names[1])]
    assert "100% of layer" in trainer.findings[0].text


def test_thresholds_are_adjustable_and_checked():
    model = mlp(16, 16)
    strict = HealthThresholds(update_high=1e-5, epochs=1)
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), optimizer="adam", health=strict)
    trainer.run(1)
    assert "update-too-large" in {f.kind for f in trainer.findings}
    with pytest.raises(ValueError, match="dead_fraction must be in"):
        HealthThresholds(dead_fraction=2)
    # a fraction of an epoch would pass here and fail inside the first run
    with pytest.raises(ValueError, match=r"epochs must be a whole number of epochs >= 1, not 2.5"):
        HealthThresholds(epochs=2.5)
    with pytest.raises(ValueError, match="warmup must be a whole number of epochs >= 0"):
        HealthThresholds(warmup=-1)
    with pytest.raises(ValueError, match=r"update_low \(0.5\) must be below update_high"):
        HealthThresholds(update_low=0.5)
    with pytest.raises(ValueError, match="health must be True, False or a HealthThresholds"):
        Trainer(model=mlp(4), loss="mse", data=(X8, Y8), health="yes")


# -- healthy runs: no finding -----------------------------------------------------------


def test_no_finding_on_the_seed():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    trainer = Trainer(
        params={"a": a, "b": b}, predict=lambda x: a * x + b, data=(X_SEED, Y_SEED),
        loss=lambda y, p: tf.reduce_sum(tf.square(y - p)), learning_rate=0.001,
    )  # fmt: skip
    trainer.run(3000)
    assert len(trainer.history.gradients) == 3000 and trainer.findings == []


def test_no_finding_on_the_readme_mlp():
    x = RNG.normal(size=(4096, 64)).astype("float32")
    y = (x[:, :1] * 2.0 + np.sin(x[:, 1:2]) - 0.5 * x[:, 2:3] ** 2).astype("float32")
    trainer = Trainer(model=mlp(256, 256, inputs=64), loss="mse", data=(x, y), optimizer="adam",
                      batch_size=256)  # fmt: skip
    trainer.run(6)
    assert trainer.findings == [] and len(trainer.history.gradients) == 6


def test_no_finding_on_a_small_cnn():
    keras.utils.set_random_seed(0)
    x = RNG.normal(size=(512, 12, 12, 1)).astype("float32")
    y = (x[:, :6].mean(axis=(1, 2, 3)) > 0).astype("int64")
    model = keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])  # fmt: skip
    trainer = Trainer(model=model, loss="sparse_categorical_crossentropy", data=(x, y),
                      optimizer="adam", batch_size=64, metrics=["accuracy"])  # fmt: skip
    trainer.run(6)
    table = trainer.history.gradients
    assert table.relu_layers == [model.layers[i].name for i in (0, 2, 4)]
    assert trainer.findings == []


# -- history, checkpoints, off ----------------------------------------------------------


def test_history_gradients_table():
    trainer = Trainer(model=mlp(8, 8), loss="mse", data=(X8, Y8), batch_size=64)
    trainer.run(3)
    table = trainer.history.gradients
    assert len(table) == len(trainer.history) == 3
    long = table.to_dict()
    assert list(long) == ["epoch", "layer", "grad_norm", "weight_norm", "update_norm",
                          "update_ratio", "dead_fraction"]  # fmt: skip
    assert long["epoch"] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and long["layer"][:3] == table.layers
    per_var = table.to_dict(by="variable")
    assert len(per_var["variable"]) == 3 * 6 and per_var["variable"][0].endswith("kernel")
    with pytest.raises(KeyError, match="no layer 'nope'"):
        table.column("nope")
    with pytest.raises(KeyError, match="no statistic 'grad'"):
        table.layer_stat("grad")
    with pytest.raises(KeyError, match="no variable statistic 'update_ratio'"):
        table.variable_stat("update_ratio")
    trainer.reset()
    assert len(trainer.history.gradients) == 0
    trainer.run(1)
    assert table.epochs.tolist() == [0]


def test_a_relu_layer_without_weights_has_its_own_rows():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(32, bias_initializer=keras.initializers.Constant(-1.0)),
        keras.layers.ReLU(), keras.layers.Dense(1),
    ])  # fmt: skip
    relu = model.layers[1].name
    before = model.layers[1](model.layers[0](X8)).numpy()  # full batch: epoch 0's one step
    expected = 1 - (before.max(axis=0) > 0).mean()
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), optimizer="sgd", learning_rate=0.01)
    trainer.run(2)
    table = trainer.history.gradients
    assert table.relu_layers == [relu] and relu not in table.layers
    long = table.to_dict()
    rows = [i for i, name in enumerate(long["layer"]) if name == relu]
    assert [long["epoch"][i] for i in rows] == [0, 1]
    assert 0 < expected < 1 and long["dead_fraction"][rows[0]] == pytest.approx(expected)
    assert np.isnan(long["grad_norm"][rows[0]])  # it has no weights


def test_to_pandas():
    pd = pytest.importorskip("pandas")
    trainer = Trainer(model=mlp(8), loss="mse", data=(X8, Y8))
    trainer.run(2)
    frame = trainer.history.gradients.to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4


def test_checkpoints_keep_the_gradient_table(tmp_path):
    def make():
        return Trainer(model=mlp(8), loss="mse", data=(X8, Y8), batch_size=64, seed=1,
                       checkpoint_dir=str(tmp_path))  # fmt: skip

    first = make()
    first.run(3)
    saved = first.history.gradients
    first.close()
    second = make()  # a model made again: Keras gives its layers new names
    table = second.history.gradients
    assert len(table) == 3 and table.layers == [layer.name for layer in second._style.model.layers]
    assert table.layers != saved.layers
    np.testing.assert_allclose(table.layer_stat("grad_norm"), saved.layer_stat("grad_norm"))
    second.run(1)
    assert table is second.history.gradients and table.epochs.tolist() == [0, 1, 2, 3]


def test_a_resumed_run_judges_only_its_new_epochs_under_its_names(tmp_path):
    def make():
        model = mlp(16, 16, bias_initializer=keras.initializers.Constant(-10.0))
        trainer = Trainer(model=model, loss="mse", data=(X8, Y8), optimizer="adam", batch_size=32,
                          seed=1, checkpoint_dir=str(tmp_path))  # fmt: skip
        return trainer, [layer.name for layer in model.layers[:2]]

    first, _ = make()
    first.run(4)
    assert [(f.kind, f.epoch) for f in first.findings] == [("dead-relu", 2), ("dead-relu", 2)]
    first.close()
    second, names = make()
    assert second.findings == []  # the first run said those; not again
    second.run(2)
    # still dead: said once, from the restored epochs' context, at the first new epoch
    assert [(f.kind, f.layer, f.epoch) for f in second.findings] == [
        ("dead-relu", names[0], 4), ("dead-relu", names[1], 4),
    ]  # fmt: skip
    said = [m for m in second.messages if "ReLU units" in m]
    assert said == [f.text for f in second.findings]


def test_a_resumed_run_does_not_judge_the_saved_epochs_again(tmp_path):
    """The seed from 0: its first epochs' large update ratios are a start from zero
    (the saving run knew it); a trainer resumed on variables made at 0.5 must not call
    them a rate too high."""

    def make(start):
        a, b = tf.Variable(start), tf.Variable(start)
        return Trainer(
            params={"a": a, "b": b}, predict=lambda x: a * x + b, data=(X_SEED, Y_SEED),
            loss=lambda y, p: tf.reduce_sum(tf.square(y - p)), optimizer="sgd",
            learning_rate=0.001, checkpoint_dir=str(tmp_path), checkpoint_every=1,
        )  # fmt: skip

    first = make(0.0)
    first.run(3)
    assert first.findings == [] and first.history.gradients.column("b", "update_ratio")[2] > 0.1
    first.close()
    second = make(0.5)
    second.run(30)
    assert second.findings == [] and len(second.history.gradients) == 33
    assert second.history.gradients.zero_start == ["a", "b"]
    second.reset()  # back to 0.5: no warm-up now
    assert second.history.gradients.zero_start == []


def test_health_off_records_nothing():
    trainer = Trainer(model=mlp(16), loss="mse", data=(X8, Y8), batch_size=64, health=False)
    trainer.run(2)
    assert trainer.history.gradients is None and trainer.findings == []
    on = Trainer(model=mlp(16), loss="mse", data=(X8, Y8), batch_size=64)
    on.run(1)
    off_loop, on_loop = trainer._loop(), on._loop()
    assert off_loop.health is None and off_loop.layout.health.start == off_loop.layout.health.stop
    assert off_loop.layout.width < on_loop.layout.width  # no extra numbers in its rows


def test_a_new_optimizer_keeps_recording():
    trainer = Trainer(model=mlp(8), loss="mse", data=(X8, Y8), batch_size=64, optimizer="sgd")
    trainer.run(1)
    trainer.optimizer = "adam"
    trainer.run(2)
    table = trainer.history.gradients
    assert table.epochs.tolist() == [0, 1, 2]
    assert np.isfinite(table.layer_stat("update_ratio")).all()


def test_under_a_strategy_gradient_norms_only():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = mlp(16)
    trainer = Trainer(model=model, loss="mse", data=(X8, Y8), batch_size=64, strategy=strategy)
    trainer.run(2)
    table = trainer.history.gradients
    assert table.relu_layers == []  # the ReLU statistic is off under a strategy
    assert (table.layer_stat("grad_norm") > 0).all()
    assert np.isnan(table.layer_stat("update_ratio")).all()  # weights are not read there
    assert trainer.findings == []
