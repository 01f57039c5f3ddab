"""Re-runs of a recorded cell (for `--check` and `--plot`): silent, and leaving no trace."""

from __future__ import annotations

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
