"""The loss landscape and the trajectory: values checked against closed forms and the
trainer's own losses, paths, directions, the data subset, and the errors a user sees."""

from __future__ import annotations

import html
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_trainer import X, Y, seed_trainer, sum_sq

from tapemagic.jupyter.panel import TrainingPanel
from tapemagic.training.landscape import LandscapeMaker, filter_normalized, landscape
from tapemagic.training.trainer import Trainer
from tapemagic.training.trajectory import Trajectory


def closed_form(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The seed's sum of squares at each (a, b), in float64."""
    x, y = np.array(X), np.array(Y)
    return ((y - a[..., None] * x - b[..., None]) ** 2).sum(-1)


def small_mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )


def mlp_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (np.sin(x[:, :1]) + x[:, 1:2] ** 2).astype("float32")


# -- the seed's (a, b) landscape ---------------------------------------------------------


def test_seed_grid_is_the_closed_form_sum_of_squares_everywhere():
    trainer, _, _ = seed_trainer(optimizer="sgd")
    trainer.run(6)
    land = landscape(trainer)
    assert land.kind == "parameters" and land.axis_names == ("a", "b")
    assert land.values.shape == (61, 61)
    a, b = np.meshgrid(land.x, land.y)
    np.testing.assert_allclose(land.values, closed_form(a, b), rtol=2e-6)


def test_seed_minimum_is_the_least_squares_solution():
    trainer, _, _ = seed_trainer(optimizer="sgd")
    trainer.run(3)
    land = landscape(trainer)
    slope, intercept = np.polyfit(np.array(X), np.array(Y), 1)
    np.testing.assert_allclose(land.minimum, [slope, intercept], rtol=1e-4)
    assert land.minimum_loss == pytest.approx(closed_form(np.array(slope), np.array(intercept)))
    # the grid shows the path and where it is heading
    for point in (land.minimum, *land.path):
        assert land.x[0] < point[0] < land.x[-1] and land.y[0] < point[1] < land.y[-1]


def test_seed_value_at_the_current_point_is_the_trainers_next_loss():
    trainer, a, b = seed_trainer(optimizer="sgd")
    trainer.run(6)
    land = landscape(trainer)
    np.testing.assert_allclose(land.current, [a.numpy(), b.numpy()])
    next_loss = trainer.run(1)["loss"][-1]  # computed at the weights the landscape saw
    assert land.current_loss == pytest.approx(next_loss, rel=1e-6)
    # the gradient there is the seed's, by hand: d/da = -2 sum x (y - ax - b)
    x, y = np.array(X), np.array(Y)
    r = y - land.current[0] * x - land.current[1]
    np.testing.assert_allclose(land.gradient, [-2 * (x * r).sum(), -2 * r.sum()], rtol=1e-4)


def test_seed_path_is_the_epochs_weights_and_the_grid_follows_it():
    trainer, _, _ = seed_trainer(optimizer="sgd")
    trainer.run(6)
    maker = LandscapeMaker(trainer)
    first = maker.compute()
    np.testing.assert_array_equal(first.path_epochs, np.arange(7))
    np.testing.assert_allclose(first.path[-1], first.current)
    assert tuple(first.path[0]) == (0.0, 0.0)
    trainer.learning_rate = 0.03  # too large: the path zig-zags out of the first grid
    trainer.run(8)
    second = maker.compute()
    assert np.abs(second.path).max() > np.abs([first.x, first.y]).max()
    for point in second.path:
        assert second.x[0] < point[0] < second.x[-1] and second.y[0] < point[1] < second.y[-1]
    a, b = np.meshgrid(second.x, second.y)
    np.testing.assert_allclose(second.values, closed_form(a, b), rtol=2e-6)


def test_computing_a_landscape_leaves_the_variables_alone():
    trainer, a, b = seed_trainer(optimizer="sgd")
    trainer.run(2)
    before = (a.numpy(), b.numpy())
    landscape(trainer, resolution=21)
    assert (a.numpy(), b.numpy()) == before


# -- any model: slices -------------------------------------------------------------------


