"""`--plot`'s figure: a `TangentCurve` drawn as a PNG, when the result is shown.

The core samples the curve; this module only draws it, with matplotlib's object API
(no pyplot: no global state, no GUI backend). A result is formatted for several
front ends at once (HTML and markdown), so each curve is drawn once and kept.
"""

from __future__ import annotations

import io
import weakref

from tapemagic.display.lossplot import INK
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
    fig.patch.set_alpha(0.0)  # transparent, grey ink: reads on light and dark themes
    ax = fig.add_subplot()
    ax.set_facecolor("none")
    ax.plot(c.xs, c.ys, label=f"{c.target}({c.source})", color="C0")
    ax.plot(c.xs, c.tangent(), "--", color="C1", label=f"tangent, slope {c.slope:.4g}")
    ax.plot([c.x0], [c.y0], "o", color="C1")
    if c.dydx is not None:
        ax.plot(c.xs, c.dydx, ":", color="C2", label=f"∂{c.target}/∂{c.source}")
    if c.d2ydx2 is not None:
        ax.plot(c.xs, c.d2ydx2, ":", color="C3", label=f"∂²{c.target}/∂{c.source}²")
    ax.set_xlabel(c.source, color=INK)
    ax.axvline(c.x0, color=INK, lw=0.5)
    legend = ax.legend(fontsize=8, loc="best", frameon=False)
    for text in legend.get_texts():
        text.set_color(INK)
    ax.tick_params(colors=INK, labelcolor=INK)
    for spine in ax.spines.values():
        spine.set_color(INK)
    ax.grid(alpha=0.3, color=INK)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", transparent=True)
    return buf.getvalue()
