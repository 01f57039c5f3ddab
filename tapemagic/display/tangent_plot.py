"""`--plot`'s figure: a `TangentCurve` drawn as a PNG, when the result is shown.

The core samples the curve; this module only draws it, with matplotlib's object API
(no pyplot: no global state, no GUI backend). A result is formatted for several
front ends at once (HTML and markdown), so each curve is drawn once and kept.
"""

from __future__ import annotations

import io
import weakref

from tapemagic.tape.result import TangentCurve

_drawn: weakref.WeakKeyDictionary[TangentCurve, bytes] = weakref.WeakKeyDictionary()


def tangent_png(curve: TangentCurve) -> bytes:
    """The curve, its tangent at the point and, for orders 2 and up, f' and f'', as PNG."""
    png = _drawn.get(curve)
    if png is None:
        png = _drawn[curve] = _draw(curve)
    return png


def _draw(c: TangentCurve) -> bytes:
    from matplotlib.figure import Figure  # imported on first draw: it takes a second

    fig = Figure(figsize=(5.2, 3.2), dpi=96)
    ax = fig.add_subplot()
    ax.plot(c.xs, c.ys, label=f"{c.target}({c.source})", color="C0")
    ax.plot(c.xs, c.tangent(), "--", color="C1", label=f"tangent, slope {c.slope:.4g}")
    ax.plot([c.x0], [c.y0], "o", color="C1")
    if c.dydx is not None:
        ax.plot(c.xs, c.dydx, ":", color="C2", label=f"∂{c.target}/∂{c.source}")
    if c.d2ydx2 is not None:
        ax.plot(c.xs, c.d2ydx2, ":", color="C3", label=f"∂²{c.target}/∂{c.source}²")
    ax.set_xlabel(c.source)
    ax.axvline(c.x0, color="grey", lw=0.5)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