def test_mlp_slice_value_at_current_point_is_the_trainers_loss():
    x, y = mlp_data(300)
    trainer = Trainer(model=small_mlp(), loss="mse", data=(x, y), optimizer="adam",
                      learning_rate=0.01)  # fmt: skip
    trainer.run(5)
    land = landscape(trainer, resolution=11)
    assert land.kind == "random" and land.axis_names == ("direction 1", "direction 2")
    np.testing.assert_allclose(land.current, [0.0, 0.0], atol=1e-12)
    centre = land.values[5, 5]  # (0, 0) is the middle of the default [-1, 1] frame
    next_loss = trainer.run(1)["loss"][-1]
    assert land.current_loss == pytest.approx(next_loss, rel=1e-5)
    assert centre == pytest.approx(next_loss, rel=1e-5)
    assert land.note == "filter-normalised random directions"
    assert land.samples == 300 and land.total_samples == 300


def test_value_includes_the_models_regularisation_as_the_trainers_loss_does():
    x, y = mlp_data(200)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.1)),
        keras.layers.Dense(1),
    ])  # fmt: skip
    trainer = Trainer(model=model, loss="mse", data=(x, y), optimizer="adam", learning_rate=0.01)
    trainer.run(3)
    land = landscape(trainer, resolution=5)
    penalty = 0.1 * float(np.sum(model.trainable_variables[0].numpy() ** 2))
    assert penalty > 0.01 * land.current_loss  # big enough to tell the two apart
    next_loss = trainer.run(1)["loss"][-1]
    assert land.current_loss == pytest.approx(next_loss, rel=1e-5)
    assert land.note == "filter-normalised random directions"


def test_a_model_with_dropout_says_its_landscape_is_in_inference_mode():
    x, y = mlp_data(100)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dropout(0.5),
        keras.layers.Dense(1),
    ])  # fmt: skip
    trainer = Trainer(model=model, loss="mse", data=(x, y), optimizer="adam")
    trainer.run(2)
    land = landscape(trainer, resolution=5)
    expected = float(tf.reduce_mean(tf.square(y - model(x, training=False))))
    assert land.current_loss == pytest.approx(expected, rel=1e-5)
    assert "in inference mode (no dropout, batch norm's moving statistics)" in land.note


def test_mlp_grid_point_equals_the_model_at_those_weights():
    x, y = mlp_data(64)
    model = small_mlp()
    trainer = Trainer(model=model, loss="mse", data=(x, y), optimizer="sgd")
    trainer.run(2)
    land = landscape(trainer, resolution=5)
    i, j = 1, 3
    w = land.center + land.x[j] * land.directions[0] + land.y[i] * land.directions[1]
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    for v, part in zip(model.trainable_variables, np.split(w, np.cumsum(sizes)[:-1]), strict=True):
        v.assign(part.reshape(v.shape))
    expected = float(tf.reduce_mean(tf.square(y - model(x))))
    assert land.values[i, j] == pytest.approx(expected, rel=1e-5)


def test_random_directions_are_filter_normalised():
    model = small_mlp()
    variables = model.trainable_variables
    w = np.concatenate([v.numpy().ravel() for v in variables])
    noise = np.random.default_rng(3).standard_normal(w.size)
    d = filter_normalized(noise, variables, w)
    kernel = d[:32].reshape(4, 8)
    np.testing.assert_allclose(
        np.linalg.norm(kernel, axis=0), np.linalg.norm(variables[0].numpy(), axis=0)
    )
    assert not d[32:40].any()  # the bias: left out, as Li et al. do


def test_a_run_along_one_direction_projects_onto_the_first_pca_axis():
    u = tf.constant([0.6, -0.8, 0.0])
    w = tf.Variable([0.5, 0.5, 0.5])
    trainer = Trainer(
        params={"w": w}, predict=lambda x: x * tf.reduce_sum(w * u), loss=sum_sq,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", learning_rate=0.001,
    )  # fmt: skip
    trainer.run(10)
    land = landscape(trainer, directions="pca", resolution=7)
    assert land.axis_names == ("PC 1", "PC 2")
    np.testing.assert_allclose(np.abs(land.directions[0]), np.abs(u.numpy()), atol=1e-5)
    np.testing.assert_allclose(land.path[:, 1], 0.0, atol=1e-6)
    assert np.all(np.diff(land.path[:, 0]) > 0)  # it moves one way along the axis
    assert land.note.startswith("PCA directions explain 100.0%, 0.0%")


