"""`%%tape` end to end in a real IPython shell: the seed's examples, every option, and a
cell that behaves as it would without the magic."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import run
from IPython.utils.capture import capture_output

from tapemagic.tape.result import VALUE

SEED = (
    "X = tf.constant([1., 4., 6, 3, 3, 4, 5, 6, 7])\n"
    "Y = tf.constant([0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2])\n"
    "def loss_fn(y_true, y_pred):\n"
    "    return tf.reduce_sum(tf.square(y_true - y_pred))\n"
    "a = tf.Variable(0.0)\nb = tf.Variable(0.0)"
)


def shown(cap) -> str:
    """Everything a user sees from a captured cell: text and the HTML that was displayed."""
    parts = [cap.stdout]
    for out in cap.outputs:
        parts += [out.data.get("text/html", ""), out.data.get("text/plain", "")]
    return "\n".join(parts)


def test_seed_first_derivative(ip):
    run(ip, "x = tf.constant(4.0)")
    with capture_output() as cap:
        run(ip, "%%tape\ny = x ** 2")
    r = ip.user_ns["_tape"]
    assert r.targets == ["y"] and r.sources == ["x"]
    assert r.gradient("y", "x").numpy() == 8.0
    html = cap.outputs[0].data["text/html"]
    assert "∂y/∂x" in html and "8.0" in html and "x = 4.0" in html


def test_seed_second_derivative(ip):
    run(ip, "x = tf.constant(4.0)")
    run(ip, "%%tape -q -o 2\ny = x ** 2")
    r = ip.user_ns["_tape"]
    assert r.gradient("y", "x", order=2).numpy() == 2.0
    assert r.gradient("y", "x").numpy() == 8.0


def test_higher_orders_up_to_four(ip):
    run(ip, "x = tf.constant(2.0)")
    run(ip, "%%tape -q -o 4\ny = x ** 5")
    r = ip.user_ns["_tape"]
    expected = [5 * 2**4, 20 * 2**3, 60 * 2**2, 120 * 2]
    assert [float(r.gradient("y", "x", k)) for k in (1, 2, 3, 4)] == expected


def test_seed_persistent_tape_sgd_step(ip):
    run(ip, SEED)
    run(ip, "%%tape -q --persistent\ny_pred = a * X + b\nloss = loss_fn(Y, y_pred)")
    run(
        ip,
        "a.assign_sub(tape.gradient(loss, a) * 0.001)\n"
        "b.assign_sub(tape.gradient(loss, b) * 0.001)",
    )
    assert ip.user_ns["a"].numpy() == np.float32(0.116900004)
    assert ip.user_ns["b"].numpy() == np.float32(0.023920001)
    r = ip.user_ns["_tape"]
    # The defaults answer the question: the loss with respect to the Variables, no data.
    assert r.targets == ["loss"] and r.sources == ["a", "b"]
    assert [d.notation for d in r.derivatives] == ["∂loss/∂a", "∂loss/∂b"]
    assert float(r.gradient("loss", "a")) == pytest.approx(-116.9)
    # The data stay watched: asked for, their gradients come from the kept tape.
    assert np.asarray(r.gradient("loss", "Y")).shape == (9,)


def test_cell_behaves_as_a_plain_cell(ip):
    run(ip, "x = tf.constant(3.0)")
    with capture_output() as cap:
        run(ip, "%%tape\nprint('hello from the cell')\ny = x * 2.0\nz = 5\ny + 1")
    assert "hello from the cell" in cap.stdout
    assert "numpy=7.0" in cap.stdout  # the last expression is displayed as IPython does
    assert ip.user_ns["z"] == 5 and float(ip.user_ns["y"]) == 6.0
    assert ip.user_ns["_tape"].targets == ["y"]


def test_last_expression_is_the_target_when_nothing_is_bound(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q\nx ** 3")
    r = ip.user_ns["_tape"]
    assert r.targets == ["x ** 3"]
    assert float(r.gradient("x ** 3", "x")) == 27.0


def test_watch_a_name_bound_inside_the_cell(ip):
    run(ip, "%%tape -q -w x\nx = tf.constant(4.0)\ny = x ** 2")
    assert float(ip.user_ns["_tape"].gradient("y", "x")) == 8.0


def test_watch_converts_python_and_numpy_floats_without_replacing_them(ip):
    run(ip, "p = 3.0\nq = np.array([1.0, 2.0])")
    run(ip, "%%tape -q -w p,q\ny = p * tf.reduce_sum(q ** 2)")
    r = ip.user_ns["_tape"]
    assert float(r.gradient("y", "p")) == 5.0
    np.testing.assert_allclose(r.gradient("y", "q").numpy(), [6.0, 12.0])
    assert ip.user_ns["p"] == 3.0 and type(ip.user_ns["p"]) is float
    assert isinstance(ip.user_ns["q"], np.ndarray)


def test_variables_created_in_the_cell_are_sources(ip):
    run(ip, "%%tape -q\nw = tf.Variable(2.0)\ny = w ** 3")
    r = ip.user_ns["_tape"]
    assert r.sources == ["w"] and float(r.gradient("y", "w")) == 12.0


def test_keras_weights_reached_through_a_model(ip):
    run(
        ip,
        "model = tf.keras.Sequential([tf.keras.layers.Dense(1, kernel_initializer='ones')])\n"
        "model.build((None, 2)); inputs = tf.constant([[1.0, 2.0]])",
    )
    run(ip, "%%tape -q\nout = tf.reduce_sum(model(inputs))")
    r = ip.user_ns["_tape"]
    kernel = next(s for s in r.sources if s.endswith("kernel"))
    np.testing.assert_allclose(r.gradient("out", kernel).numpy(), [[1.0], [2.0]])


def test_target_option_selects(ip):
    run(ip, "x = tf.constant(2.0)")
    run(ip, "%%tape -q -t z\ny = x * 3.0\nz = x ** 2")
    r = ip.user_ns["_tape"]
    assert r.targets == ["z"] and [d.target for d in r.derivatives] == ["z"]


def test_jacobian_of_a_vector_target(ip):
    run(ip, "v = tf.constant([1.0, 2.0, 3.0])")
    with capture_output() as cap:
        run(ip, "%%tape --jacobian\ny = v ** 2")
    r = ip.user_ns["_tape"]
    jac = r.find("y", "v", kind="jacobian")
    np.testing.assert_allclose(jac.value.numpy(), np.diag([2.0, 4.0, 6.0]))
    summed = r.find("y", "v")
    assert summed.summed
    np.testing.assert_allclose(summed.value.numpy(), [2.0, 4.0, 6.0])
    assert "the sum of y&#x27;s elements (shape (3,))" in shown(cap)


def test_hessian_of_a_scalar_target(ip):
    run(ip, "v = tf.constant([1.0, 2.0])\nA = tf.constant([[1.0, 2.0], [3.0, 4.0]])")
    run(ip, "%%tape -q --hessian -w v\nf = tf.tensordot(v, tf.linalg.matvec(A, v), 1)")
    hess = ip.user_ns["_tape"].find("f", "v", kind="hessian")
    np.testing.assert_allclose(hess.value.numpy(), [[2.0, 5.0], [5.0, 8.0]])


def test_hessian_of_a_vector_target_says_so(ip):
    run(ip, "v = tf.constant([1.0, 2.0])")
    run(ip, "%%tape -q --hessian\ny = v ** 2")
    assert any("--hessian is for scalar targets: y is not" in n for n in ip.user_ns["_tape"].notes)


def test_hessian_of_an_empty_source_is_a_diagnosis_not_a_traceback(ip):
    run(ip, "e = tf.zeros((0,))")
    with capture_output() as cap:
        run(ip, "%%tape --hessian\ny = tf.reduce_sum(e ** 2)")
    assert "Traceback" not in cap.stdout + cap.stderr
    hessian = ip.user_ns["_tape"].find("y", "e", kind="hessian")
    assert hessian.value is None
    assert hessian.why.startswith("TF could not take this gradient: ValueError: "), hessian.why
    assert hessian.why in shown(cap).replace("&#x27;", "'")


def test_tiny_gradients_are_values_not_zero(ip):
    run(ip, "x = tf.constant(1.0)")
    run(ip, "%%tape -q\ny = x * 1e-25")
    d = ip.user_ns["_tape"].find("y", "x")
    assert d.status == VALUE and float(d.value) == pytest.approx(1e-25)


def test_keras_variables_are_sources(ip):
    run(ip, "kv = tf.keras.Variable(3.0)")
    assert float(ip.run_line_magic("grad", "kv**2 -q")) == 6.0
    run(ip, "%%tape -q\ny = kv * kv")
    assert ip.user_ns["_tape"].sources == ["kv"]
    run(ip, "%%tape -q -w kv\ny = kv * 2.0\nkind = type(kv).__module__")
    assert float(ip.user_ns["_tape"].gradient("y", "kv")) == 2.0
    assert ip.user_ns["kind"].startswith("keras")  # the cell saw the user's own object


def test_persistent_with_a_name(ip):
    run(ip, "x = tf.constant(3.0)")
    run(ip, "%%tape -q --persistent t9\ny = x * x")
    assert float(ip.user_ns["t9"].gradient(ip.user_ns["y"], ip.user_ns["x"])) == 6.0


def test_plot_makes_a_png(ip):
    run(ip, "x = tf.constant(1.0)")
    with capture_output() as cap:
        run(ip, "%%tape --plot -o 2\ny = tf.sin(x)")
    (curve,) = ip.user_ns["_tape"].tangents
    assert (curve.target, curve.source, curve.x0, curve.order) == ("y", "x", 1.0, 2)
    assert "data:image/png;base64," in cap.outputs[0].data["text/html"]


def test_plot_explains_when_it_cannot(ip):
    run(ip, "v = tf.constant([1.0, 2.0])")
    run(ip, "%%tape -q --plot\ny = tf.reduce_sum(v)")
    assert any(
        "--plot draws a real scalar target of one real scalar source" in n
        for n in ip.user_ns["_tape"].notes
    )


def test_plot_of_a_complex_target_is_a_note_not_a_traceback(ip):
    run(ip, "x = tf.constant(1.0)")
    with capture_output() as cap:
        run(ip, "%%tape --plot\ny = tf.complex(x, x)")
    assert "Traceback" not in cap.stdout + cap.stderr
    note = (
        "--plot draws a real scalar target of one real scalar source; this cell has 1 source(s) "
        "and 0 such target(s)"
    )
    assert ip.user_ns["_tape"].notes == [note]
    assert note in shown(cap)


def test_device_option(ip):
    run(ip, "x = tf.constant(2.0)")
    run(ip, "%%tape -q --device cpu\ny = x * x")
    assert "CPU:0" in ip.user_ns["y"].device


def test_as_and_quiet(ip):
    run(ip, "x = tf.constant(2.0)")
    with capture_output() as cap:
        run(ip, "%%tape -q --as first\ny = x * x")
    assert cap.outputs == [] and cap.stdout == ""
    assert ip.user_ns["first"] is ip.user_ns["_tape"]


def test_no_tape_is_left_recording(ip):
    from tensorflow.python.eager import record

    run(ip, "x = tf.constant(2.0)")
    run(ip, "%%tape -q -o 3 --hessian\ny = x * x")
    assert not record.could_possibly_record()
    assert not ip.run_cell("%%tape -q\ny = x * x\n1 / 0").success
    assert not record.could_possibly_record()


def test_reprs_for_every_frontend(ip):
    run(ip, "x = tf.constant(4.0)")
    run(ip, "%%tape -q\ny = x ** 2")
    data, _ = ip.display_formatter.format(ip.user_ns["_tape"])
    assert "8.0" in data["text/html"] and "$" not in data["text/html"]
    assert "\\partial" in data["text/markdown"] and "8.0" in data["text/markdown"]
    assert "∂y/∂x" in data["text/plain"] and "8.0" in data["text/plain"]


def test_help_lists_the_options(ip):
    doc = ip.find_cell_magic("tape").__doc__
    for option in ("--watch", "--target", "--order", "--jacobian", "--hessian", "--persistent",
                   "--check", "--plot", "--device", "--as", "--quiet"):  # fmt: skip
        assert option in doc


def test_reload_and_unload(ip):
    run(ip, "%reload_ext tapemagic")
    assert ip.find_cell_magic("tape") is not None
    run(ip, "%unload_ext tapemagic")
    assert ip.find_cell_magic("tape") is None and ip.find_line_magic("grad") is None
    run(ip, "%load_ext tapemagic")
    assert ip.find_cell_magic("tape") is not None


def test_unload_removes_lazily_declared_magics(ip):
    ip.magics_manager.register_lazy("grad", "tapemagic")  # as the auto-load file does
    run(ip, "%unload_ext tapemagic")
    assert ip.find_line_magic("grad") is None and "grad" not in ip.magics_manager.lazy_magics
    run(ip, "%load_ext tapemagic")
    assert ip.find_line_magic("grad") is not None


def test_import_prints_nothing_and_imports_no_tensorflow():
    code = "import sys, tapemagic; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n" and out.stderr == ""


def test_grad_takes_a_trailing_comment_as_any_python_line(ip):
    run(ip, "g = %grad x**2 --at x=4          # 8.0")
    assert float(ip.user_ns["g"]) == 8.0
    run(ip, "x = tf.constant(3.0)")
    run(ip, "h = %grad x * 2.0 # a comment with --at x=100 in it")
    assert float(ip.user_ns["h"]) == 2.0 and float(ip.user_ns["_tape"].point["x"]) == 3.0


def test_autoload_declares_only_the_kinds_that_exist(ip):
    """%%tape cell-only, %grad and %train line-only: %lsmagic and Tab offer no %tape,
    %%grad or %%train that would then fail to load."""
    from pathlib import Path

    from IPython.core.completer import provisionalcompleter

    startup = Path(__file__).parent.parent / "jupyter-config/ipython/startup/tapemagic_autoload.py"
    run(ip, "%unload_ext tapemagic")
    try:
        exec(startup.read_text(), {"__name__": "tapemagic_autoload"})
        listed = ip.magics_manager.lsmagic()
        assert "tape" in listed["cell"] and "tape" not in listed["line"]
        for name in ("grad", "train"):
            assert name in listed["line"] and name not in listed["cell"]
        with provisionalcompleter():
            offered = {c.text for c in ip.Completer.completions("%", 1)}
        assert {"%%tape", "%grad", "%train"} <= offered
        assert not {"%tape", "%%grad", "%%train"} & offered
        run(ip, "x = tf.constant(4.0)\ng = %grad x**2")  # the first use loads the extension
        assert float(ip.user_ns["g"]) == 8.0
    finally:
        run(ip, "%unload_ext tapemagic")
        run(ip, "%load_ext tapemagic")
