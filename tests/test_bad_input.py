"""Bad input: one clear line naming the problem and the fix, and nothing of the user's lost."""

from __future__ import annotations

import pytest
from conftest import run
from IPython.utils.capture import capture_output


def usage_error(ip, cell: str) -> str:
    """Run a cell that must fail with a one-line UsageError; return that line."""
    with capture_output() as cap:
        result = ip.run_cell(cell)
    assert not result.success
    text = cap.stdout + cap.stderr
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), text
    return lines[0]


@pytest.fixture
def ns(ip):
    run(
        ip,
        "x = tf.constant(2.0)\nname = 'text'\nitems = [1.0, 2.0]\ncount = 3\nv = tf.Variable(1.0)",
    )
    return ip


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("%%tape -w nope\ny = x", "--watch nope: no such name"),
        ("%%tape -t nope\ny = x", "--target nope: the cell does not bind nope"),
        ("%%tape -w name\ny = x", "name is a str, not a number or tensor"),
        ("%%tape -w items\ny = x", "items is a list, not a number or tensor"),
        (
            "%%tape -w count\ny = x",
            "count is an int (3): tapes differentiate floats only; make it count = 3.0",
        ),
        ("%%tape -o 5\ny = x", "--order must be 1 to 4, not 5"),
        ("%%tape -o two\ny = x", "argument -o/--order: invalid int value: 'two'"),
        ("%%tape -w 1a\ny = x", "--watch takes comma-separated names"),
        ("%%tape --device TPU:3\ny = x", "device='TPU:3' is not available; TensorFlow sees: /CPU"),
        ("%%tape --bogus\ny = x", "unrecognized arguments: --bogus"),
        ("%%tape\n   \n", "the cell is empty"),
        ("%grad x**2 --at x", "--at expects NAME=NUMBER"),
        ("%grad x**2 --at x=abc", "--at x=abc: not a number or list of numbers"),
        ("%grad x**2 --wrt nope", "--watch nope: no such name"),
        ("%grad count * 2", "reads no float value to differentiate"),
        ("%grad x**", "is not a Python expression"),
        ("%grad x * missing", "NameError: name 'missing' is not defined"),
        ("%grad", "%grad needs an expression"),
        ("%grad x**2 --at x=1,x=2", "--at gives x twice"),
        ("%grad x**2 --at x=True", "--at x=True: not a number"),
        ("%grad x**2 --at x=1 --jacobian -o 2", "--jacobian gives first derivatives"),
        ("%%tape\n# only a comment", "the cell is empty"),
    ],
)
def test_one_line_error(ns, cell, expected):
    before = {k: ns.user_ns[k] for k in ("x", "name", "items", "count", "v")}
    line = usage_error(ns, cell)
    assert expected in line, line
    for key, value in before.items():
        assert ns.user_ns[key] is value  # nothing replaced
    assert "y" not in ns.user_ns  # the cell did not run


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("%%tape -t count\ny = x * 2.0", "-t count: count holds an int (3), not a tensor"),
        ("%%tape -t z\nif False:\n    z = x\ny = x * 2.0", "-t z: the cell did not bind z"),
    ],
)
def test_a_bad_target_is_one_line_after_the_cell_ran(ns, cell, expected):
    """Whether a target is a tensor is known once the cell has run: what it bound stays."""
    line = usage_error(ns, cell)
    assert expected in line, line
    assert float(ns.user_ns["y"]) == 4.0


def test_syntax_error_is_shown_as_ipython_shows_it(ns):
    with capture_output() as cap:
        result = ns.run_cell("%%tape\ny = (x ** 2")
    assert not result.success
    assert "SyntaxError" in cap.stdout and "UsageError" not in cap.stdout


def test_exception_in_the_cell_keeps_earlier_assignments(ns):
    from tensorflow.python.eager import record

    with capture_output() as cap:
        result = ns.run_cell("%%tape\nbefore = x * 3.0\n1 / 0\nafter = 1")
    assert not result.success and isinstance(result.error_in_exec, ZeroDivisionError)
    assert "ZeroDivisionError" in cap.stdout and "tapemagic" not in cap.stdout
    assert float(ns.user_ns["before"]) == 6.0 and "after" not in ns.user_ns
    assert not record.could_possibly_record()  # the next plain cell is not recorded
    assert "__tapemagic_bind__" not in ns.user_ns
