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
