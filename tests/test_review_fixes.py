"""Cases found in review: each was wrong once and must stay right."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run
from IPython.utils.capture import capture_output
from test_bad_input import usage_error

from tapemagic.tape.result import NONE, STRUCTURAL, VALUE


def test_a_cell_that_changes_its_source_is_shown_and_checked_at_the_start(ip):
    run(ip, "v = tf.Variable(1.0)")
    run(ip, "%%tape -q --check\ny = v * v\nv.assign_add(1.0)")
    r = ip.user_ns["_tape"]
    d = r.find("y", "v")
    assert float(d.value) == 2.0 and float(np.asarray(r.point["v"])) == 1.0
    assert d.check.ok, d.check
    assert float(ip.user_ns["v"]) == 2.0  # the cell's own change stays; re-runs left none


def test_seed_sgd_step_inside_the_cell_checks_ok(ip):
    run(
        ip,
        "a = tf.Variable(0.0); b = tf.Variable(0.0)\n"
        "X = tf.constant([1., 4., 6, 3, 3, 4, 5, 6, 7])\n"
        "Y = tf.constant([0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2])",
    )
    cell = (
        "%%tape -q --check -t loss\nwith tf.GradientTape() as t:\n"
        "    loss = tf.reduce_sum(tf.square(Y - (a * X + b)))\n"
        "ga, gb = t.gradient(loss, [a, b])\na.assign_sub(0.001 * ga)\nb.assign_sub(0.001 * gb)"
    )
    run(ip, cell)
    r = ip.user_ns["_tape"]
    assert all(d.check.ok for d in r.derivatives), [d.check for d in r.derivatives]
    assert float(ip.user_ns["a"]) == pytest.approx(0.116900004)


def test_a_none_at_order_two_is_not_claimed_zero_without_a_caveat(ip):
    run(ip, "v = tf.constant([1., 2., 3., 4.])")
    cell = (
        "%%tape -q -o 2\n"
        "f = tf.reduce_sum(tf.image.resize(tf.reshape(v, (1, 2, 2, 1)), (4, 4)) ** 2)"
    )
    run(ip, cell)
    d = ip.user_ns["_tape"].find("f", "v", order=2)
    assert d.status == STRUCTURAL and "unless an op on the path has no gradient" in d.why


def test_structural_zero_carries_to_higher_orders(ip):
    g3 = ip.run_line_magic("grad", "3.0 * x --at x=2.0 -o 3 -q")
    assert float(g3) == 0.0
    run(ip, "x = tf.constant(2.0)")
    run(ip, "%%tape -q -o 3\ny = 3.0 * x")
    r = ip.user_ns["_tape"]
    assert [d.status for d in r.derivatives] == [VALUE, STRUCTURAL, STRUCTURAL]
    assert float(r.gradient("y", "x", order=3)) == 0.0


def test_keras_variables_are_variables(ip):
    run(ip, "kv = tf.keras.Variable(3.0)")
    assert float(ip.run_line_magic("grad", "kv**2 -q")) == 6.0
    run(ip, "%%tape -q\ny = kv * kv")
    assert ip.user_ns["_tape"].sources == ["kv"]
    run(ip, "%%tape -q -w kv\ny = kv * 2.0\nkind = type(kv).__module__")
    assert float(ip.user_ns["_tape"].gradient("y", "kv")) == 2.0
    assert ip.user_ns["kind"].startswith("keras")  # the cell saw the user's own object


def test_a_list_target_is_marked_summed(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q -t y\ny = [x * x, x ** 3]")
    d = ip.user_ns["_tape"].find("y", "x")
    assert d.summed and float(d.value) == 33.0 and d.notation == "∂Σy/∂x"


def test_check_uses_the_precision_the_target_is_computed_in(ip):
    run(ip, "x = tf.constant(1.3)")
    run(ip, "%%tape -q --check\ny = tf.cast(x, tf.float32) ** 2")
    check = ip.user_ns["_tape"].find("y", "x").check
    assert check.ok and check.precision == "float32", check


def test_reruns_are_silent_and_random_draws_are_named(ip):
    run(ip, "x = tf.constant(1.0)")
    with capture_output() as cap:
        run(ip, "%%tape -q --check --plot\ndisplay('hello')\ny = x * 2.0")
    assert sum("hello" in o.data.get("text/plain", "") for o in cap.outputs) == 1
    run(ip, "%%tape -q --check\ny = x * tf.random.normal(())")
    assert "draws new numbers at every run" in ip.user_ns["_tape"].find("y", "x").check.note


def test_odd_values_get_notes_not_tracebacks(ip):
    run(ip, "x = tf.constant(1.0)\ne = tf.zeros((0,))")
    with capture_output() as cap:
        assert ip.run_cell("%%tape -q --plot\ny = tf.complex(x, x)").success
        assert ip.run_cell("%%tape -q --hessian\ny = tf.reduce_sum(e ** 2)").success
    assert "Traceback" not in cap.stdout + cap.stderr


def test_tiny_gradients_are_values_not_zero(ip):
    run(ip, "x = tf.constant(1.0)")
    run(ip, "%%tape -q\ny = x * 1e-25")
    assert ip.user_ns["_tape"].find("y", "x").status == VALUE


def test_unload_removes_lazily_declared_magics(ip):
    ip.magics_manager.register_lazy("grad", "tapemagic")  # as the auto-load file does
    run(ip, "%unload_ext tapemagic")
    assert ip.find_line_magic("grad") is None and "grad" not in ip.magics_manager.lazy_magics
    run(ip, "%load_ext tapemagic")
    assert ip.find_line_magic("grad") is not None


@pytest.mark.parametrize(
    "setup, cell, expected",
    [
        ("k = 3", "%%tape -t k\ny = x * 2.0", "-t k: k holds an int (3), not a tensor"),
        ("", "%%tape -t z\nif False:\n    z = x\ny = x", "-t z: the cell did not bind z"),
        ("", "%grad x**2 --at x=1,x=2", "--at gives x twice"),
        ("", "%grad x**2 --at x=True", "--at x=True: not a number"),
        ("", "%grad x**2 --at x=1 --jacobian -o 2", "--jacobian gives first derivatives"),
        ("", "%%tape\n# only a comment", "the cell is empty"),
    ],
)
def test_more_bad_input(ip, setup, cell, expected):
    run(ip, "x = tf.constant(2.0)\n" + setup)
    assert expected in usage_error(ip, cell)


def test_numpy_imported_in_the_cell_leaves_tensorflow(ip):
    run(ip, "x = tf.constant(2.0)")
    run(ip, "%%tape -q\nimport numpy as npp\ny = tf.constant(npp.square(x.numpy()))")
    d = ip.user_ns["_tape"].find("y", "x")
    assert d.status == NONE and "leaves TensorFlow" in d.why


def test_hessian_of_a_vector_target_says_so(ip):
    run(ip, "v = tf.constant([1.0, 2.0])")
    run(ip, "%%tape -q --hessian\ny = v ** 2")
    assert any("--hessian is for scalar targets: y is not" in n for n in ip.user_ns["_tape"].notes)
