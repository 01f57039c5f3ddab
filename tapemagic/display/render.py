"""How a `TapeResult` looks: HTML for Jupyter, markdown with LaTeX for Colab, text for terminals.

The HTML has no math markup because JupyterLab, Notebook 7 and VS Code render HTML
outputs but not always MathJax in them; Colab renders markdown math, so that form uses
LaTeX. All forms show the same facts, and the outcomes (a value, 0 at this point, a
structural 0, None, NaN/Inf) always read differently: telling them apart is the point.
Big tensors are summarised, never printed whole, so a result renders in milliseconds
(a `--plot` curve costs one matplotlib drawing, the first time it is shown). The IPython
layer registers `to_html`, `to_markdown` and `to_text` as the formatters of `TapeResult`.
"""

from __future__ import annotations

import base64
import html as _html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tapemagic.display import heatmap, tangent_plot
from tapemagic.tape.result import (
    CHECK_OK,
    INCONCLUSIVE,
    MISMATCH,
    NONE,
    NONFINITE,
    NOT_CHECKED,
    STRUCTURAL,
    ZERO,
    Check,
    Derivative,
    TapeResult,
)

SMALL = 100  # tensors with at most this many elements are printed whole
FIRST = 6  # elements shown of a summarised tensor
ZERO_TEXT = "0 at this point"
STRUCTURAL_TEXT = "0 (structural: no dependence at this order; TF returns None)"
COLUMNS = ("derivative", "at", "value", "shape", "dtype", "status")