def test_line_from_first_to_current_weights():
    trainer, _, _ = seed_trainer(optimizer="sgd")
    history = trainer.run(6)
    line = LandscapeMaker(trainer).line(resolution=13)  # t = -0.25, -0.125, 0, ...
    assert line.values[2] == pytest.approx(history["loss"][0], rel=1e-6)
    final = closed_form(
        np.array(trainer.param_values()["a"]), np.array(trainer.param_values()["b"])
    )
    assert line.values[10] == pytest.approx(final, rel=1e-5)
    assert line.path_t[0] == 0.0 and line.path_t[-1] == pytest.approx(1.0)


def test_a_big_dataset_is_computed_on_a_fixed_subset_and_says_so():
    x, y = mlp_data(2000)
    trainer = Trainer(model=small_mlp(), loss="mse", data=(x, y), batch_size=100)
    trainer.run(1)
    land = landscape(trainer, resolution=5)
    assert land.samples == 512 and land.total_samples == 2000
    assert "loss on a fixed subset: the first 512 of 2,000 samples" in land.note
    assert "filter-normalised" in land.note


# -- the trajectory ----------------------------------------------------------------------


def test_trajectory_is_thinned_with_a_doubling_stride_and_keeps_the_latest():
    traj = Trajectory(2, capacity=8)
    for epoch in range(0, 101):
        traj.record([epoch], np.array([[epoch, -epoch]], np.float32))
    pts = traj.points()
    assert 4 <= len(pts) <= 9
    assert pts.epochs[0] == 0 and pts.epochs[-1] == 100
    assert pts.stride == 16 and all(e % 16 == 0 for e in pts.epochs[:-1])
    np.testing.assert_array_equal(pts.weights[-1], [100, -100])


def test_trainer_trajectory_after_reset_and_bigger_models():
    trainer, _, _ = seed_trainer(optimizer="sgd")
    trainer.run(5)
    assert len(trainer.trajectory) == 6
    trainer.reset()
    pts = trainer.trajectory.points()
    assert list(pts.epochs) == [0] and pts.weights.tolist() == [[0.0, 0.0]]
    x, y = mlp_data(100)
    big = Trainer(model=small_mlp(), loss="mse", data=(x, y), batch_size=10)
    big.run(3)
    pts = big.trajectory.points()
    assert list(pts.epochs) == [0, 1, 2, 3] and pts.weights.shape == (4, 4 * 8 + 8 + 8 + 1)
    off = Trainer(model=small_mlp(), loss="mse", data=(x, y), record_trajectory=False)
    off.run(1)
    assert len(off.trajectory) == 0 and "not recording" in repr(off.trajectory)


def test_a_bigger_model_gets_a_point_per_epoch_however_many_epochs_a_call_runs():
    """A full-batch model of 49 weights runs its tiny epochs many to a compiled call: the
    path still has the weights after every epoch, equal to those of training epoch by
    epoch, one call each; a fault's epoch and what follows are not on it."""
    x, y = mlp_data(64)
    whole = Trainer(model=small_mlp(), loss="mse", data=(x, y), optimizer="sgd", seed=3)
    whole.run(40)
    assert len(whole.history) == 40
    pts = whole.trajectory.points()
    assert list(pts.epochs) == list(range(41))
    by_epoch = Trainer(model=small_mlp(), loss="mse", data=(x, y), optimizer="sgd", seed=3)
    for _ in range(40):
        by_epoch.run(1)
    steps = by_epoch.trajectory.points()
    assert list(steps.epochs) == list(range(41))
    np.testing.assert_allclose(pts.weights, steps.weights, rtol=1e-6, atol=1e-7)
    assert not np.allclose(pts.weights[1], pts.weights[40])  # it moved, epoch by epoch
    # thinned as it comes: a long run keeps a bounded, evenly strided path
    whole.run(600)
    pts = whole.trajectory.points()
    assert len(pts) <= 257 and pts.epochs[-1] == 640
    assert all(e % pts.stride == 0 for e in pts.epochs[:-1]) and pts.stride >= 4


