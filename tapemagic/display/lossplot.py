"""Loss curves as PNG bytes, fast enough to redraw many times a second.

One matplotlib Figure is made once and its lines updated in place (no pyplot, so no
global state and no GUI backend). Long histories are thinned to about 2,000 points per
line keeping each bucket's minimum and maximum, so spikes survive and a 100,000-epoch
run draws as fast as a 100-epoch one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tapemagic.display.heatmap import encode_png

MAX_POINTS = 2000


def thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple:
    """At most `max_points` points: each of max_points/2 buckets keeps its min and max."""
    n = len(y)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    rows = padded.reshape(buckets, size)
    finite = np.isfinite(rows)
    lows = np.where(finite, rows, np.inf).argmin(axis=1)
    highs = np.where(finite, rows, -np.inf).argmax(axis=1)
    base = np.arange(buckets) * size
    idx = np.unique(np.concatenate([base + lows, base + highs]))
    idx = idx[idx < n]
    return x[idx], y[idx]


def smooth(y: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing).

    Vectorised over blocks: within a block, acc_t = w^t (w acc + (1-w) cumsum(y_j w^-j)),
    with blocks short enough that w^-j stays far from overflow.
    """
    y = np.asarray(y, dtype=float)
    if weight <= 0 or y.size == 0:
        return y
    w = min(float(weight), 0.999)
    block = max(1, int(250 / -np.log10(w)))
    out = np.empty_like(y)
    acc = norm = 0.0
    for start in range(0, y.size, block):
        seg = y[start : start + block]
        wt = w ** np.arange(seg.size)
        accs = wt * (w * acc + (1 - w) * np.cumsum(seg / wt))
        norms = wt * (w * norm + (1 - w) * np.cumsum(1 / wt))
        out[start : start + block] = accs / norms
        acc, norm = accs[-1], norms[-1]
    return out


class LossPlot:
    """Train and validation loss against epoch, rendered to PNG on demand."""

    def __init__(self, width: float = 6.0, height: float = 3.2, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        (self.train_line,) = self.axes.plot([], [], color="C0", lw=1.4, label="loss")
        (self.val_line,) = self.axes.plot([], [], color="C1", lw=1.4, label="val_loss")
        self.axes.set_xlabel("epoch")
        self.axes.grid(alpha=0.3)
        self.figure.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.16)

    def render(
        self,
        loss: Sequence[float],
        val_loss: Sequence[float | None] = (),
        log_scale: bool = False,
        smoothing: float = 0.0,
    ) -> bytes:
        """PNG bytes of the curves; points drawn stay bounded whatever the history length."""
        y = np.asarray(loss, dtype=float)
        x = np.arange(1, len(y) + 1, dtype=float)
        lines = [(self.train_line, x, smooth(y, smoothing))]
        v = np.array(val_loss, dtype=float)  # None becomes NaN
        has_val = v.size and not np.all(np.isnan(v))
        if has_val:
            lines.append((self.val_line, x[: v.size], smooth(v, smoothing)))
        else:
            self.val_line.set_data([], [])
        tops, bottoms = [], []
        for line, xs, ys in lines:
            xs, ys = thin(xs, ys)
            line.set_data(xs, ys)
            good = ys[np.isfinite(ys) & ((ys > 0) if log_scale else True)]
            if good.size:
                tops.append(good.max())
                bottoms.append(good.min())
        self.val_line.set_visible(bool(has_val))
        ax = self.axes
        scale = "log" if log_scale else "linear"
        if ax.get_yscale() != scale:  # switching scales is costly: only when it changes
            ax.set_yscale(scale)
        ax.set_xlim(0.5, max(len(y), 1) + 0.5)
        if tops:
            lo, hi = min(bottoms), max(tops)
            if log_scale:
                ax.set_ylim(lo / 1.3, hi * 1.3)
            else:
                pad = 0.05 * (hi - lo or abs(hi) or 1.0)
                ax.set_ylim(lo - pad, hi + pad)
        else:  # nothing to draw yet (or nothing positive on a log scale): a neutral frame
            ax.set_ylim(*((0.1, 10.0) if log_scale else (0.0, 1.0)))
        if bool(has_val) != (ax.get_legend() is not None):
            ax.legend(loc="upper right", fontsize=8) if has_val else ax.get_legend().remove()
        # Agg's own PNG writer compresses hard; a fast zlib level gives the same picture
        # in a third of the time, which matters at ten redraws a second.
        self.figure.canvas.draw()
        rgba = np.asarray(self.figure.canvas.buffer_rgba())
        return encode_png(rgba[:, :, :3], level=1)

    def points_drawn(self) -> int:
        """How many points the last render drew, over both lines (for tests)."""
        return len(self.train_line.get_xdata()) + len(self.val_line.get_xdata())
