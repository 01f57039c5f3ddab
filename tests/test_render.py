"""What a user sees of a TapeResult in HTML, markdown/LaTeX and plain text."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tapemagic.display import heatmap, render, tangent_plot  # noqa: E402
from tapemagic.tape.result import (  # noqa: E402
    NONE,
    NONFINITE,
    STRUCTURAL,
    ZERO,
    Check,
    Derivative,
    TangentCurve,
    TapeResult,
)

FORMATS = {"html": render.to_html, "markdown": render.to_markdown, "text": render.to_text}

WHY_NONE = "w is a tf.constant the tape did not watch; use tf.Variable or tape.watch(w)"
WHY_NAN = "tf.sqrt(x) at line 2: its derivative is Inf at x = 0"


def scalar_result(**derivative) -> TapeResult:
    """dy/dx = 8 at x = 4, for y = x**2."""
    return TapeResult(
        targets=["y"],
        sources=["x"],
        point={"x": tf.constant(4.0)},
        values={"y": tf.constant(16.0)},
        derivatives=[Derivative("y", "x", value=tf.constant(8.0), **derivative)],
    )


def outcomes_result() -> TapeResult:
    return TapeResult(
        targets=["y"],
        sources=["x", "w"],
        point={"x": tf.constant(-1.0), "w": tf.constant(0.0)},
        derivatives=[
            Derivative("y", "x", value=tf.constant(0.0), status=ZERO),
            Derivative("y", "x", order=2, value=tf.constant(0.0), status=STRUCTURAL),
            Derivative("y", "w", value=None, status=NONE, why=WHY_NONE),
            Derivative("y", "w", order=2, value=tf.constant(np.nan), status=NONFINITE, why=WHY_NAN),
        ],
    )


def big_result(value) -> TapeResult:
    return TapeResult(
        targets=["loss"],
        sources=["W"],
        point={"W": tf.zeros((1000, 1000))},
        derivatives=[Derivative("loss", "W", value=value)],
    )


def html_text(html: str) -> str:
    """The HTML as a reader sees it: tags dropped, entities kept escaped."""
    return re.sub(r"<[^>]+>", " ", html)


def png_images(html: str) -> list[bytes]:
    return [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def decode_png(png: bytes) -> tuple[int, int, np.ndarray]:
    """Width, height and pixels, read back with zlib alone (no filters, as we write them)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        tag, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + data) & 0xFFFFFFFF
        chunks[tag] = chunks.get(tag, b"") + data
        pos += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert not raw[:, 0].any()  # filter byte 0 on every row
    return w, h, raw[:, 1:].reshape(h, w, 3)


# -- format_value --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, text",
    [
        (tf.constant(8.0), "8.0"),
        (tf.constant(0.1169), "0.1169"),  # float32's own shortest form, not 0.116900004
        (tf.Variable(2.5), "2.5"),
        (np.float64(123456.789), "123456.79"),
        (3, "3"),
        (1.5e-7, "1.5e-07"),
        (None, "None"),
        (tf.constant(np.nan), "NaN"),
        (tf.constant(-np.inf), "-Inf"),
    ],
)
def test_format_value_scalars(value, text):
    assert render.format_value(value, html=False) == text


def test_format_value_small_tensor_printed_whole():
    text = render.format_value(tf.constant([[1.0, 2.0], [3.5, 4.0]]), html=False)
    assert "[[1. , 2. ]," in text and "[3.5, 4. ]]" in text
    assert render.format_value(np.arange(100.0), html=False).count(",") == 99


def test_format_value_counts_nonfinite():
    text = render.format_value(tf.constant([1.0, np.nan, np.inf, np.nan]), html=False)
    assert "2 NaN and 1 Inf of 4 elements" in text


def test_format_value_summarises_big_tensor():
    value = tf.reshape(tf.range(1_000_000, dtype=tf.float32), (1000, 1000))
    text = render.format_value(value, html=False)
    assert "shape (1000, 1000)" in text
    assert "min 0.0" in text and "max 999999.0" in text
    assert "mean " in text and "L2 norm " in text
    assert "first 6: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, ...]" in text
    assert "123457" not in text and len(text) < 300


def test_format_value_big_tensor_with_nan():
    a = np.ones((200, 200), np.float32)
    a[0, :3] = np.nan
    text = render.format_value(a, html=False)
    assert "3 NaN of 40000 elements" in text and "max 1.0" in text