def test_a_bigger_models_path_stops_before_a_faulty_epoch():
    x, y = mlp_data(64)
    bad = Trainer(model=small_mlp(), loss="mse", data=(x, y), optimizer="sgd",
                  learning_rate=50.0)  # fmt: skip
    bad.run(200)
    assert bad.fault is not None
    pts = bad.trajectory.points()
    assert pts.epochs[-1] == bad.epoch and np.isfinite(pts.weights).all()
    assert list(pts.epochs) == list(range(bad.epoch + 1))


# -- what a user gets wrong ----------------------------------------------------------------


def bare_step() -> dict:
    """A Trainer's arguments with a step= alone: no predictions, no loss to evaluate."""
    a = tf.Variable(0.0)
    opt = keras.optimizers.SGD(0.001)

    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(yb - a * xb))
        opt.apply_gradients([(tape.gradient(loss, a), a)])
        return loss

    return {"step": step, "data": (tf.constant(X), tf.constant(Y)), "optimizer": opt}


def test_errors_name_the_problem_and_the_fix():
    x, y = mlp_data(50)
    trainer = Trainer(model=small_mlp(), loss="mse", data=(x, y))
    with pytest.raises(ValueError, match="'parameters' needs exactly two scalar weights; this"):
        landscape(trainer, directions="parameters")
    with pytest.raises(ValueError, match="directions must be one of auto, parameters, random"):
        landscape(trainer, directions="sideways")
    with pytest.raises(ValueError, match=r"must have shape \(2, 49\)"):
        landscape(trainer, directions=np.ones((2, 3)))
    with pytest.raises(ValueError, match="resolution must be from 3 to 401"):
        landscape(trainer, resolution=1)
    with pytest.raises(ValueError, match="PCA directions need at least 2 points"):
        landscape(trainer, directions="pca")
    stepper = Trainer(**bare_step())
    with pytest.raises(ValueError, match="with step=, also pass model="):
        landscape(stepper)


# -- the panel's landscape view ----------------------------------------------------------


def until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_panel_view_draws_the_seed_landscape_with_its_path():
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    panel = TrainingPanel(
        params={"a": a, "b": b}, predict=lambda x: a * x + b, loss=sum_sq,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", learning_rate=0.001,
        view="widget",
    )  # fmt: skip
    try:
        panel.views.show("landscape")
        view = panel.views.view("landscape")
        assert view.directions.layout.display == "none"  # two parameters: their own axes
        assert view.line_image.layout.display == "none"
        panel.run(300)
        until(lambda: view.landscape is not None and view.landscape.path_epochs[-1] == 300)
        until(lambda: view._drawn == view._serial)
        assert bytes(view.image.value).startswith(b"\x89PNG")
        note = view.note.value
        slope, intercept = np.polyfit(np.array(X), np.array(Y), 1)
        lowest = float(closed_form(np.array(slope), np.array(intercept)))
        assert f"minimum {lowest:.6g} at ({slope:.4g}, {intercept:.4g})" in note
        assert f"loss here {view.landscape.current_loss:.6g}" in note
        land = panel.landscape()  # from code: the same grid, as arrays
        np.testing.assert_allclose(land.current, [a.numpy(), b.numpy()])
        assert land.path.shape == (len(panel.trainer.trajectory), 2)
        ga, gb = np.meshgrid(land.x, land.y)
        np.testing.assert_allclose(land.values, closed_form(ga, gb), rtol=2e-6)
    finally:
        panel.close()
    until(lambda: not view._thread.is_alive(), timeout=5)


def test_panel_view_slices_a_model_with_a_direction_chooser_and_the_line():
    x, y = mlp_data(200)
    panel = TrainingPanel(model=small_mlp(), loss="mse", data=(x, y), optimizer="adam",
                          learning_rate=0.01, view="widget")  # fmt: skip
    try:
        panel.run(5)
        panel.views.show("landscape")
        view = panel.views.view("landscape")
        assert view.directions.layout.display is None
        assert [v for _, v in view.directions.options] == ["random", "pca"]
        until(lambda: view.landscape is not None and view._drawn == view._serial)
        assert view.landscape.kind == "random" and view.landscape.values.shape == (41, 41)
        assert "filter-normalised random directions" in view.note.value
        assert bytes(view.line_image.value).startswith(b"\x89PNG")
        view.directions.value = "pca"
        until(lambda: view.landscape.kind == "pca" and view._drawn == view._serial)
        assert "PCA directions explain" in view.note.value
    finally:
        panel.close()


