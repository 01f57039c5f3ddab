"""Loss curves as PNG bytes, fast enough to redraw many times a second.

One matplotlib Figure is made once and its lines updated in place (no pyplot, so no
global state and no GUI backend). Long histories are thinned to about 2,000 points per
line keeping each bucket's minimum and maximum, so spikes survive and a 100,000-epoch
run draws as fast as a 100-epoch one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tapemagic.display.heatmap import encode_png

if TYPE_CHECKING:
    from tapemagic.training.livelog import BatchLosses

MAX_POINTS = 2000


class Curve(NamedTuple):
    """A named line of per-epoch values (None where the epoch has none)."""

    name: str
    values: Sequence[float | None]


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


# Readable on light and dark notebook themes alike: a transparent background (the page's
# own colour shows through) and mid-grey ink, which has enough contrast on white and on
# JupyterLab's dark grey; the default blue and orange lines read on both.
INK = "#8a8a8a"
MARKERS_UP_TO = 60  # points per line drawn with markers: a first epoch is a visible dot
MIN_EPOCHS_SHOWN = 10  # the x axis spans at least this many epochs, so it starts sensible
NICE = (1.0, 2.0, 5.0, 10.0)  # live x limits: few steps, so the axes are seldom redrawn
HEADROOM = 0.15  # live: the y range gets this share of room to grow before it is redrawn


def nice_ceil(x: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is >= x."""
    if x <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(x))
    return next(power * m for m in NICE if power * m >= x * (1 - 1e-12))