def test_format_value_all_nan_big_tensor():
    text = render.format_value(np.full(300, np.nan, np.float16), html=False)
    assert "no finite elements" in text and "300 NaN of 300 elements" in text


def test_format_value_html_escapes_and_keeps_lines():
    html = render.format_value(np.array(["<b>", "a&b"]), html=True)
    assert "&lt;b&gt;" in html and "&amp;" in html and "<b>" not in html
    assert "white-space:pre" in html


# -- the table -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_value_and_point_shown(fmt):
    out = FORMATS[fmt](scalar_result())
    assert "8.0" in out and "x = 4.0" in out and "float32" in out


def test_notation_per_format():
    html, md, text = (f(scalar_result()) for f in FORMATS.values())
    assert "∂y/∂x" in html and "∂y/∂x" in text
    assert r"$\frac{\partial y}{\partial x}$" in md
    assert "<strong>tapemagic</strong>: 1 derivative of target y w.r.t. source x" in html
    assert text.startswith("tapemagic: 1 derivative of target y w.r.t. source x")


def test_higher_order_and_sum_in_latex():
    r = TapeResult(
        targets=["y"],
        sources=["x"],
        derivatives=[
            Derivative("y", "x", order=2, value=tf.constant(2.0)),
            Derivative("y", "x", value=tf.constant([1.0]), summed=True),
        ],
    )
    md, latex = render.to_markdown(r), render.to_latex(r)
    for out in (md, latex):
        assert r"\frac{\partial^2 y}{\partial x^2}" in out
        assert r"\frac{\partial \sum y}{\partial x}" in out
    assert latex.startswith("$$") and latex.endswith("$$") and r"\begin{aligned}" in latex


@pytest.mark.parametrize("fmt", FORMATS)
def test_four_outcomes_told_apart(fmt):
    out = FORMATS[fmt](outcomes_result())
    if fmt == "html":
        out = html_text(out)
    assert "0 at this point" in out
    assert "0 (structural: no dependence at this order; TF returns None)" in out
    assert "None" in out and "tf.Variable or tape.watch(w)" in out
    assert "NaN" in out and "tf.sqrt(x) at line 2" in out


def test_diagnoses_under_their_row_in_text():
    lines = render.to_text(outcomes_result()).splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("∂y/∂w "))
    assert lines[row].rstrip().endswith("None")
    assert lines[row + 1].startswith("    ") and WHY_NONE in lines[row + 1]


def test_diagnosis_row_in_html():
    html = render.to_html(outcomes_result())
    assert re.search(r'<td colspan="5"[^>]*>↳ w is a tf.constant', html)


def test_none_without_why_still_says_something():
    r = TapeResult(derivatives=[Derivative("y", "x", value=None, status=NONE)])
    for f in FORMATS.values():
        assert "no diagnosis available" in f(r)


