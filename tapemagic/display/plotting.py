"""`--plot`: the target around the point, its tangent line, and f', f'' for higher orders.

Only for a scalar target of one scalar source, the case a picture explains. The
curve comes from re-running the cell (quietly) at points around the recorded one.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf

from tapemagic.tape.rerun import Rerunner
from tapemagic.tape.result import TapeResult

SAMPLES = 81


def plot_result(result: TapeResult, code: str, namespace: dict, recorder, opts, before) -> None:
    """Append a PNG to `result.plots`, or a note saying why there is none."""
    scalar_sources = [n for n, v in recorder.sources.items() if _real_scalar(v)]
    scalar_targets = [t for t in result.targets if _real_scalar(result.values.get(t))]
    if len(recorder.sources) != 1 or not scalar_sources or not scalar_targets:
        result.notes.append(
            "--plot draws a real scalar target of one real scalar source; this cell has "
            f"{len(recorder.sources)} source(s) and {len(scalar_targets)} such target(s)"
        )
        return
    source, target = scalar_sources[0], scalar_targets[0]
    src = recorder.sources[source]
    x0 = float(np.asarray(recorder.initial.get(source, src)))
    width = max(1.0, abs(x0))
    xs = np.linspace(x0 - width, x0 + width, SAMPLES)
    rerun = Rerunner(code, namespace, recorder.sources, [target], before, opts.quiet)
    ys = []
    for x in xs:
        try:
            ys.append(float(rerun({source: tf.constant(x, src.dtype)})[target]))
        except Exception:
            ys.append(np.nan)
    slope = result.find(target, source)
    slope = float(np.asarray(slope.value)) if slope is not None and slope.value is not None else 0.0
    y0 = float(np.asarray(result.values[target]))
    result.plots.append(_draw(xs, np.array(ys), x0, y0, slope, source, target, opts.order))


def _real_scalar(value) -> bool:
    try:
        a = np.asarray(value)
    except Exception:
        return False
    return a.size == 1 and a.dtype.kind in "fi"


def _draw(xs, ys, x0, y0, slope, source, target, order) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5.2, 3.2), dpi=96)
    ax = fig.add_subplot()
    ax.plot(xs, ys, label=f"{target}({source})", color="C0")
    ax.plot(xs, y0 + slope * (xs - x0), "--", color="C1", label=f"tangent, slope {slope:.4g}")
    ax.plot([x0], [y0], "o", color="C1")
    if order > 1:
        d1 = np.gradient(ys, xs, edge_order=2)
        ax.plot(xs, d1, ":", color="C2", label=f"∂{target}/∂{source}")
        if order >= 2:
            ax.plot(
                xs,
                np.gradient(d1, xs, edge_order=2),
                ":",
                color="C3",
                label=f"∂²{target}/∂{source}²",
            )
    ax.set_xlabel(source)
    ax.axvline(x0, color="grey", lw=0.5)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