class LossPlot:
    """Train and validation loss against epoch, rendered to PNG (RGBA) on demand.

    Optional, for several losses and batch-level points: named extra lines (a multi-output
    model's per-output losses; a name starting with 'val_' is dashed in the colour of the
    line it validates) and a faint line of running losses within epochs."""

    def __init__(self, width: float = 6.0, height: float = 3.2, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.figure = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.figure.patch.set_alpha(0.0)
        ax = self.axes = self.figure.add_subplot()
        ax.set_facecolor("none")
        (self.train_line,) = ax.plot([], [], color="C0", lw=1.4, ms=3.5, label="loss")
        (self.val_line,) = ax.plot([], [], color="C1", lw=1.4, ms=3.5, label="val_loss")
        # An epoch in progress: a dotted line at how far into it the run is.
        self.progress_line = ax.axvline(0.0, color=INK, lw=1.0, ls=":", visible=False)
        # Drawing the axes, ticks and labels is most of a render. They are drawn once per
        # frame (limits, scale, legend) and kept; each render then draws only these.
        self._moving = (self.train_line, self.val_line, self.progress_line)
        for artist in self._moving:
            artist.set_animated(True)
        self._frame_key: tuple | None = None
        self._background = None
        self._extra: dict = {}  # name -> its line, made when first drawn
        self._batches = None  # the batch-level line, made when first drawn
        self._legend_handles: list = []
        self.empty_text = ax.text(
            0.5, 0.5, "no epochs yet", transform=ax.transAxes, ha="center", va="center",
            color=INK, fontsize=10,
        )  # fmt: skip
        ax.set_xlabel("epoch", color=INK)
        ax.set_ylabel("loss", color=INK)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.tick_params(colors=INK, labelcolor=INK)
        for spine in ax.spines.values():
            spine.set_color(INK)
        ax.grid(alpha=0.3, color=INK)
        self.figure.subplots_adjust(left=0.13, right=0.97, top=0.93, bottom=0.16)

    def render(
        self,
        loss: Sequence[float],
        val_loss: Sequence[float | None] = (),
        log_scale: bool = False,
        smoothing: float = 0.0,
        progress: float | None = None,
        live: bool = False,
        extra: Sequence[Curve] = (),
        batches: BatchLosses | None = None,
    ) -> bytes:
        """PNG bytes of the curves; points drawn stay bounded whatever the history length.

        `progress`: where an unfinished epoch has got to, in epochs (3.4: 40% into the 4th),
        drawn as a dotted line so an epoch slower than the redraws still shows movement.
        `live`: during a run, the axes keep their limits while the curves fit, so most
        renders redraw only the curves; otherwise the limits fit the curves exactly.
        `extra`: named lines beside loss and val_loss. `batches`: the running loss within
        epochs, drawn faintly."""
        y = np.asarray(loss, dtype=float)
        x = np.arange(1, len(y) + 1, dtype=float)
        lines = [(self.train_line, x, smooth(y, smoothing))]
        if isinstance(val_loss, list) and val_loss.count(None) == len(val_loss):
            v = np.empty(0)  # no validation: skip converting a long list of None
        else:
            v = np.array(val_loss, dtype=float)  # None becomes NaN
        has_val = bool(v.size and not np.all(np.isnan(v)))
        if has_val:
            lines.append((self.val_line, x[: v.size], smooth(v, smoothing)))
        else:
            self.val_line.set_data([], [])
        names = []
        for curve in extra:
            name, ys = curve.name, np.array(curve.values, dtype=float)
            if ys.size and not np.all(np.isnan(ys)):
                lines.append((self._named(name), x[: ys.size], smooth(ys, smoothing)))
                names.append(name)
        for name, line in self._extra.items():
            line.set_visible(name in names)
        bx = np.asarray(batches.x if batches else (), dtype=float)
        if bx.size:
            lines.append((self._batch_line(), bx, np.asarray(batches.loss, dtype=float)))
        elif self._batches is not None:
            self._batches.set_visible(False)
        tops, bottoms = [], []
        for line, xs, ys in lines:
            xs, ys = thin(xs, ys)
            line.set_data(xs, ys)
            if line is not self._batches:
                line.set_marker("o" if len(xs) <= MARKERS_UP_TO else "")
            good = ys[np.isfinite(ys) & ((ys > 0) if log_scale else True)]
            if good.size:
                tops.append(good.max())
                bottoms.append(good.min())
        self.val_line.set_visible(has_val)
        shown = progress is not None and progress > len(y)
        self.progress_line.set_visible(shown)
        if shown:
            self.progress_line.set_xdata([progress, progress])
        right = max(len(y), float(np.ceil(progress)) if shown else 0.0, MIN_EPOCHS_SHOWN)
        if bx.size:
            right = max(right, float(np.ceil(np.nanmax(bx))))
        # From 0, where the run started: an unfinished first epoch lies between 0 and 1.
        xlim = (0.0, (nice_ceil(right) if live else right) + 0.5)
        ylim = self._ylim(min(bottoms), max(tops), log_scale, live) if tops else None
        if ylim is None:  # nothing to draw yet (or nothing positive on a log scale)
            ylim = (0.1, 10.0) if log_scale else (0.0, 1.0)
        key = (xlim, ylim, log_scale, has_val, len(y) == 0 and not bx.size, tuple(names))
        canvas = self.figure.canvas
        if key != self._frame_key:
            self._draw_frame(key)
        else:
            canvas.restore_region(self._background)
        for artist in self._moving:
            if artist.get_visible():
                self.axes.draw_artist(artist)
        # Agg's own PNG writer compresses hard; a fast zlib level gives the same picture
        # in a third of the time, which matters at ten redraws a second.
        return encode_png(np.asarray(canvas.buffer_rgba()), level=1)

    def _ylim(self, lo: float, hi: float, log_scale: bool, live: bool) -> tuple[float, float]:
        if log_scale:
            lo, hi = np.log10(lo), np.log10(hi)
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        if log_scale:
            pad = max(pad, np.log10(1.3))
        want = (lo - pad, hi + pad)
        if live and self._frame_key is not None and self._frame_key[2] == log_scale:
            cur = self._frame_key[1]
            cur = (np.log10(cur[0]), np.log10(cur[1])) if log_scale else cur
            span = cur[1] - cur[0]
            # Keep the frame while the curves fit in it and fill at least half of it.
            if cur[0] <= want[0] and want[1] <= cur[1] and (want[1] - want[0]) >= 0.5 * span:
                return self._frame_key[1]
            room = HEADROOM * (want[1] - want[0])
            want = (want[0] - room, want[1] + room)
        want = (float(want[0]), float(want[1]))
        return (10.0 ** want[0], 10.0 ** want[1]) if log_scale else want

    def _draw_frame(self, key: tuple) -> None:
        """Everything but the curves, drawn and kept for the renders that follow."""
        xlim, ylim, log_scale, has_val, empty, names = key
        ax = self.axes
        scale = "log" if log_scale else "linear"
        if ax.get_yscale() != scale:  # switching scales is costly: only when it changes
            ax.set_yscale(scale)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        self.empty_text.set_visible(empty)
        handles = [self.train_line, *([self.val_line] if has_val else [])]
        handles += [self._extra[name] for name in names]
        legend = ax.get_legend()
        if legend is not None and (len(handles) < 2 or handles != self._legend_handles):
            legend.remove()
            legend = None
        if legend is None and len(handles) > 1:
            legend = ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
            for text in legend.get_texts():
                text.set_color(INK)
            self._legend_handles = handles
        self.figure.canvas.draw()  # the animated curves are left out of this
        self._background = self.figure.canvas.copy_from_bbox(self.figure.bbox)
        self._frame_key = key

    def _named(self, name: str):
        """The extra line called `name`; 'val_x' takes the colour of 'x', dashed."""
        if name not in self._extra:
            base = name[4:] if name.startswith("val_") else name
            colours = [n for n in self._extra if not n.startswith("val_")]
            if base in self._extra:
                colour = self._extra[base].get_color()
            else:
                colour = f"C{(len(colours) + 2) % 10}"
            style = "--" if name.startswith("val_") else "-"
            (line,) = self.axes.plot([], [], color=colour, lw=1.2, ls=style, ms=3, label=name)
            line.set_animated(True)
            self._extra[name] = line
            self._moving = (*self._moving, line)
        return self._extra[name]

    def _batch_line(self):
        if self._batches is None:
            (self._batches,) = self.axes.plot([], [], color="C0", lw=0.8, alpha=0.45)
            self._batches.set_animated(True)
            self._moving = (self._batches, *self._moving)
        self._batches.set_visible(True)
        return self._batches

    def points_drawn(self) -> int:
        """How many points the last render drew, over both lines (for tests)."""
        return len(self.train_line.get_xdata()) + len(self.val_line.get_xdata())
