"""Every cell form a plain cell accepts binds and reads under `%%tape` as Python does:
augmented assignment, walrus, match, global, functions the cell defines, magic and shell
lines, and a trailing `;` that hides the last value."""

from __future__ import annotations

import re
import sys

import pytest
from conftest import run
from IPython.utils.capture import capture_output


def derivatives(ip) -> dict[str, float]:
    return {d.notation: float(d.value) for d in ip.user_ns["_tape"].derivatives}


def test_augmented_assignment_reads_its_target(ip):
    run(ip, "xa = tf.constant(1.0)")
    run(ip, "%%tape -q\nxa += 1.0\ny = xa ** 2")
    r = ip.user_ns["_tape"]
    assert derivatives(ip) == {"∂y/∂xa": 4.0}  # d(xa + 1)²/dxa at xa = 1
    assert r.notes == []  # no false "made in the cell as a constant" note
    assert float(ip.user_ns["xa"]) == 2.0  # and the cell did what a plain cell does


def test_augmented_assignment_of_a_watched_name(ip):
    run(ip, "v = tf.constant(3.0)")
    run(ip, "%%tape -q -w v\nv *= 2.0\nz = v + 1.0")
    assert derivatives(ip) == {"∂z/∂v": 2.0}


def test_walrus_binds_a_target(ip):
    run(ip, "x = tf.constant(3.0)")
    with capture_output() as cap:
        run(ip, "%%tape -q\nprint(float(y := x ** 2))\nz = y * 2.0")
    assert "9.0" in cap.stdout
    assert derivatives(ip) == {"∂y/∂x": 6.0, "∂z/∂x": 12.0}


def test_an_older_value_of_the_walrus_name_is_no_source(ip):
    run(ip, "x = tf.constant(3.0)\ny = tf.constant(100.0)")
    run(ip, "%%tape -q\nz = (y := x ** 2) * 2.0 + y")
    r = ip.user_ns["_tape"]
    assert r.sources == ["x"]  # the old y is not read: the walrus bound it first
    assert derivatives(ip) == {"∂y/∂x": 6.0, "∂z/∂x": 18.0}


