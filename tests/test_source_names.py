"""Every source under the name the user reaches it by, and defaults that answer the
question (the Variables a loss is computed from), in a real IPython shell."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run
from IPython.utils.capture import capture_output

SEED = (
    "a = tf.Variable(0.0)\nb = tf.Variable(0.0)\n"
    "X = tf.constant([1.0, 4.0, 6, 3, 3, 4, 5, 6, 7])\n"
    "Y = tf.constant([0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2])\n"
    "def loss_fn(y_true, y_pred):\n"
    "    return tf.reduce_sum(tf.square(y_true - y_pred))"
)


def rows(ip) -> list[str]:
    return [d.notation for d in ip.user_ns["_tape"].derivatives]


def test_an_attribute_variable_is_named_by_its_path_not_its_own_name(ip):
    """`b.w` is a Variable whose own name is "x": it gets no row of x's, and x keeps its."""
    run(ip, "x = tf.constant(2.0)\nclass B: pass\nb = B()\nb.w = tf.Variable(5.0, name='x')")
    with capture_output() as cap:
        run(ip, "%%tape --all\ny = x * b.w ** 2")
    r = ip.user_ns["_tape"]
    assert r.sources == ["x", "b.w"]
    assert float(r.gradient("y", "x")) == 25.0  # b.w ** 2
    assert float(r.gradient("y", "b.w")) == 20.0  # 2 x b.w
    html = cap.outputs[0].data["text/html"]
    assert "∂y/∂b.w" in html and "b.w = 5.0" in html and "∂y/∂x" in html and "x = 2.0" in html
    # the object itself finds its row too, whatever its own name says
    assert float(r.gradient("y", ip.user_ns["b"].w)) == 20.0


def test_list_items_dict_entries_and_unnamed_variables_each_get_a_row(ip):
    run(ip, "ws = [tf.Variable(2.0), tf.Variable(3.0)]\nparams = {'w': tf.Variable(1.5)}")
    run(ip, "%%tape -q\ny = ws[0] * ws[1] ** 2 * params['w']")
    r = ip.user_ns["_tape"]
    assert r.sources == ["ws[0]", "ws[1]", 'params["w"]']
    assert rows(ip) == ["∂y/∂ws[0]", "∂y/∂ws[1]", '∂y/∂params["w"]']
    assert [float(r.gradient("y", s)) for s in r.sources] == [13.5, 18.0, 18.0]
    assert float(r.gradient("y", ip.user_ns["ws"][1])) == 18.0


def test_keras_weights_are_named_by_the_models_attribute_path(ip):
    run(
        ip,
        "import keras\n"
        "model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), "
        "keras.layers.Dense(1)])\n"
        "data = tf.ones((4, 2))",
    )
    run(ip, "%%tape -q\nloss = tf.reduce_sum(model(data))")
    r = ip.user_ns["_tape"]
    assert r.sources == [
        "model.layers[0].kernel",
        "model.layers[0].bias",
        "model.layers[1].kernel",
        "model.layers[1].bias",
    ]
    for name in r.sources:  # each name evaluates to the weight it labels
        weight = eval(name, ip.user_ns)
        assert np.shape(r.gradient("loss", name)) == tuple(weight.shape)
        assert r.gradient("loss", weight) is r.gradient("loss", name)
    assert np.allclose(r.gradient("loss", "model.layers[1].bias"), [4.0])  # 4 rows of data


def test_the_seed_regression_shows_the_loss_with_respect_to_a_and_b_only(ip):
    run(ip, SEED)
    with capture_output() as cap:
        run(ip, "%%tape --persistent\ny_pred = a * X + b\nloss = loss_fn(Y, y_pred)")
    assert rows(ip) == ["∂loss/∂a", "∂loss/∂b"]
    text = cap.outputs[0].data["text/plain"]
    assert "-116.9" in text and "-23.92" in text and "sum:" not in text and "-0." not in text
    r = ip.user_ns["_tape"]
    # what is not shown is still there, asked for by name
    assert np.allclose(r.gradient("loss", "Y"), 2 * (np.asarray(ip.user_ns["Y"])))
    assert np.allclose(r.jacobian("y_pred", "a"), ip.user_ns["X"])


