"""A `TapeResult` is plain data; the IPython layer shows it through display formatters.

The core never imports the display layer: `%load_ext` registers `display.render` as the
formatters of `TapeResult`, `%unload_ext` removes them, and `--plot` keeps its curve as
data (a `TangentCurve`) that the display layer draws when the result is shown.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from conftest import run
from IPython.utils.capture import capture_output

tf = pytest.importorskip("tensorflow")

from tapemagic.display import render, tangent_plot  # noqa: E402
from tapemagic.tape.result import Derivative, TangentCurve, TapeResult  # noqa: E402
from tapemagic.tape.tapecell import TapeOptions, tape_cell  # noqa: E402

MIMES = ("text/plain", "text/html", "text/markdown")


def scalar_result() -> TapeResult:
    return TapeResult(
        targets=["y"],
        sources=["x"],
        point={"x": tf.constant(4.0)},
        values={"y": tf.constant(16.0)},
        derivatives=[Derivative("y", "x", value=tf.constant(8.0))],
    )


def curve() -> TangentCurve:
    xs = np.linspace(0.0, 2.0, 5)
    return TangentCurve("y", "x", xs, xs**2, x0=1.0, y0=1.0, slope=2.0)


def test_the_core_repr_is_one_plain_line():
    r = scalar_result()
    assert repr(r) == "<TapeResult: 1 derivative of y w.r.t. x>"
    r.notes, r.tangents = ["a", "b"], [curve()]
    assert repr(r) == "<TapeResult: 1 derivative of y w.r.t. x, 2 notes, 1 tangent curve>"
    assert repr(TapeResult()) == "<TapeResult: 0 derivatives of no targets w.r.t. no sources>"
    assert not any(hasattr(TapeResult, f"_repr_{k}_") for k in ("html", "markdown", "pretty"))


def test_the_shell_formats_a_result_with_render(ip):
    r = scalar_result()
    data, _ = ip.display_formatter.format(r)
    assert set(data) == set(MIMES)
    assert data["text/html"] == render.to_html(r)
    assert data["text/markdown"] == render.to_markdown(r)
    assert data["text/plain"] == render.to_text(r)


def test_unloading_removes_the_formatters_and_loading_brings_them_back(ip):
    r = scalar_result()
    try:
        run(ip, "%unload_ext tapemagic")
        data, _ = ip.display_formatter.format(r)
        assert data == {"text/plain": repr(r)}
    finally:
        run(ip, "%load_ext tapemagic")
    assert ip.display_formatter.format(r)[0]["text/html"] == render.to_html(r)


def test_a_tangent_curve_is_drawn_when_shown_and_once():
    r = scalar_result()
    r.tangents = [curve()]
    png = tangent_plot.tangent_png(r.tangents[0])
    assert png.startswith(b"\x89PNG") and tangent_plot.tangent_png(r.tangents[0]) is png
    src = base64.b64encode(png).decode()
    assert f'<img src="data:image/png;base64,{src}"' in render.to_html(r)
    assert f"![plot 1](data:image/png;base64,{src})" in render.to_markdown(r)
    assert "[plot 1 of 1: a PNG; use a notebook to see it]" in render.to_text(r)


def test_plot_samples_the_cell_around_the_point_without_ipython(capsys):
    ns = {"tf": tf, "x": tf.constant(1.0)}
    code = "print('run')\ny = tf.sin(x)"
    r = tape_cell(code, ns, TapeOptions(order=2, plot=True))
    assert capsys.readouterr().out == "run\n"  # the re-runs are silenced
    (c,) = r.tangents
    assert (c.target, c.source, c.x0, c.order) == ("y", "x", 1.0, 2)
    np.testing.assert_allclose(c.xs, np.linspace(0.0, 2.0, 81))
    np.testing.assert_allclose(c.ys, np.sin(c.xs), atol=1e-6)
    np.testing.assert_allclose([c.y0, c.slope], [np.sin(1.0), np.cos(1.0)], rtol=1e-6)
    np.testing.assert_allclose(c.tangent(), np.sin(1.0) + np.cos(1.0) * (c.xs - 1.0), 1e-6)
    inner = slice(2, -2)  # numerical derivatives of the samples, less exact at the ends
    np.testing.assert_allclose(c.dydx[inner], np.cos(c.xs)[inner], atol=1e-3)
    np.testing.assert_allclose(c.d2ydx2[inner], -np.sin(c.xs)[inner], atol=1e-2)
    assert tape_cell("y = tf.sin(x)", ns, TapeOptions(plot=True)).tangents[0].dydx is None


def test_a_plot_cell_shows_its_png_in_html_and_markdown(ip):
    from matplotlib.image import imread

    run(ip, "x = tf.constant(1.0)")
    with capture_output() as cap:
        run(ip, "%%tape --plot -o 2\ny = tf.sin(x)")
    (c,) = ip.user_ns["_tape"].tangents
    src = base64.b64encode(tangent_plot.tangent_png(c)).decode()
    assert src in cap.outputs[0].data["text/html"] and src in cap.outputs[0].data["text/markdown"]
    # the figure as before: 5.2 x 3.2 inches at 96 dpi
    assert imread(io.BytesIO(tangent_plot.tangent_png(c))).shape[:2] == (307, 499)


def test_magics_loaded_lazily_register_the_formatters_too(ip):
    """The auto-load file declares the magics lazily: their first use loads the extension."""
    run(ip, "%unload_ext tapemagic")
    try:
        ip.magics_manager.register_lazy("tape", "tapemagic")
        run(ip, "x = tf.constant(4.0)")
        with capture_output() as cap:
            run(ip, "%%tape\ny = x ** 2")
    finally:
        run(ip, "%load_ext tapemagic")
    r = ip.user_ns["_tape"]
    assert cap.outputs[0].data["text/html"] == render.to_html(r)
    assert cap.outputs[0].data["text/plain"] == render.to_text(r)
