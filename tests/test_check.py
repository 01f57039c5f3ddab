"""`--check`: each first derivative compared with finite differences, and a verdict shown."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from IPython.utils.capture import capture_output
from test_tape_magic import shown


def test_check_gives_a_verdict(ip):
    run(ip, "x = tf.constant(0.7)\nu = tf.constant([0.5, -1.0, 2.0])")
    with capture_output() as cap:
        run(ip, "%%tape --check\ny = tf.sin(x) * tf.reduce_sum(u ** 2)")
    r = ip.user_ns["_tape"]
    for d in r.derivatives:
        assert d.check is not None and d.check.ok and d.check.precision == "float64", d.check
    assert "check ok" in shown(cap)
    # A Variable reached by name is replaced by a float64 copy for the re-runs, and the
    # user's own Variable is left as it was.
    run(ip, "v = tf.Variable([0.5, -1.0])")
    v = ip.user_ns["v"]
    run(ip, "%%tape -q --check\ny = tf.sin(x) * tf.reduce_sum(v ** 2)")
    check = ip.user_ns["_tape"].find("y", "v").check
    assert check.ok and check.precision == "float64", check
    assert ip.user_ns["v"] is v and v.dtype == tf.float32
    np.testing.assert_allclose(v.numpy(), [0.5, -1.0])


def test_check_flags_a_kink_and_a_lost_path(ip):
    run(ip, "x = tf.constant(0.0)")
    with capture_output() as cap:
        run(ip, "%%tape --check\ny = tf.abs(x)")
    assert ip.user_ns["_tape"].find("y", "x").check.kink
    assert "kink: one-sided slopes differ" in shown(cap)
    run(ip, "x = tf.constant(2.0)")
    with capture_output() as cap:
        run(ip, "%%tape --check\ny = tf.constant(np.square(x.numpy()))")
    check = ip.user_ns["_tape"].find("y", "x").check
    assert not check.ok
    seen = shown(cap)
    assert "check MISMATCH" in seen
    assert "finite differences say y does depend on x: the tape lost the path" in seen


def test_check_is_taken_at_the_values_the_cell_started_with(ip):
    run(ip, "v = tf.Variable(1.0)")
    with capture_output() as cap:
        run(ip, "%%tape --check\ny = v * v\nv.assign_add(1.0)")
    r = ip.user_ns["_tape"]
    d = r.find("y", "v")
    assert float(d.value) == 2.0 and float(np.asarray(r.point["v"])) == 1.0
    assert d.check.ok, d.check
    assert "v = 1.0" in shown(cap) and "check ok" in shown(cap)
    assert float(ip.user_ns["v"]) == 2.0  # the cell's own change stays; re-runs left none


def test_check_of_the_seed_sgd_step_inside_the_cell_is_ok(ip):
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


def test_check_uses_the_precision_the_target_is_computed_in(ip):
    run(ip, "x = tf.constant(1.3)")
    run(ip, "%%tape -q --check\ny = tf.cast(x, tf.float32) ** 2")
    check = ip.user_ns["_tape"].find("y", "x").check
    assert check.ok and check.precision == "float32", check


def test_check_names_random_draws(ip):
    run(ip, "x = tf.constant(1.0)")
    with capture_output() as cap:
        run(ip, "%%tape --check\ny = x * tf.random.normal(())")
    note = ip.user_ns["_tape"].find("y", "x").check.note
    assert note.startswith("line 1: tf.random.normal(()) draws new numbers at every run"), note
    assert note in shown(cap)


def check_of(ip, setup: str, cell: str, target: str = "y", source: str = "x"):
    """Run a --check cell; its Check and everything the user saw."""
    run(ip, setup)
    with capture_output() as cap:
        run(ip, "%%tape --check\n" + cell)
    return ip.user_ns["_tape"].find(target, source).check, shown(cap)


@pytest.mark.parametrize(
    "setup, cell",
    [
        ("x = tf.Variable(0.7, dtype=tf.float16)", "y = tf.sin(x) * x ** 3"),
        ("x = tf.constant([0.7, 1.3], tf.float16)", "y = tf.reduce_sum(tf.exp(x) * 3.0)"),
        ("x = tf.constant(0.7)", "y = tf.cast(x, tf.float16) ** 3"),
        (
            "x = tf.Variable([0.7, -1.2, 2.0], dtype=tf.bfloat16)",
            "y = tf.reduce_sum(tf.tanh(x) * x)",
        ),
        ("x = tf.Variable(0.7, dtype=tf.bfloat16)", "y = tf.sin(x) * x ** 2"),
        ("x = tf.constant(0.7)", "y = tf.cast(x, tf.bfloat16) ** 3"),
    ],
)
def test_check_low_precision_smooth_functions_are_ok(ip, setup, cell):
    check, seen = check_of(ip, setup, cell)
    assert check.verdict == "ok" and not check.kink, check
    assert "check ok" in seen and "MISMATCH" not in seen and "kink" not in seen


@pytest.mark.parametrize("setup", ["x = tf.Variable(0.3)", "x = tf.constant(0.3)"])
def test_check_of_a_curved_function_is_ok_for_a_variable_as_for_a_tensor(ip, setup):
    check, seen = check_of(ip, setup, "y = tf.sin(100.0 * x)")
    assert check.verdict == "ok" and not check.kink and check.precision == "float64", check
    assert "MISMATCH" not in seen and "kink" not in seen


def test_check_catches_a_wrong_gradient_in_every_precision(ip):
    run(
        ip,
        "@tf.custom_gradient\ndef wrong(x):\n    return x * x, lambda dy: dy * 3.0 * x",
    )
    for setup in (
        "x = tf.constant(1.5)",
        "x = tf.Variable(1.5)",
        "x = tf.Variable(1.5, dtype=tf.bfloat16)",
    ):
        check, seen = check_of(ip, setup, "y = wrong(x)")
        assert check.verdict == "MISMATCH" and check.max_rel_error == pytest.approx(1 / 3, rel=1e-2)
        assert "check MISMATCH" in seen


def test_check_of_a_variable_assigned_before_it_is_read(ip):
    check, seen = check_of(ip, "x = tf.Variable(1.0)", "x.assign(3.0)\ny = x * x")
    r = ip.user_ns["_tape"]
    assert float(r.gradient("y", "x")) == 6.0 and float(r.point["x"]) == 3.0
    assert check.verdict == "ok", check
    assert "x = 3.0" in seen and "x = 1.0" not in seen and "check ok" in seen


def test_check_of_a_source_that_cannot_be_checked_says_why(ip):
    check, seen = check_of(ip, "x = tf.constant(1.0 + 2.0j)", "y = tf.math.real(x * x)")
    assert check.verdict == "not checked" and "x is complex (complex128)" in check.note
    assert "check not checked: x is complex" in seen and "MISMATCH" not in seen
    assert "nan" not in check.summary()
    cell = "y = x * later if float(x) != 1.0 else x * 2.0"
    check, seen = check_of(ip, "x = tf.constant(1.0)", cell)
    assert check.summary() == (
        "not checked: the cell fails when x moves (NameError: name 'later' is not defined)"
    )
    assert "MISMATCH" not in seen


@pytest.mark.parametrize(
    "setup, cell, draw",
    [
        ("", "g = tf.random.Generator.from_non_deterministic_state()\ny = x * g.normal(())",
         "line 2: g.normal(())"),
        ("", "y = x * tf.random.uniform((), seed=3)", "line 1: tf.random.uniform((), seed=3)"),
        ("", "y = x * np.random.rand()", "line 1: np.random.rand()"),
    ],
)  # fmt: skip
def test_check_names_random_draws_that_change_between_runs(ip, setup, cell, draw):
    check, seen = check_of(ip, "x = tf.constant(1.0)\n" + setup, cell)
    assert check.verdict == "inconclusive", check
    assert check.note.startswith(f"{draw} draws new numbers at every run"), check.note
    assert check.summary() == f"inconclusive: {check.note}"  # no NaN numbers
    assert "check inconclusive: " + draw in seen and "MISMATCH" not in seen


@pytest.mark.parametrize(
    "setup, cell, draw",
    [
        ("", "g = tf.random.Generator.from_seed(1)\ny = x * g.normal(())", "line 2: g.normal(())"),
        ("g = tf.random.Generator.from_seed(1)", "y = x * g.normal(())", "line 1: g.normal(())"),
    ],
)
def test_check_names_seeded_draws_and_holds(ip, setup, cell, draw):
    check, _ = check_of(ip, "x = tf.constant(1.0)\n" + setup, cell)
    assert check.verdict == "ok", check
    assert check.note.startswith(f"{draw} draws random numbers; the re-runs draw the recorded")


def test_check_leaves_a_generators_state_as_the_plain_cell_does(ip):
    run(ip, "x = tf.constant(1.0)\ng = tf.random.Generator.from_seed(1)")
    run(ip, "%%tape -q --check\ny = x * g.normal(())")
    run(ip, "after = g.state.numpy().copy()\ng.reset_from_seed(1)\ng.normal(())")
    np.testing.assert_array_equal(ip.user_ns["after"], ip.user_ns["g"].state.numpy())


@pytest.mark.parametrize(
    "cell", ["y = tf.nn.relu(x)", "y = tf.abs(x)", "y = tf.nn.relu(x) + tf.abs(x)"]
)
def test_check_at_a_kink_is_inconclusive_not_a_mismatch(ip, cell):
    check, seen = check_of(ip, "x = tf.constant(0.0)", cell)
    assert check.verdict == "inconclusive" and check.kink, check
    assert "kink: one-sided slopes differ" in seen and "MISMATCH" not in seen


def test_check_of_a_safe_where_is_ok(ip):
    cell = "y = tf.where(x > 0, tf.sqrt(tf.where(x > 0, x, 1.0)), 0.0)"
    check, seen = check_of(ip, "x = tf.constant(0.0)", cell)
    assert ip.user_ns["_tape"].why("y", "x") is None
    assert check.verdict in ("ok", "inconclusive") and "MISMATCH" not in seen
    check, _ = check_of(ip, "x = tf.constant(2.0)", cell)
    assert check.verdict == "ok"


def test_check_too_coarse_in_low_precision_is_inconclusive_not_ok_or_mismatch(ip):
    # A bfloat16 Variable reached through an object cannot be re-run in float64: differences
    # in bfloat16 along random directions cannot tell right from wrong, and say so.
    run(ip, "class Box:\n    pass\nbox = Box()")
    run(ip, "box.v = tf.Variable(tf.cast(tf.linspace(-1.0, 1.0, 12), tf.bfloat16))")
    with capture_output() as cap:
        run(ip, "%%tape --check\ny = tf.reduce_sum(tf.exp(box.v) * box.v)")
    (d,) = ip.user_ns["_tape"].derivatives
    assert d.check.verdict == "inconclusive" and d.check.precision == "bfloat16", d.check
    assert d.check.note.startswith("finite differences in bfloat16 are too coarse to decide")
    assert "check inconclusive: finite differences in bfloat16" in shown(cap)


def test_only_a_mismatch_is_shown_as_one(ip):
    from tapemagic.display.render import to_html, to_markdown

    red, green = "rgb(214,39,40)", "rgb(44,160,44)"
    run(ip, "x = tf.constant(0.0)")
    run(ip, "%%tape -q --check\ny = tf.nn.relu(x)")  # a kink: inconclusive
    r = ip.user_ns["_tape"]
    assert red not in to_html(r) and green not in to_html(r)
    assert "❔ check inconclusive: kink" in to_markdown(r) and "❌" not in to_markdown(r)
    run(ip, "z = tf.constant(1.0 + 2.0j)")
    run(ip, "%%tape -q --check -w z\ny = tf.math.real(z * z)")  # not checked
    r = ip.user_ns["_tape"]
    assert red not in to_html(r) and "➖ check not checked: z is complex" in to_markdown(r)
    run(ip, "@tf.custom_gradient\ndef wrong(x):\n    return x * x, lambda dy: dy * 3.0 * x")
    run(ip, "x = tf.constant(1.5)")
    run(ip, "%%tape -q --check\ny = wrong(x)")
    r = ip.user_ns["_tape"]
    assert red in to_html(r) and "❌ check MISMATCH" in to_markdown(r)


def test_check_tells_a_low_precision_rounding_loss_from_a_wrong_derivative(ip):
    # tanh saturates: 1 - tanh² loses most of its digits in bfloat16. The derivative code
    # is right (the float64 re-run agrees with the differences): inconclusive, with why.
    check, seen = check_of(ip, "x = tf.Variable(1.183, dtype=tf.bfloat16)", "y = tf.tanh(x + x)")
    assert check.verdict == "inconclusive", check
    assert check.note.startswith("bfloat16 rounding: the same cell in float64 gives 0.07015")
    assert "finite differences agree with that" in seen and "MISMATCH" not in seen