# -- values ------------------------------------------------------------------------------
def _as_array(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if type(value).__name__ == "IndexedSlices":  # gradient of a gather: make it dense
        import tensorflow as tf

        value = tf.convert_to_tensor(value)
    if hasattr(value, "numpy"):  # tf.Tensor, tf.Variable
        value = value.numpy()
    a = np.asarray(value)
    if a.dtype.kind == "V" and "float" in a.dtype.name:  # bfloat16, float8: numpy can't print
        a = a.astype(np.float32)
    return a


def _format_number(x: Any, digits: int = 8) -> str:
    """Shortest text that round-trips in x's own precision (float32 0.1169 stays 0.1169)."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (complex, np.complexfloating)):
        sign = "-" if x.imag < 0 else "+"
        return f"{_format_number(x.real, digits)}{sign}{_format_number(abs(x.imag), digits)}j"
    if not isinstance(x, (float, np.floating)):
        return str(x)
    x = x if isinstance(x, np.floating) else np.float64(x)
    if np.isnan(x):
        return "NaN"
    if np.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    if x != 0 and not 1e-4 <= abs(float(x)) < 1e6:
        return np.format_float_scientific(x, precision=digits - 1, unique=True, trim="-")
    return np.format_float_positional(x, precision=digits, unique=True, fractional=False, trim="0")


def _nonfinite_counts(a: np.ndarray) -> tuple[int, int]:
    if a.dtype.kind not in "fc":
        return 0, 0
    return int(np.count_nonzero(np.isnan(a))), int(np.count_nonzero(np.isinf(a)))


def _counts_text(nan: int, inf: int, size: int) -> str:
    parts = [f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "Inf")) if n]
    return f"{' and '.join(parts)} of {size} elements" if parts else ""


def _summary(a: np.ndarray) -> str:
    """Shape, range, mean and norm of a big tensor, and where it starts."""
    head = ", ".join(_format_number(v, 6) for v in a.flat[:FIRST])
    lines = [f"shape {tuple(a.shape)}", f"first {FIRST}: [{head}, ...]"]
    if a.dtype.kind in "biufc":
        flat = np.abs(a).reshape(-1) if a.dtype.kind == "c" else a.reshape(-1)
        label = "|v| " if a.dtype.kind == "c" else ""
        lo, hi = flat.min(), flat.max()
        nan = inf = 0
        if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN or Inf somewhere: slow path
            nan, inf = _nonfinite_counts(flat)
            flat = flat[np.isfinite(flat)]
            lo, hi = (flat.min(), flat.max()) if flat.size else (None, None)
        if flat.size:
            wide = flat.astype(np.float64)
            finite = " of finite elements" if nan or inf else ""
            lo, hi, mean = (_format_number(v, 6) for v in (lo, hi, wide.mean()))
            norm = _format_number(np.sqrt(np.dot(wide, wide)), 6)
            lines[0] += f": {label}min {lo}, max {hi}, mean {mean}, L2 norm {norm}{finite}"
        else:
            lines[0] += ": no finite elements"
        if nan or inf:
            lines.append(_counts_text(nan, inf, a.size))
    return "\n".join(lines)


def _value_text(a: np.ndarray | None) -> str:
    if a is None:
        return "None"
    if a.ndim == 0:
        return _format_number(a[()])
    if a.size > SMALL:
        return _summary(a)
    text = np.array2string(
        a, precision=6, suppress_small=True, max_line_width=72, separator=", ", threshold=SMALL
    )
    counts = _counts_text(*_nonfinite_counts(a), a.size)
    return f"{text}\n{counts}" if counts else text


def format_value(value: Any, html: bool = False) -> str:
    """A tensor short enough for a table cell: small ones whole, big ones summarised.

    Takes tf.Tensor, tf.Variable, numpy arrays, Python numbers or None. With ``html``
    the text comes escaped in a ``<code>`` that keeps its line breaks.
    """
    text = _value_text(_as_array(value))
    if not html:
        return text
    return f'<code style="white-space:pre">{_html.escape(text)}</code>'


# -- one row per derivative, shared by the three forms ------------------------------------
@dataclass
class _Row:
    d: Derivative
    array: np.ndarray | None
    point: str | None  # the source's value at the point, when it is a scalar
    point_shape: str | None  # its shape otherwise
    value: str
    shape: str
    dtype: str
    label: str  # the outcome, in words; "" for a plain value
    notes: list[str] = field(default_factory=list)  # e.g. the sum warning


def _shape_of(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return str(tuple(np.shape(value) if shape is None else (int(n) for n in shape)))


def _dtype_of(value: Any, a: np.ndarray | None) -> str:
    name = getattr(getattr(value, "dtype", None), "name", None)
    return str(name) if name else (a.dtype.name if a is not None else "-")


def _row(result: TapeResult, d: Derivative) -> _Row:
    a = _as_array(d.value)
    if d.status == NONE:
        value = "None"
    elif d.status == STRUCTURAL and a is None:
        value = "0"
    else:
        value = _value_text(a)
    label = {ZERO: ZERO_TEXT, STRUCTURAL: STRUCTURAL_TEXT, NONE: "None"}.get(d.status, "")
    if d.status == NONFINITE:
        nan, inf = _nonfinite_counts(a) if a is not None else (0, 0)
        label = " and ".join(w for n, w in ((nan, "NaN"), (inf, "Inf")) if n) or "NaN/Inf"
    point = point_shape = None
    try:
        p = _as_array(result.point.get(d.source))
    except TypeError:  # an unhashable source (a tf.Variable) names no point
        p = None
    if p is not None and p.ndim == 0:
        point = _format_number(p[()])
    elif p is not None:
        point_shape = str(tuple(p.shape))
    row = _Row(
        d=d,
        array=a,
        point=point,
        point_shape=point_shape,
        value=value,
        shape=str(tuple(a.shape)) if a is not None else "-",
        dtype=_dtype_of(d.value, a),
        label=label,
    )
    return row


def _rows(result: TapeResult) -> list[_Row]:
    """Every derivative's row; a note about a whole target (its elements summed) goes on
    that target's first summed row only, not on each source's."""
    rows, told = [], set()
    for d in result.derivatives:
        row = _row(result, d)
        if d.summed and d.target not in told:
            told.add(d.target)
            t = d.target
            shape = f" (shape {_shape_of(result.values[t])})" if t in result.values else ""
            row.notes.append(
                f"sum: this is the gradient of Σ{t}, the sum of {t}'s elements{shape}, not of "
                f"each element; use --jacobian for per-element derivatives"
            )
        rows.append(row)
    return rows


def _at_text(r: _Row) -> str:
    if r.point is not None:
        return f"{r.d.source} = {r.point}"
    return f"{r.d.source}: shape {r.point_shape}" if r.point_shape else ""


def _why(d: Derivative) -> str | None:
    """The diagnosis shown under a row; a None is never left unexplained."""
    if d.why:
        return d.why
    error = getattr(d, "error", None)
    if error is not None:
        return f"TF raised {type(error).__name__}: {error}"
    return "no diagnosis available" if d.status == NONE else None


def _check_text(c: Check) -> str:
    return f"check {c.summary()}"


# Only a real disagreement is red: finite differences that cannot decide, or a source that
# cannot be checked, are not a verdict against the derivative.
_CHECK_TONE = {
    CHECK_OK: "ok",
    MISMATCH: "mismatch",
    INCONCLUSIVE: STRUCTURAL,
    NOT_CHECKED: STRUCTURAL,
}
_CHECK_MARK = {CHECK_OK: "✅ ", MISMATCH: "❌ ", INCONCLUSIVE: "❔ ", NOT_CHECKED: "➖ "}


def _header(result: TapeResult) -> tuple[int, list[str], list[str]]:
    ds = result.derivatives
    targets = result.targets or list(dict.fromkeys(d.target for d in ds))
    sources = result.sources or list(dict.fromkeys(str(d.source) for d in ds))
    return len(ds), [str(t) for t in targets], [str(s) for s in sources]


def _header_text(result: TapeResult, name: Callable[[str], str] = str) -> str:
    n, targets, sources = _header(result)

    def s(k: int) -> str:
        return "" if k == 1 else "s"

    def listed(kind: str, names: list[str]) -> str:
        return f"{kind}{s(len(names))} {', '.join(map(name, names))}" if names else f"no {kind}s"

    return f"{n} derivative{s(n)} of {listed('target', targets)} w.r.t. {listed('source', sources)}"


# -- HTML ---------------------------------------------------------------------------------
# Solid accents with translucent fills and inherited text colour: readable on light and dark.
_TONES = {
    ZERO: "59,130,246",
    STRUCTURAL: "128,128,128",
    NONE: "230,140,0",
    NONFINITE: "214,39,40",
    "sum": "148,103,189",
    "ok": "44,160,44",
    "mismatch": "214,39,40",
}
_CELL = "text-align:left;vertical-align:top;padding:0.25em 0.6em;"
_LINE = "border-bottom:1px solid rgba(128,128,128,0.35);"


def _badge(text: str, tone: str) -> str:
    rgb = _TONES[tone]
    return (
        f'<div style="display:inline-block;margin:1px 0;padding:0 0.4em;border-radius:3px;'
        f'border-left:3px solid rgb({rgb});background:rgba({rgb},0.15)">'
        f"{_html.escape(text)}</div>"
    )


def _heatmap_html(a: np.ndarray) -> str:
    png, (h, w), vmax = heatmap.heatmap_png(a)
    scale = min(128 / max(h, w), 16)  # the longer side at most 128 px, a cell at most 16
    width, height = max(8, round(w * scale)), max(8, round(h * scale))
    title = (
        f"{a.shape[0]}x{a.shape[1]} shown as {h}x{w} block means; "
        f"blue < 0 < red, scale ±{_format_number(vmax, 4)}; grey: NaN"
    )
    return (
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
        f'width="{width}" height="{height}" alt="heatmap" title="{_html.escape(title)}" '
        f'style="display:block;margin-top:4px;image-rendering:pixelated;'
        f'border:1px solid rgba(128,128,128,0.4)">'
    )


def _row_html(r: _Row) -> str:
    d, a = r.d, r.array
    value = f'<code style="white-space:pre">{_html.escape(r.value)}</code>'
    if d.status == STRUCTURAL:
        value = f'<span style="opacity:0.7;font-style:italic">{value}</span>'
    if (
        a is not None
        and d.status not in (STRUCTURAL, ZERO)
        and a.ndim == 2
        and min(a.shape) > 1
        and a.dtype.kind in "iufc"
    ):
        value += _heatmap_html(a)
    status = [_badge(r.label, d.status)] if r.label else []
    status += [_badge(note, "sum") for note in r.notes]
    if d.check is not None:
        status.append(_badge(_check_text(d.check), _CHECK_TONE.get(d.check.verdict, "mismatch")))
    why = _why(d)
    line = "" if why else _LINE
    cells = [
        _html.escape(d.notation),
        _html.escape(_at_text(r)),
        value,
        _html.escape(r.shape),
        _html.escape(r.dtype),
        "".join(f"<div>{s}</div>" for s in status),
    ]
    html = "<tr>" + "".join(f'<td style="{_CELL}{line}">{c}</td>' for c in cells) + "</tr>"
    if why:
        html += (
            f'<tr><td style="{_CELL}{_LINE}"></td><td colspan="5" style="{_CELL}{_LINE}'
            f'font-size:0.92em">↳ {_html.escape(why)}</td></tr>'
        )
    return f"<tbody>{html}</tbody>"


def to_html(result: TapeResult) -> str:
    """Math-free HTML, since not every notebook front end typesets math in outputs."""
    parts = [
        '<div class="tapemagic-result" style="line-height:1.4">',
        f"<div><strong>tapemagic</strong>: {_html.escape(_header_text(result))}</div>",
    ]
    if result.derivatives:
        head = "".join(f'<th style="{_CELL}{_LINE}">{c}</th>' for c in COLUMNS)
        rows = "".join(_row_html(r) for r in _rows(result))
        parts.append(
            f'<table style="border-collapse:collapse;margin:0.3em 0">'
            f"<thead><tr>{head}</tr></thead>{rows}</table>"
        )
    if result.notes:
        items = "".join(f"<li>⚠ {_html.escape(n)}</li>" for n in result.notes)
        parts.append(f'<ul style="margin:0.3em 0;padding-left:1.2em;list-style:none">{items}</ul>')
    for png in map(tangent_plot.tangent_png, result.tangents):
        src = base64.b64encode(png).decode()
        parts.append(f'<div><img src="data:image/png;base64,{src}" style="max-width:100%"></div>')
    parts.append("</div>")
    return "".join(parts)


# -- markdown and LaTeX -------------------------------------------------------------------
_TEX_MATH = str.maketrans(
    {
        "\\": r"\backslash{}",
        "{": r"\{",
        "}": r"\}",
        "_": r"\_",
        "#": r"\#",
        "%": r"\%",
        "&": r"\&",
        "$": r"\$",
        "^": r"\wedge{}",
        "~": r"\sim{}",
        "<": r"\lt{}",
        ">": r"\gt{}",
        "|": r"\vert{}",
        "*": r"\ast{}",
        " ": r"\ ",
        "`": "'",
    }
)
_TEX_TEXT = str.maketrans({c: "\\" + c for c in "{}_#%&$"} | {"\\": "/", "^": " ", "~": " "})


def _tex_name(name: Any) -> str:
    """Names in math mode: a single letter italic, anything else upright, all escaped."""
    name = str(name)
    if len(name) == 1 and name.isalpha():
        return name
    return rf"\mathrm{{{name.translate(_TEX_MATH)}}}"


def _tex_notation(d: Derivative) -> str:
    t, s = _tex_name(d.target), _tex_name(d.source)
    if d.kind in ("jacobian", "hessian"):
        return rf"{'J' if d.kind == 'jacobian' else 'H'}({t};\,{s})"
    top = rf"\sum {t}" if d.summed else t
    if d.order == 1:
        return rf"\frac{{\partial {top}}}{{\partial {s}}}"
    n = str(d.order) if d.order < 10 else f"{{{d.order}}}"
    return rf"\frac{{\partial^{n} {top}}}{{\partial {s}^{n}}}"


def _tex_at(r: _Row) -> str:
    if r.point is not None:
        return f"${_tex_name(r.d.source)} = {r.point}$"
    return f"${_tex_name(r.d.source)}$: shape {r.point_shape}" if r.point_shape else ""


def _md(text: str) -> str:
    """Plain text safe in a markdown table cell: no HTML, no stray math or pipes."""
    return _html.escape(text, quote=False).replace("$", r"\$").replace("|", r"\|")


def _code(text: str) -> str:
    return "`" + " ".join(text.replace("`", "'").split()).replace("|", r"\|") + "`"


def to_markdown(result: TapeResult) -> str:
    """Markdown with LaTeX notation, for Colab, which typesets math in markdown outputs."""
    lines = [f"**tapemagic**: {_header_text(result, lambda s: f'${_tex_name(s)}$')}", ""]
    rows = _rows(result)
    if rows:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    diagnoses = []
    for r in rows:
        d = r.d
        status = ([f"**{_md(r.label)}**"] if r.label else []) + [_md(n) for n in r.notes]
        if d.check is not None:
            status.append(_CHECK_MARK.get(d.check.verdict, "❌ ") + _md(_check_text(d.check)))
        cells = [f"${_tex_notation(d)}$", _tex_at(r), _code(r.value), _code(r.shape), r.dtype]
        lines.append("| " + " | ".join(cells + ["<br>".join(status)]) + " |")
        why = _why(d)
        if why:
            label = f" ({_md(r.label)})" if r.label else ""
            diagnoses.append(f"- ${_tex_notation(d)}${label}: {_md(why)}")
    if diagnoses:
        lines += ["", "**Diagnoses**", "", *diagnoses]
    if result.notes:
        lines += ["", "**Warnings**", "", *(f"- ⚠ {_md(n)}" for n in result.notes)]
    for i, png in enumerate(map(tangent_plot.tangent_png, result.tangents), 1):
        lines += ["", f"![plot {i}](data:image/png;base64,{base64.b64encode(png).decode()})"]
    return "\n".join(lines) + "\n"


def _tex_value(r: _Row) -> str:
    a = r.array
    if r.d.status == NONE or a is None:
        return r"\text{None}" if r.d.status == NONE else "0"
    if a.ndim == 0:
        text = _format_number(a[()])
        return text if a.dtype.kind in "iuf" and np.isfinite(a) else rf"\text{{{text}}}"
    if a.ndim <= 2 and a.size <= 36 and a.dtype.kind in "biuf":
        body = r" \\ ".join(
            " & ".join(
                _format_number(v, 6) if np.isfinite(v) else rf"\text{{{_format_number(v)}}}"
                for v in row
            )
            for row in np.atleast_2d(a)
        )
        return rf"\begin{{bmatrix}} {body} \end{{bmatrix}}"
    return rf"\text{{{' '.join(r.value.split()).translate(_TEX_TEXT)}}}"


def to_latex(result: TapeResult) -> str:
    """One aligned ``$$`` block of the derivatives, for front ends that prefer LaTeX."""
    if not result.derivatives:
        return r"$$\text{tapemagic: no derivatives}$$"
    lines = []
    for r in _rows(result):
        extra = [_at_text(r)] if r.point or r.point_shape else []
        extra += [r.label] if r.label else []
        extra += ["gradient of the sum of the target's elements"] if r.d.summed else []
        extra += [_check_text(r.d.check)] if r.d.check is not None else []
        tail = rf" &&\text{{{'; '.join(extra).translate(_TEX_TEXT)}}}" if extra else ""
        lines.append(f"{_tex_notation(r.d)} &= {_tex_value(r)}{tail}")
    return "$$\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}$$"


# -- text ---------------------------------------------------------------------------------
def to_text(result: TapeResult) -> str:
    """Aligned columns for terminal IPython, with diagnoses indented under their row."""
    out = [f"tapemagic: {_header_text(result)}"]
    rows = _rows(result)
    table = [[[c] for c in COLUMNS]] if rows else []
    table += [
        [[r.d.notation], [_at_text(r)], r.value.splitlines(), [r.shape], [r.dtype], [r.label]]
        for r in rows
    ]
    widths = [max((len(s) for cells in table for s in cells[i]), default=0) for i in range(5)]
    for k, cells in enumerate(table):
        for i in range(max(len(c) for c in cells)):
            parts = [c[i] if i < len(c) else "" for c in cells]
            padded = [p.ljust(w) for p, w in zip(parts, widths, strict=False)] + parts[5:]
            out.append("  ".join(padded).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths) + "  ------")
            continue
        r = rows[k - 1]
        under = list(r.notes)
        under += [_check_text(r.d.check)] if r.d.check is not None else []
        why = _why(r.d)
        under += [f"why: {why}"] if why else []
        out += [f"    ↳ {line}" for line in under]
    out += [f"warning: {n}" for n in result.notes]
    out += [
        f"[plot {i} of {len(result.tangents)}: a PNG; use a notebook to see it]"
        for i in range(1, len(result.tangents) + 1)
    ]
    return "\n".join(out)
