"""Long cells: a %%tape cell of thousands of lines runs as the plain cell does, and what
tapemagic keeps of its analysis stays small (speeds are measured in tests/bench_tape.py)."""

from __future__ import annotations

import gc

import pytest
from conftest import run

LINES = 2000


def long_cell(tag: str, lines: int = LINES) -> str:
    body = "n = 0.5\n" + "n = n * 1.0001 + 0.25\n" * (lines - 2)
    return body + f"y = x * n\n# {tag}\n"


def plain_n(lines: int = LINES) -> float:
    n = 0.5
    for _ in range(lines - 2):
        n = n * 1.0001 + 0.25
    return n


@pytest.mark.parametrize("runs", [1, 2])  # the second run of the same text: a cached analysis
def test_long_cell_values_and_derivative(ip, runs):
    run(ip, "x = tf.constant(3.0)")
    for _ in range(runs):
        run(ip, "%%tape -q\n" + long_cell(f"values {runs}"))
    r = ip.user_ns["_tape"]
    assert ip.user_ns["n"] == plain_n()  # the Python float a plain cell binds
    assert r.targets == ["y"] and r.sources == ["x"]
    assert r.gradient("y", "x").numpy() == pytest.approx(plain_n(), rel=1e-6)


def test_long_cell_error_names_its_line(ip):
    run(ip, "x = tf.constant(3.0)")
    cell = long_cell("error").replace("y = x * n\n", "y = x * n\nz = undefined_name\n")
    result = ip.run_cell("%%tape -q\n" + cell)
    assert isinstance(result.error_in_exec, NameError)
    assert "undefined_name" in str(result.error_in_exec)


def test_analyses_kept_stay_small(ip):
    """Each analysis is cached for a re-run of the same cell; twenty different 2,000-line
    cells must not keep twenty analyses' worth of objects alive (each was 10,000)."""
    from tapemagic.tape import analysis

    gc.collect()
    before = len(gc.get_objects())
    for i in range(20):
        info = analysis.analyse(long_cell(f"cache {i}"))
        assert len(info.statements) == LINES and info.binds == ["n", "y"]
    del info
    gc.collect()
    kept = len(gc.get_objects()) - before
    assert kept < 25_000, f"{kept} objects kept by 20 analyses of {LINES}-line cells"


def test_computed_from_agrees_with_depends_on():
    """The one-pass `computed_from` finds exactly the names whose `depends_on` meets the
    sources (what the targets and notes were found by, name by name)."""
    from tapemagic.tape import analysis

    cell = (
        "a = x * 2.0\nb = a + y\nc = z ** 2\nd = b * c\ne = 1.0\nf = e + d\n"
        "g = g0 + 1.0\ng = g * a\nh = w\nfor k in range(3):\n    m = k * h\n"
    )
    info = analysis.analyse(cell)
    for sources in (["x"], ["z"], ["x", "w"], ["e"], ["g0"], ["nothing"], []):
        expected = {n for n in info.binds if info.depends_on(n) & set(sources)}
        assert info.computed_from(sources) & set(info.binds) == expected, sources


def test_numbers_given_with_w_stay_numbers_down_a_long_chain(ip):
    """-w pf makes pf a tensor for the run; what the cell computed from it by plain
    arithmetic is left a Python float, as a plain cell leaves it, and what TensorFlow took
    part in (t) stays a tensor."""
    import tensorflow as tf

    run(ip, "pf = 0.5\nt = tf.constant(2.0)")
    lines = 100
    cell = "n0 = pf * 1.0\n" + "".join(
        f"n{i} = n{i - 1} * 1.0001 + 0.25\n" for i in range(1, lines)
    )
    run(ip, f"%%tape -q -w pf\n{cell}m = n{lines - 1} * t\n")
    expected = 0.5
    for _ in range(1, lines):
        expected = expected * 1.0001 + 0.25
    last = ip.user_ns[f"n{lines - 1}"]
    assert type(last) is float and last == pytest.approx(expected, rel=1e-5)
    assert type(ip.user_ns["pf"]) is float and ip.user_ns["pf"] == 0.5
    assert isinstance(ip.user_ns["m"], tf.Tensor)
    assert ip.user_ns["m"].numpy() == pytest.approx(2 * expected, rel=1e-5)