@pytest.mark.parametrize("fmt", FORMATS)
def test_summed_gradient_says_so(fmt):
    r = TapeResult(
        targets=["y"],
        sources=["x"],
        point={"x": tf.constant([1.0, 2.0, 3.0])},
        values={"y": tf.constant([1.0, 4.0, 9.0])},
        derivatives=[Derivative("y", "x", value=tf.constant([2.0, 4.0, 6.0]), summed=True)],
    )
    out = FORMATS[fmt](r)
    assert "sum of y's elements" in out.replace("&#x27;", "'")
    assert "--jacobian" in out and "(shape (3,))" in out
    assert "x: shape (3,)" in out or "$x$: shape (3,)" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_summed_target_is_said_once_whatever_its_sources(fmt):
    """The sum is about the target: one note, not one per source's row."""
    r = TapeResult(
        targets=["y", "z"],
        sources=["a", "b"],
        point={"a": tf.constant(1.0), "b": tf.constant(2.0)},
        values={"y": tf.constant([1.0, 4.0]), "z": tf.constant([3.0, 5.0])},
        derivatives=[
            Derivative(t, s, value=tf.constant(1.0), summed=True) for t in "yz" for s in "ab"
        ],
    )
    out = FORMATS[fmt](r).replace("&#x27;", "'")
    assert out.count("sum of y's elements") == 1 and out.count("sum of z's elements") == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_verdicts(fmt):
    ok = Check(ok=True, max_rel_error=1.2e-9, tolerance=1e-6, precision="float64")
    bad = Check(ok=False, max_rel_error=0.3, tolerance=1e-6, precision="float64", kink=True)
    r = scalar_result(check=ok)
    r.derivatives.append(Derivative("y", "x", order=2, value=tf.constant(2.0), check=bad))
    out = FORMATS[fmt](r)
    assert ok.summary() in out and bad.summary() in out
    if fmt == "html":  # green for ok, red for a mismatch
        assert re.search(r"rgb\(44,160,44\)[^>]*>check ok", out)
        assert re.search(r"rgb\(214,39,40\)[^>]*>check MISMATCH", out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_notes_and_plots(fmt):
    xs = np.linspace(3.0, 5.0, 5)
    r = scalar_result()
    r.notes = ["y is an int32 tensor: integers have no gradient"]
    r.tangents = [TangentCurve("y", "x", xs, xs**2, x0=4.0, y0=16.0, slope=8.0)]
    png = tangent_plot.tangent_png(r.tangents[0])
    out = FORMATS[fmt](r)
    assert "y is an int32 tensor: integers have no gradient" in out
    if fmt == "text":
        assert "[plot 1 of 1: a PNG; use a notebook to see it]" in out
    else:
        assert base64.b64encode(png).decode() in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_user_text_escaped(fmt):
    r = TapeResult(
        targets=["<b>"],
        sources=["x"],
        derivatives=[Derivative("<b>", "x", value=None, status=NONE, why="<script>bad</script>")],
        notes=["a & <i>b</i>"],
    )
    out = FORMATS[fmt](r)
    if fmt == "text":
        assert "<b>" in out
        return
    assert "<b>" not in out and "<script>" not in out and "<i>" not in out
    if fmt == "html":
        assert "&lt;b&gt;" in out and "&lt;script&gt;" in out and "a &amp; &lt;i&gt;" in out
    else:
        assert r"\mathrm{\lt{}b\gt{}}" in out


def test_empty_result():
    r = TapeResult(notes=["the cell computed no tensors"])
    for f in (*FORMATS.values(), render.to_latex):
        assert "the cell computed no tensors" in f(r) or f is render.to_latex


# -- big tensors and heatmaps ------------------------------------------------------------------
def test_big_gradient_html_is_small_and_summarised():
    value = tf.random.normal((1000, 1000), seed=0)
    html = render.to_html(big_result(value))
    assert len(html.encode()) < 50_000
    seen = html_text(html)
    assert "shape (1000, 1000)" in seen
    assert all(word in seen for word in ("min ", "max ", "mean ", "L2 norm "))
    assert seen.count(".") < 100  # a handful of numbers, not a million


@pytest.mark.parametrize("fmt", ["markdown", "text"])
def test_big_gradient_other_formats_summarised(fmt):
    value = tf.reshape(tf.range(1_000_000, dtype=tf.float32), (1000, 1000))
    out = FORMATS[fmt](big_result(value))
    assert "shape (1000, 1000)" in out and "L2 norm" in out
    assert "123457" not in out and len(out) < 2000


def test_heatmap_for_2d_value_decodes():
    value = tf.random.normal((1000, 1000), seed=1)
    (png,) = png_images(render.to_html(big_result(value)))
    w, h, pixels = decode_png(png)
    assert (w, h) == (64, 64)
    import matplotlib.image

    assert matplotlib.image.imread(io.BytesIO(png)).shape == (64, 64, 3)


def test_heatmap_colours_signs_and_nan():
    a = np.array([[-1.0, 0.0], [1.0, np.nan]], np.float32)
    r = TapeResult(derivatives=[Derivative("y", "x", kind="hessian", value=tf.constant(a))])
    (png,) = png_images(render.to_html(r))
    w, h, px = decode_png(png)
    assert (w, h) == (2, 2)
    blue, white, red, grey = px[0, 0], px[0, 1], px[1, 0], px[1, 1]
    assert blue[2] > blue[0] and red[0] > red[2]
    assert white.min() > 230 and grey[0] == grey[1] == grey[2] < 200


def test_no_heatmap_for_vectors_scalars_or_zeros():
    for value, status in [
        (tf.ones((5,)), "value"),
        (tf.ones((1, 5)), "value"),
        (tf.constant(2.0), "value"),
        (tf.zeros((3, 3)), ZERO),
    ]:
        r = TapeResult(derivatives=[Derivative("y", "x", value=value, status=status)])
        assert not png_images(render.to_html(r))


def test_downsample_is_block_mean():
    a = np.arange(130 * 3, dtype=np.float64).reshape(130, 3)
    small = heatmap.downsample(a, max_side=64)
    assert small.shape == (64, 3)
    assert small.mean() == pytest.approx(a.mean(), rel=0.01)
