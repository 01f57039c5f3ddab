"""Every cause of a None or NaN gradient (REFERENCE.md section 2) gets its diagnosis."""

from __future__ import annotations

import pytest
from conftest import run

from tapemagic.tape.result import NONE, NONFINITE, STRUCTURAL, ZERO


@pytest.fixture
def ns(ip):
    run(
        ip,
        "x = tf.constant(3.0); k = tf.constant(3); v = tf.Variable(2.0)\n"
        "frozen = tf.Variable(3.0, trainable=False); state = tf.Variable(0.0)\n"
        "zero = tf.constant(0.0); other = tf.constant(2.0)",
    )
    return ip


def tape(ip, cell: str):
    run(ip, "%%tape -q " + cell)
    return ip.user_ns["_tape"]


def only(result, target="y", source="x", order=1):
    d = result.find(target, source, order)
    assert d is not None, f"no derivative of {target} w.r.t. {source}: {result.derivatives}"
    return d


def test_1_constant_made_in_the_cell_and_not_watched(ns):
    r = tape(ns, "\nc = tf.constant(3.0)\ny = c * c")
    assert r.sources == []
    assert any("no tape watches a constant" in n and "-w c" in n for n in r.notes)


def test_1_constant_outside_the_watch_list(ns):
    r = tape(ns, "-w x\ny = x * other")
    assert r.gradient("y", "other") is None
    why = r.why("y", "other")
    assert "other is a constant tensor" in why and "-w other" in why


def test_2_integer_source(ns):
    d = only(tape(ns, "\ny = k * k"), source="k")
    assert d.status == NONE
    assert "k is an integer tensor (int32)" in d.why and "tf.cast(k, tf.float32)" in d.why


def test_3_numpy_trip(ns):
    d = only(tape(ns, "\ny = tf.constant(np.square(x.numpy()))"))
    assert d.status == NONE
    assert d.why.startswith("line 1: np.square(x.numpy()) leaves TensorFlow")


def test_3_float_builtin(ns):
    d = only(tape(ns, "\nh = float(x) * 2.0\ny = tf.constant(h)"))
    assert "line 1: float(x) leaves TensorFlow" in d.why


def test_3_target_is_a_numpy_value(ns):
    d = only(tape(ns, "\ny = np.square(x.numpy())"))
    assert d.status == NONE
    assert "y is a numpy.float32, not a tensor" in d.why and "x.numpy()" in d.why


def test_4_target_computed_after_the_tape(ns):
    r = tape(ns, "--persistent\ny = x * x")
    run(ns, "later = x * 3.0")
    assert r.gradient("later", "x") is None
    assert "later was not computed in the recorded cell" in r.why("later", "x")
    assert ns.user_ns["tape"].gradient(ns.user_ns["later"], ns.user_ns["x"]) is None


def test_4_inside_the_cell_own_tape(ns):
    cell = "\nwith tf.GradientTape() as t:\n    t.watch(x)\ny = x * x\ng = t.gradient(y, x)"
    r = tape(ns, cell)
    assert any("y is computed on line 3, after the block of tape t closed" in n for n in r.notes)


def test_5_variable_rebound_to_a_tensor(ns):
    r = tape(ns, "\nv = v + 1.0\ny = v * v")
    assert only(r, source="v").value.numpy() == pytest.approx(6.0)
    note = next(n for n in r.notes if "rebinds the name to a Tensor" in n)
    assert note.startswith("line 1: v was a tf.Variable") and "v.assign" in note


def test_6_stale_variable_after_rerunning_its_cell(ns):
    run(ns, "w = tf.Variable(1.0)")
    r = tape(ns, "\ny = w * w")
    run(ns, "w = tf.Variable(1.0)")
    new_w = ns.user_ns["w"]
    assert r.gradient("y", new_w) is None
    assert "w is a different object from the one the tape recorded" in r.why("y", new_w)
    assert r.gradient("y", "w").numpy() == pytest.approx(2.0)  # the recorded one still works


@pytest.mark.parametrize(
    "expr, culprit",
    [
        ("tf.cast(tf.argmax(tf.stack([x, 2 * x])), tf.float32)", "tf.argmax(tf.stack([x, 2 * x]))"),
        ("tf.round(x) * 2.0", "tf.round(x)"),
        ("tf.math.floor(x)", "tf.math.floor(x)"),
        ("x // 2.0", "x // 2.0"),
        ("tf.cast(tf.cast(x, tf.int32), tf.float32)", "tf.cast(x, tf.int32)"),
        ("tf.stop_gradient(x) * 2.0", "tf.stop_gradient(x)"),
        ("tf.cast(x > 1.0, tf.float32)", "x > 1.0"),
    ],
)
def test_7_non_differentiable_op(ns, expr, culprit):
    d = only(tape(ns, f"\ny = {expr}"))
    assert d.status == NONE
    assert d.why.startswith(f"line 1: {culprit} is not differentiable"), d.why


def test_7_sign_gives_zeros_not_none(ns):
    d = only(tape(ns, "\ny = tf.sign(x)"))
    assert d.status == ZERO
    assert "tf.sign(x) has a zero gradient everywhere" in d.why