def test_panel_view_of_a_bare_step_says_why_it_has_no_landscape():
    panel = TrainingPanel(**bare_step(), view="widget")
    try:
        panel.views.show("landscape")
        view = panel.views.view("landscape")
        view.refresh(True)
        assert "with step=, also pass model=" in html.unescape(view.note.value)
        assert panel.views.area.children[0] is view.widget
    finally:
        panel.close()


def test_the_plot_redraws_only_the_path_while_the_grid_stays():
    from tapemagic.display.landscape_plot import LandscapePlot, log_levels

    trainer, _, _ = seed_trainer(optimizer="sgd")
    trainer.run(5)
    maker = LandscapeMaker(trainer)
    plot = LandscapePlot()
    first = plot.render(maker.compute(), title="seed", caption="epoch 5")
    trainer.run(5)
    second = plot.render(maker.compute(), title="seed", caption="epoch 10")
    assert first.startswith(b"\x89PNG") and second != first
    assert plot.contours_drawn == 1  # the frame held: only the path and markers were drawn
    levels = log_levels(maker.compute().values)
    ratios = levels[1:] / levels[:-1]
    np.testing.assert_allclose(ratios, ratios[0])  # log-spaced: a constant ratio


def test_two_weights_in_one_vector_get_an_axis_each():
    w = tf.Variable([0.0, 0.0])
    trainer = Trainer(
        params={"w": w}, predict=lambda x: w[0] * x + w[1], loss=sum_sq,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", learning_rate=0.001,
    )  # fmt: skip
    trainer.run(3)
    land = landscape(trainer, resolution=11)
    assert land.kind == "parameters" and land.axis_names == ("w[0]", "w[1]")
    slope, intercept = np.polyfit(np.array(X), np.array(Y), 1)
    np.testing.assert_allclose(land.minimum, [slope, intercept], rtol=1e-4)


def test_scalar_models_get_random_directions_scaled_as_a_whole():
    a, b, c = tf.Variable(0.0), tf.Variable(0.0), tf.Variable(0.0)
    trainer = Trainer(
        params={"a": a, "b": b, "c": c}, predict=lambda x: a * x + b + c, loss=sum_sq,
        data=(tf.constant(X), tf.constant(Y)), optimizer="sgd", learning_rate=0.001,
    )  # fmt: skip
    trainer.run(5)
    w = np.array([a.numpy(), b.numpy(), c.numpy()])
    for seed in range(4):  # each scalar scaled alone kept only signs: parallel directions
        land = LandscapeMaker(trainer, "random", resolution=5, seed=seed).compute()
        np.testing.assert_allclose(np.linalg.norm(land.directions, axis=1), np.linalg.norm(w))
        d1, d2 = land.directions
        assert abs(d1 @ d2) < 0.99 * np.linalg.norm(d1) * np.linalg.norm(d2)
        assert land.current_loss == pytest.approx(float(closed_form(w[0], w[1] + w[2])))


def test_one_weight_has_a_line_and_a_clear_error_for_a_plane():
    a = tf.Variable(0.0)
    data = (tf.constant(X), tf.constant(Y))
    trainer = Trainer(params={"a": a}, predict=lambda x: a * x, loss=sum_sq, data=data,
                      optimizer="sgd", learning_rate=0.001)  # fmt: skip
    history = trainer.run(3)
    with pytest.raises(ValueError, match=r"needs two or more weights; this model has one \(a\)"):
        landscape(trainer)
    line = LandscapeMaker(trainer).line(resolution=13)
    assert line.values[2] == pytest.approx(history["loss"][0], rel=1e-6)
    panel = TrainingPanel(params={"a": a}, predict=lambda x: a * x, loss=sum_sq, data=data,
                          optimizer="sgd", learning_rate=0.001, view="widget")  # fmt: skip
    try:
        panel.views.show("landscape")
        view = panel.views.view("landscape")
        assert view.image.layout.display == "none" and view.directions.layout.display == "none"
        panel.run(3)
        until(lambda: view.line is not None and view._drawn == view._serial)
        assert bytes(view.line_image.value).startswith(b"\x89PNG")
        assert "one weight (a): the loss along it" in html.unescape(view.note.value)
        assert view.error is None
    finally:
        panel.close()
