"""`%grad`: one expression, a value returned."""

from __future__ import annotations

import numpy as np
from conftest import run
from IPython.utils.capture import capture_output


def test_returns_the_derivative_for_assignment(ip):
    run(ip, "g = %grad x**2 --at x=4")
    assert float(ip.user_ns["g"]) == 8.0
    assert "x" not in ip.user_ns  # --at values are for this evaluation only


def test_at_overrides_without_touching_the_namespace(ip):
    run(ip, "x = tf.constant(1.0)")
    g = ip.run_line_magic("grad", "x**3 --at x=2.0 -q")
    assert float(g) == 12.0 and float(ip.user_ns["x"]) == 1.0


def test_default_wrt_is_the_float_names_read(ip):
    run(ip, "x = tf.constant(3.0)\ny = 2.0\nn = 7")
    gx, gy = ip.run_line_magic("grad", "x * y + n -q")
    assert float(gx) == 2.0 and float(gy) == 3.0


def test_wrt_selects_and_orders(ip):
    run(ip, "x = tf.constant(3.0)\ny = tf.constant(2.0)")
    gy = ip.run_line_magic("grad", "x**2 * y --wrt y -q")
    assert float(gy) == 9.0
    gy, gx = ip.run_line_magic("grad", "x**2 * y --wrt y,x -q")
    assert (float(gy), float(gx)) == (9.0, 12.0)


def test_order_returns_that_derivative(ip):
    g2 = ip.run_line_magic("grad", "tf.sin(x) --at x=0.5 -o 2 -q")
    np.testing.assert_allclose(float(g2), -np.sin(0.5), rtol=1e-6)


def test_jacobian(ip):
    jac = ip.run_line_magic("grad", "v ** 2 --at v=[1.0,2.0] --jacobian -q")
    np.testing.assert_allclose(jac.numpy(), [[2.0, 0.0], [0.0, 4.0]])


def test_grad_inside_a_tape_cell(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q\ny = x ** 2\ng = %grad x**3 -q\nz = y * 2.0")
    r = ip.user_ns["_tape"]
    assert float(ip.user_ns["g"]) == 27.0
    assert float(r.gradient("z", "x")) == 12.0
    assert "__tapemagic_bind__" not in ip.user_ns


def test_renders_with_check_and_plot(ip):
    with capture_output() as cap:
        run(ip, "g = %grad tf.exp(x) --at x=0.0 --check --plot")
    html = cap.outputs[0].data["text/html"]
    assert "check ok" in html and "data:image/png;base64," in html
    assert float(ip.user_ns["g"]) == 1.0
    assert ip.user_ns["_tape"].targets == ["tf.exp(x)"]
