"""Re-runs of a recorded cell (for `--check` and `--plot`): silent, and leaving no trace."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run
from IPython.utils.capture import capture_output


def test_reruns_are_silent(ip):
    run(ip, "x = tf.constant(1.0)")
    with capture_output() as cap:
        run(ip, "%%tape -q --check --plot\ndisplay('hello')\nprint('printed')\ny = x * 2.0")
    assert sum("hello" in o.data.get("text/plain", "") for o in cap.outputs) == 1
    assert cap.stdout.count("printed") == 1


def test_reruns_leave_no_trace_of_the_cells_state_changes(ip):
    run(ip, "x = tf.constant(1.5)\ncounter = tf.Variable(0.0)")
    run(ip, "%%tape -q --check --plot -w x\ncounter.assign_add(1.0)\nbound = x * 2.0\ny = x ** 2")
    assert float(ip.user_ns["counter"]) == 1.0  # once, by the recorded run
    assert ip.user_ns["bound"] is ip.user_ns["_tape"].values["bound"]  # the recorded run's
    assert ip.user_ns["_tape"].find("y", "x").check.ok


def test_plot_of_a_variable_assigned_before_it_is_read_is_drawn_at_the_value_read(ip):
    run(ip, "v = tf.Variable(1.0)")
    run(ip, "%%tape -q --plot\nv.assign(3.0)\ny = v * v")
    (curve,) = ip.user_ns["_tape"].tangents
    assert curve.x0 == 3.0 and curve.y0 == 9.0 and curve.slope == 6.0
    i = int(np.argmin(np.abs(curve.xs - 3.5)))  # the curve is y = v² around 3, not flat at 9
    assert curve.ys[i] == pytest.approx(curve.xs[i] ** 2, rel=1e-5)
    assert float(ip.user_ns["v"]) == 3.0