def test_7_inside_a_called_function(ns):
    run(ns, "def f(t):\n    return tf.constant(np.square(t.numpy()))")
    d = only(tape(ns, "\ny = f(x)"))
    assert "in f(): np.square(t.numpy()) leaves TensorFlow" in d.why


def test_8_op_without_registered_gradient(ns):
    cell = (
        "\nimg = tf.reshape(tf.range(12.0), (2, 2, 3)) * x\ny = tf.image.adjust_contrast(img, 2.0)"
    )
    d = only(tape(ns, cell))
    assert d.status == NONE
    assert "no gradient is registered for the op AdjustContrastv2" in d.why
    assert "tf.custom_gradient" in d.why


def test_9_trainable_false(ns):
    r = tape(ns, "-w x\ny = x * frozen")
    assert r.gradient("y", "frozen") is None
    assert "frozen is a Variable with trainable=False" in r.why("y", "frozen")
    r = tape(ns, "\ny = frozen * frozen")  # watched on purpose by default, with a note
    assert only(r, source="frozen").value.numpy() == pytest.approx(6.0)
    assert any("frozen has trainable=False" in n for n in r.notes)


def test_10_layer_not_built_when_watched(ns):
    run(ns, "layer = tf.keras.layers.Dense(1)")
    cell = (
        "\nwith tf.GradientTape(watch_accessed_variables=False) as t:\n"
        "    t.watch(layer.trainable_variables)\n"
        "    out = layer(tf.ones((1, 2)) * x)\n"
        "g = t.gradient(out, layer.trainable_variables)"
    )
    r = tape(ns, "-w x" + cell)
    assert any("watch_accessed_variables=False" in n and "first call" in n for n in r.notes)


def test_11_state_on_the_path(ns):
    d = only(tape(ns, "-w x\nstate.assign(x * 2.0)\ny = state * 3.0"))
    assert d.status == NONE
    assert d.why.startswith("line 1: state.assign(x * 2.0) writes state")


def test_12_used_only_in_control_flow(ns):
    cell = "-w x\nif x > 0:\n    y = tf.constant(1.0)\nelse:\n    y = tf.constant(-1.0)"
    d = only(tape(ns, cell))
    assert d.why.startswith("x is used only in control flow (line 1: if x > 0:)")


def test_12_used_only_as_a_loop_count(ns):
    cell = "-w x\nacc = tf.constant(0.0)\nfor i in range(int(x)):\n    acc = acc + 1.0"
    d = only(tape(ns, cell), target="acc")
    assert d.why.startswith("x is used only in control flow (line 2: for i in range(int(x)):)")


def test_13_inner_gradient_after_the_outer_tape_closed(ns):
    cell = (
        "-w x\nwith tf.GradientTape() as t2:\n    t2.watch(x)\n"
        "    with tf.GradientTape() as t1:\n        t1.watch(x)\n        y = x ** 2\n"
        "dy = t1.gradient(y, x)\nd2 = t2.gradient(dy, x)"
    )
    r = tape(ns, cell)
    assert ns.user_ns["d2"] is None
    assert any(
        n.startswith("line 6: t1.gradient(...) runs after the block of tape t2") for n in r.notes
    )


def test_14_structurally_zero_shows_as_zero(ns):
    d = only(tape(ns, "-o 2\ny = 3.0 * x"), order=2)
    assert d.status == STRUCTURAL
    assert d.value.numpy() == 0.0
    assert "the order-2 derivative is 0 (shown so)" in d.why


def test_14_no_path_at_all(ns):
    d = only(tape(ns, "-w x,other\ny = other * 2.0"))
    assert d.status == NONE
    assert "y does not depend on x" in d.why


def test_15_non_scalar_target_is_summed(ns):
    d = only(tape(ns, "\ny = tf.stack([x * x, x ** 3])"))
    assert d.summed and d.notation == "∂Σy/∂x"
    assert d.value.numpy() == pytest.approx(33.0)  # 2x + 3x^2 at 3


def test_15_gradient_of_a_list(ns):
    cell = (
        "\nwith tf.GradientTape() as t:\n    t.watch(x)\n    a = x * x\n    b = x ** 3\n"
        "g = t.gradient([a, b], x)"
    )
    r = tape(ns, cell)
    assert any("silently sums the gradients of its 2 targets" in n for n in r.notes)


def test_16_nan_from_the_unselected_where_branch(ns):
    d = only(tape(ns, "\ny = tf.where(zero > 0, tf.math.log(zero), 0.)"), source="zero")
    assert d.status == NONFINITE
    assert "double where" in d.why and "tf.math.log(zero)" in d.why and "zero = 0" in d.why


def test_16_singular_op_without_where(ns):
    d = only(tape(ns, "\ny = zero ** 0.5"), source="zero")
    assert d.status == NONFINITE
    assert d.why.startswith(
        "line 1: zero ** 0.5 has an infinite or undefined derivative at zero = 0"
    )


def test_nan_target_itself(ns):
    d = only(tape(ns, "\ny = tf.sqrt(-zero - 1.0)"), source="zero")
    assert d.status == NONFINITE
    assert d.why.startswith("y itself is NaN or Inf at this point (line 1)")


def test_why_is_none_for_a_proper_gradient(ns):
    r = tape(ns, "\ny = x * x")
    assert r.why("y", "x") is None