def test_all_restores_every_pair(ip):
    run(ip, SEED)
    run(ip, "%%tape -q --all\ny_pred = a * X + b\nloss = loss_fn(Y, y_pred)")
    r = ip.user_ns["_tape"]
    assert r.targets == ["y_pred", "loss"] and r.sources == ["a", "X", "b", "Y"]
    assert len(r.derivatives) == 8


def test_data_tensors_are_sources_when_named_with_w(ip):
    run(ip, SEED)
    run(ip, "%%tape -q -w a,X\ny_pred = a * X + b\nloss = loss_fn(Y, y_pred)")
    assert rows(ip) == ["∂loss/∂a", "∂loss/∂X"]


def test_without_variables_the_tensors_read_are_the_sources(ip):
    run(ip, "x = tf.constant(4.0)\nv = tf.constant([1.0, 2.0])")
    run(ip, "%%tape -q\ny = x ** 2\nz = v * x")
    # no Variable: the tensors are what there is; y is the one scalar target
    assert rows(ip) == ["∂y/∂x", "∂y/∂v"]


def test_non_scalar_targets_are_shown_when_there_is_no_scalar_one(ip):
    run(ip, "w = tf.Variable([1.0, 2.0, 3.0])")
    run(ip, "%%tape -q --jacobian\ny = w ** 2")
    r = ip.user_ns["_tape"]
    assert r.targets == ["y"]
    assert np.allclose(r.jacobian("y", "w"), np.diag([2.0, 4.0, 6.0]))


def test_a_variable_only_written_does_not_hide_the_tensors(ip):
    """`counter.assign_add` writes a Variable no target is computed from: x stays a source."""
    run(ip, "x = tf.constant(1.5)\ncounter = tf.Variable(0.0)")
    run(ip, "%%tape -q\ncounter.assign_add(1.0)\ny = x ** 2")
    assert "∂y/∂x" in rows(ip)
    assert float(ip.user_ns["_tape"].gradient("y", "x")) == 3.0


def test_jacobian_and_hessian_beside_gradient(ip):
    run(ip, "w = tf.Variable([1.0, 2.0])\nx = tf.Variable(3.0)")
    run(ip, "%%tape -q --hessian\nf = tf.reduce_sum(w ** 3) * x")
    r = ip.user_ns["_tape"]
    assert np.allclose(r.hessian("f", "w"), np.diag([6.0 * 1 * 3, 6.0 * 2 * 3]))
    assert np.allclose(r.hessian("f", ip.user_ns["w"]), r.hessian("f", "w"))
    assert np.allclose(r.jacobian("f", "w"), [9.0, 36.0])  # a scalar's Jacobian: its gradient
    run(ip, "%%tape -q -o 2\nf = x ** 3")
    assert float(ip.user_ns["_tape"].hessian("f", "x")) == 18.0  # scalar source: d2f/dx2
    run(ip, "%%tape -q\nf = tf.reduce_sum(w ** 3)")
    with pytest.raises(KeyError, match="run it with %%tape --hessian"):
        ip.user_ns["_tape"].hessian("f", "w")


def test_a_loop_variable_does_not_name_the_last_item(ip):
    run(ip, "Ws = [tf.Variable(0.5), tf.Variable(2.0)]\nx = tf.constant(1.0)")
    run(ip, "%%tape -q\nh = x\nfor W in Ws:\n    h = h * W\nloss = h * 1.0")
    r = ip.user_ns["_tape"]
    assert r.sources == ["Ws[0]", "Ws[1]"]  # not `W`, which the loop leaves bound to Ws[1]
    assert [float(r.gradient("loss", s)) for s in r.sources] == [2.0, 0.5]


def test_a_variable_no_name_reaches_is_labelled_by_its_own_name_in_brackets(ip):
    run(
        ip,
        "def make():\n    v = tf.Variable(3.0, name='hidden')\n    return lambda: v * v\n"
        "f = make()",
    )
    run(ip, "%%tape -q\ny = f()")
    assert ip.user_ns["_tape"].sources == ["<hidden>"]
    assert float(ip.user_ns["_tape"].gradient("y", "<hidden>")) == 6.0