def test_walrus_in_an_if_test_is_watched_with_w(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q -w n\nif (n := x * 2.0) > 0:\n    y = n ** 2")
    assert derivatives(ip) == {"∂y/∂n": 12.0}


@pytest.mark.skipif(sys.version_info < (3, 10), reason="match needs Python 3.10")
def test_match_cases_bind_and_read(ip):
    run(ip, "x = tf.constant(3.0)\npair = (tf.constant(2.0), tf.constant(5.0))")
    cell = (
        "%%tape -q\n"
        "match pair:\n"
        "    case (p, q) if float(p) > 10:\n"
        "        y = p * x\n"
        "    case (p, q):\n"
        "        y = q * x ** 2\n"
    )
    run(ip, cell)
    r = ip.user_ns["_tape"]
    assert float(r.gradient("y", "x")) == 30.0  # the second case ran: q * 2x at x = 3
    run(ip, "%%tape -q -w q -t y\nmatch pair:\n    case (p, q):\n        y = q * x ** 2")
    assert derivatives(ip) == {"∂y/∂q": 9.0}  # a name a case binds can be watched


def test_global_in_a_function_binds_the_cells_name(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q\ndef f():\n    global g\n    g = x ** 3\nf()")
    assert derivatives(ip) == {"∂g/∂x": 27.0}


def test_a_function_the_cell_defines_reads_the_namespace_when_called(ip):
    run(ip, "x = tf.constant(3.0)\nh = tf.constant(100.0)")
    run(ip, "%%tape -q\ndef f():\n    return h * 2.0\nh = x ** 2\nz = f()")
    r = ip.user_ns["_tape"]
    assert r.sources == ["x"]  # h is bound by the cell before f reads it
    assert derivatives(ip)["∂z/∂x"] == 12.0


def test_a_magic_line_runs_and_its_dataflow_is_followed(ip):
    run(ip, "x = tf.constant(3.0)\ny = tf.constant(100.0)")
    with capture_output() as cap:
        run(ip, "%%tape -q\n%time y = x ** 2\nz = y * 2.0")
    assert "Wall time" in cap.stdout  # %time ran as IPython runs it
    r = ip.user_ns["_tape"]
    assert r.sources == ["x"]  # x is read by the magic's code; the stale y is not a source
    assert derivatives(ip) == {"∂y/∂x": 6.0, "∂z/∂x": 12.0}
    assert float(ip.user_ns["z"]) == 18.0


def test_a_magic_cell_inside_the_cell(ip):
    run(ip, "x = tf.constant(3.0)")
    with capture_output() as cap:
        run(ip, "%%tape -q\n%%time\ny = x ** 2\nz = y + 1.0")
    assert "Wall time" in cap.stdout
    assert derivatives(ip) == {"∂y/∂x": 6.0, "∂z/∂x": 6.0}


def test_a_diagnosis_inside_a_magic_line_names_the_cells_line(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q\nw = x * 1.0\n%time y = tf.constant(np.square(x.numpy()))")
    why = ip.user_ns["_tape"].why("y", "x")
    assert "line 2" in why and "x.numpy()" in why


def test_timeit_reads_but_binds_nothing(ip):
    run(ip, "x = tf.constant(3.0)")
    with capture_output() as cap:
        run(ip, "%%tape -q\n%timeit -n 2 -r 1 t = x ** 2\nz = x * 4.0")
    assert "per loop" in cap.stdout
    assert derivatives(ip) == {"∂z/∂x": 4.0}
    assert "t" not in ip.user_ns  # as in a plain cell: %timeit's names are its own


def test_a_shell_line_runs(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q\nout = !echo shell-ran\ny = x ** 2")
    assert list(ip.user_ns["out"]) == ["shell-ran"]
    assert derivatives(ip) == {"∂y/∂x": 6.0}


def test_a_trailing_semicolon_hides_the_last_value(ip):
    run(ip, "x = tf.constant(3.0)")
    with capture_output() as cap:
        ip.run_cell("%%tape -q\ny = x ** 2\ny * 2;", store_history=True)
    assert "numpy=18.0" not in cap.stdout
    assert ip.user_ns["_tape"].targets == ["y"]
    with capture_output() as cap:
        ip.run_cell("%%tape -q\ny = x ** 2\ny * 2", store_history=True)
    assert "numpy=18.0" in cap.stdout  # without it, shown as in a plain cell
    with capture_output() as cap:
        ip.run_cell("%%tape -q\nx * 2;  # a comment after it", store_history=True)
    assert "numpy=6.0" not in cap.stdout
    assert float(ip.user_ns["_tape"].gradient("x * 2", "x")) == 2.0  # still the target


def test_traceback_lines_stay_right_after_the_rewrite(ip):
    run(ip, "x = tf.constant(3.0)")
    with capture_output() as cap:
        result = ip.run_cell("%%tape -q\ny = x ** 2\nz = y + undefined_name")
    assert not result.success
    text = re.sub(r"\x1b\[[0-9;]*m", "", cap.stdout)  # without the colours
    # numbered as IPython numbers a cell magic's body, the line as the user wrote it
    assert "line 2" in text and "----> 2 z = y + undefined_name" in text


def test_nonlocal_in_nested_functions(ip):
    run(ip, "x = tf.constant(3.0)")
    cell = (
        "%%tape -q\n"
        "def outer():\n"
        "    acc = x * 1.0\n"
        "    def inner():\n"
        "        nonlocal acc\n"
        "        acc = acc * 2.0\n"
        "    inner()\n"
        "    return acc\n"
        "y = outer()"
    )
    run(ip, cell)
    assert derivatives(ip) == {"∂y/∂x": 2.0}


def test_the_magic_line_takes_a_comment(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q -o 2  # second derivative too\ny = x ** 3")
    assert float(ip.user_ns["_tape"].gradient("y", "x", order=2)) == 18.0
