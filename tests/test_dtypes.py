"""Every float dtype works as a source, and -w numbers keep the dtype and type a plain cell
gives them; results have the same shapes and entries whichever way they were computed."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from IPython.utils.capture import capture_output
from test_tape_magic import shown

from tapemagic.tape.result import NONE, STRUCTURAL

FLOATS = ["float16", "bfloat16", "float32", "float64"]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", ["constant", "Variable"])
def test_every_float_dtype_is_a_source(ip, dtype, kind):
    run(ip, f"s = tf.{kind}(1.5, dtype=tf.{dtype})")
    with capture_output() as cap:
        run(ip, "%%tape --check\ny = s ** 3")
    d = ip.user_ns["_tape"].find("y", "s")
    assert d.value.dtype.name == dtype
    assert float(tf.cast(d.value, tf.float64)) == pytest.approx(6.75, rel=1e-2)
    assert d.check.verdict == "ok", d.check
    seen = shown(cap)
    assert "Traceback" not in seen and dtype in seen and "MISMATCH" not in seen


def test_bfloat16_scalar_source_has_no_internal_traceback(ip):
    run(ip, "xb = tf.constant(1.5, tf.bfloat16)")
    with capture_output() as cap:
        run(ip, "%%tape\ny = xb * xb")
    assert "3.0" in shown(cap) and "bfloat16" in shown(cap)
    run(ip, "g = %grad xb * xb")
    assert ip.user_ns["g"].dtype == tf.bfloat16 and float(ip.user_ns["g"]) == 3.0


def test_watch_keeps_a_float64_array_float64_next_to_float64_tensors(ip):
    run(ip, "na = np.array([1.0, 2.0])\nx64 = tf.constant([3.0, 4.0], tf.float64)")
    run(ip, "plain = na * x64")  # what the plain cell gives: float64
    run(ip, "%%tape -q -w na\ny = na * x64")
    g = ip.user_ns["_tape"].gradient("y", "na")
    assert g.dtype == tf.float64 == ip.user_ns["plain"].dtype
    np.testing.assert_array_equal(g.numpy(), [3.0, 4.0])
    assert isinstance(ip.user_ns["na"], np.ndarray) and ip.user_ns["na"].dtype == np.float64


def test_watch_gives_numbers_the_dtype_of_the_tensors_they_meet(ip):
    run(ip, "pf = 2.0\nna = np.array([1.0, 2.0])\nx32 = tf.constant([3.0, 4.0])")
    run(ip, "%%tape -q -w pf,na\ny = tf.reduce_sum(pf * na * x32)")
    r = ip.user_ns["_tape"]
    assert r.gradient("y", "pf").dtype == tf.float32 and float(r.gradient("y", "pf")) == 11.0
    assert r.gradient("y", "na").dtype == tf.float32
    run(ip, "%%tape -q -w na\ny = tf.reduce_sum(tf.sin(na))")  # NumPy alone: its own float64
    assert ip.user_ns["_tape"].gradient("y", "na").dtype == tf.float64


def test_watch_of_a_python_float_the_cell_rebinds_leaves_a_float(ip):
    run(ip, "pf = 2.0")
    run(ip, "%%tape -q -w pf\npf = pf * 3.0\ny = pf ** 2")
    assert type(ip.user_ns["pf"]) is float and ip.user_ns["pf"] == 6.0
    run(ip, "pf = 2.0\nnd = np.array([1.0, 2.0])")
    run(ip, "%%tape -q -w pf,nd\nnd = nd * pf\ny = tf.reduce_sum(nd)")
    assert type(ip.user_ns["nd"]) is np.ndarray and ip.user_ns["nd"].dtype == np.float64
    np.testing.assert_array_equal(ip.user_ns["nd"], [2.0, 4.0])
    # With TensorFlow on the way the plain cell gives a tensor too: so does %%tape.
    run(ip, "pf = 2.0")
    run(ip, "%%tape -q -w pf\npf = tf.sin(pf)\ny = pf * 2.0")
    assert isinstance(ip.user_ns["pf"], tf.Tensor)


def test_structural_hessian_has_the_shape_of_a_computed_one(ip):
    run(ip, "xs = tf.constant(2.0)\nxv = tf.constant([1.0, 2.0])")
    run(ip, "%%tape -q --hessian\ny = 3.0 * xs")
    structural = ip.user_ns["_tape"].find("y", "xs", kind="hessian")
    run(ip, "%%tape -q --hessian\ny = xs ** 3")
    computed = ip.user_ns["_tape"].find("y", "xs", kind="hessian")
    assert structural.status == STRUCTURAL and structural.value.shape == computed.value.shape == ()
    run(ip, "%%tape -q --hessian\ny = tf.reduce_sum(3.0 * xv)")
    assert ip.user_ns["_tape"].find("y", "xv", kind="hessian").value.shape == (2, 2)


def test_every_order_asked_for_has_an_entry(ip):
    run(ip, "xs = tf.constant(2.0)\nzz = tf.constant(1.0)")
    run(ip, "%%tape -q -o 3\ny = xs * 1.0\nw = zz * 2.0")
    r = ip.user_ns["_tape"]
    for order in (1, 2, 3):
        assert r.gradient("y", "zz", order=order) is None
        d = r.find("y", "zz", order)
        assert d.status == NONE and "y does not depend on zz" in r.why("y", "zz", order)
    assert "order-1 derivative is None, so there is no order 3" in r.why("y", "zz", 3)
    assert float(r.gradient("y", "xs", order=3)) == 0.0  # structural, computed as zeros
    with pytest.raises(KeyError):  # not asked for: still a clear KeyError
        r.gradient("y", "zz", order=4)


def test_every_hessian_asked_for_has_an_entry(ip):
    run(ip, "xs = tf.constant(2.0)\nzz = tf.constant(1.0)")
    run(ip, "%%tape -q --hessian\ny = xs ** 3 + 0.0 * tf.stop_gradient(zz)")
    r = ip.user_ns["_tape"]
    d = r.find("y", "zz", kind="hessian")
    assert d is not None and d.value is None and d.status == NONE
    assert "stop_gradient" in d.why
    assert float(r.find("y", "xs", kind="hessian").value) == 12.0


def test_watch_leaves_plain_types_in_names_computed_from_numbers(ip):
    run(ip, "pf = 2.0\nnd = np.array([1.0, 2.0], np.float32)")
    run(ip, "%%tape -q -w pf,nd\nq = pf ** 2\nr = nd * pf\nt = tf.reduce_sum(nd) * pf")
    ns = ip.user_ns
    assert type(ns["q"]) is float and ns["q"] == 4.0  # as plain Python gives
    assert type(ns["r"]) is np.ndarray and ns["r"].dtype == np.float32
    assert isinstance(ns["t"], tf.Tensor)  # TensorFlow took part: a tensor, as plain
    assert float(ns["_tape"].gradient("q", "pf")) == 4.0  # the result keeps the tensors
