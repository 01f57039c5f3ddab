"""`--plot`'s data: the target around the point, its tangent, and f', f'' for higher orders.

Only for a real scalar target of one real scalar source, the case a picture explains.
The curve comes from re-running the cell (silently) at points around the recorded one;
the figure itself is drawn by the display layer when the result is shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from tapemagic.tape.recording import Recorder, to_numpy
from tapemagic.tape.rerun import Rerunner, written_before_read
from tapemagic.tape.result import TangentCurve, TapeResult

if TYPE_CHECKING:  # tapecell imports this module
    from tapemagic.tape.tapecell import TapeOptions

SAMPLES = 81


def add_tangent_curve(
    result: TapeResult,
    code: str,
    namespace: dict,
    recorder: Recorder,
    opts: TapeOptions,
    before: list[tuple[tf.Variable, tf.Tensor]],
) -> None:
    """Append a `TangentCurve` to `result.tangents`, or a note saying why there is none."""
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
    x0 = float(to_numpy(result.point.get(source, src)))  # the value the derivative was taken at
    width = max(1.0, abs(x0))
    xs = np.linspace(x0 - width, x0 + width, SAMPLES)
    index = written_before_read(code, source) if isinstance(src, tf.Variable) else None
    set_after = {source: index} if index is not None and index >= 0 else {}
    rerun = Rerunner(
        code, namespace, recorder.sources, [target], before, opts.silence_reruns, set_after
    )
    ys = []
    for x in xs:
        try:
            ys.append(float(rerun({source: tf.constant(x, src.dtype)})[target]))
        except Exception:  # a point where the cell fails: a gap in the curve
            ys.append(np.nan)
    ys = np.array(ys)
    slope = result.find(target, source)
    slope = float(to_numpy(slope.value)) if slope is not None and slope.value is not None else 0.0
    curve = TangentCurve(
        target=target,
        source=source,
        xs=xs,
        ys=ys,
        x0=x0,
        y0=float(to_numpy(result.values[target])),
        slope=slope,
        order=opts.order,
    )
    if opts.order > 1:
        curve.dydx = np.gradient(ys, xs, edge_order=2)
        curve.d2ydx2 = np.gradient(curve.dydx, xs, edge_order=2)
    result.tangents.append(curve)


def _real_scalar(value: Any) -> bool:
    try:
        a = to_numpy(value)
    except Exception:
        return False
    return a.size == 1 and a.dtype.kind in "fi"
