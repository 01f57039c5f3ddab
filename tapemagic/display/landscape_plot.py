"""The loss landscape as PNG bytes: filled contours, the descent path, the current point,
the negative gradient and the minimum; several paths for a comparison; the 1-D line.

Contour levels are spaced logarithmically, so the valley's floor reads as well as its
walls (a loss that spans 2 to 400 across the grid gets as many levels below 20 as above).
A figure is made once and kept (no pyplot); the contours are drawn again only when the
grid changed, and each render then draws only the path and the markers over them.
Transparent background and mid-grey ink, like the loss plot, for light and dark themes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tapemagic.display.heatmap import encode_png
from tapemagic.display.lossplot import INK

if TYPE_CHECKING:
    from tapemagic.training.landscape import Landscape, LineProfile

LEVELS = 18  # filled contour bands
ARROW_SHARE = 0.12  # the gradient arrow's length, as a share of the frame's diagonal
PATH_MARKERS_UP_TO = 80  # paths with more points are drawn as a line alone


@dataclass(frozen=True)
class Path:
    """One path to draw over a landscape (a comparison draws several)."""

    label: str
    points: np.ndarray  # (P, 2) in the landscape's coordinates


def log_levels(values: np.ndarray, n: int = LEVELS) -> np.ndarray | None:
    """`n`+1 log-spaced levels over the finite positive values (None: linear levels fit
    better, the values reach zero or below)."""
    finite = values[np.isfinite(values)]
    if not finite.size or finite.min() <= 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo * (1 + 1e-9):
        hi = lo * 1.01 + 1e-12
    return np.geomspace(lo, hi, n + 1)


class LandscapePlot:
    """A landscape and the path(s) on it, rendered to PNG (RGBA) on demand."""

    def __init__(self, width: float = 5.4, height: float = 4.2, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.figure.patch.set_alpha(0.0)
        self.axes = self.figure.add_subplot()
        self.axes.set_facecolor("none")
        self.figure.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.13)
        self._grid_key: tuple | None = None
        self._background = None
        self._moving: list = []
        self.contours_drawn = 0  # how many times the contours were drawn (for tests)

    def render(
        self,
        land: Landscape,
        paths: Sequence[Path] | None = None,
        title: str = "",
        caption: str = "",
    ) -> bytes:
        """PNG bytes: the contours of `land`, its own path (or `paths`), the current point,
        the negative gradient, the minimum. `title` is drawn with the contours (keep it the
        same from render to render); `caption` (e.g. the epoch) in a corner, each time."""
        key = (
            land.kind, land.axis_names, land.x[0], land.x[-1], land.y[0], land.y[-1],
            hash(land.values.tobytes()), title, paths is None,
        )  # fmt: skip
        if key != self._grid_key:
            self._draw_grid(land, title, compare=paths is not None)
            self._grid_key = key
        else:
            self.figure.canvas.restore_region(self._background)
        for artist in self._moving:
            artist.remove()
        self._moving = self._draw_paths(land, paths)
        if caption:
            text = self.axes.text(
                0.02, 0.97, caption, transform=self.axes.transAxes, ha="left", va="top",
                fontsize=8, color="white", animated=True,
            )  # fmt: skip
            self._moving.append(text)
        for artist in self._moving:
            self.axes.draw_artist(artist)
        return encode_png(np.asarray(self.figure.canvas.buffer_rgba()), level=1)

    def _draw_grid(self, land: Landscape, title: str, compare: bool) -> None:
        from matplotlib.colors import LogNorm

        for artist in self._moving:
            artist.remove()
        self._moving = []
        ax = self.axes
        ax.clear()
        ax.set_facecolor("none")
        values = np.ma.masked_invalid(land.values)
        levels = log_levels(land.values)
        if levels is not None:
            ax.contourf(land.x, land.y, values, levels=levels, cmap="viridis", norm=LogNorm(),
                        extend="both", alpha=0.9)  # fmt: skip
            ax.contour(land.x, land.y, values, levels=levels[::3], colors=INK,
                       linewidths=0.4, alpha=0.6)  # fmt: skip
        else:
            ax.contourf(land.x, land.y, values, levels=LEVELS, cmap="viridis", alpha=0.9)
        if land.minimum is not None:
            ax.plot(*land.minimum, marker="*", ms=13, color="white", mec="black", mew=0.8,
                    ls="", label="minimum")  # fmt: skip
        ax.set_xlim(land.x[0], land.x[-1])
        ax.set_ylim(land.y[0], land.y[-1])
        ax.set_xlabel(land.axis_names[0], color=INK)
        ax.set_ylabel(land.axis_names[1], color=INK)
        ax.tick_params(colors=INK, labelcolor=INK, labelsize=8)
        for spine in ax.spines.values():
            spine.set_color(INK)
        scale = "log-spaced levels" if levels is not None else "linear levels"
        ax.set_title(title or f"loss ({scale})", color=INK, fontsize=9)
        self.figure.canvas.draw()
        self._background = self.figure.canvas.copy_from_bbox(self.figure.bbox)
        self.contours_drawn += 1

    def _draw_paths(self, land: Landscape, paths: Sequence[Path] | None) -> list:
        ax = self.axes
        artists: list = []
        own = paths is None
        for k, path in enumerate(paths if paths is not None else [Path("path", land.path)]):
            pts = path.points[np.all(np.isfinite(path.points), axis=1)]
            if not len(pts):
                continue
            color = "white" if own else f"C{k}"
            marker = "o" if len(pts) <= PATH_MARKERS_UP_TO else ""
            (line,) = ax.plot(pts[:, 0], pts[:, 1], color=color, lw=1.3, marker=marker, ms=2.5,
                              label=path.label)  # fmt: skip
            (now,) = ax.plot(*pts[-1], marker="o", ms=7, color=color if not own else "#ff7f0e",
                             mec="black", mew=0.8, ls="")  # fmt: skip
            artists += [line, now]
        sx, sy = land.x[-1] - land.x[0], land.y[-1] - land.y[0]
        at_minimum = land.minimum is not None and np.all(
            np.abs(land.current - land.minimum) <= 0.01 * np.array([sx, sy])
        )  # there the gradient is rounding noise: no arrow
        if own and not at_minimum and np.all(np.isfinite(land.gradient)) and np.any(land.gradient):
            # the direction of steepest descent, drawn in the plot's own units (an axis
            # may be stretched, so the arrow's length is scaled in axes units)
            d = -land.gradient / np.array([sx, sy])
            d = d / np.linalg.norm(d) * ARROW_SHARE * np.hypot(1, 1)
            arrow = ax.annotate(
                "", xy=(land.current[0] + d[0] * sx, land.current[1] + d[1] * sy),
                xytext=tuple(land.current), arrowprops=dict(arrowstyle="->", color="#ff7f0e",
                lw=1.6),
            )  # fmt: skip
            artists.append(arrow)
        if not own:
            # on the contours, not the page: a light box keeps it legible on any colour
            legend = ax.legend(loc="upper right", fontsize=8, framealpha=0.8,
                               facecolor="white", edgecolor="none")  # fmt: skip
            for text in legend.get_texts():
                text.set_color("black")
            artists.append(legend)
        for artist in artists:
            artist.set_animated(True)
        return artists


def render_line(profile: LineProfile, width: float = 5.4, height: float = 2.4) -> bytes:
    """The loss along the line from the first weights (t=0) to the current ones (t=1)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)
    ax = fig.add_subplot()
    ax.set_facecolor("none")
    ax.plot(profile.t, profile.values, color="C0", lw=1.5)
    finite = profile.values[np.isfinite(profile.values)]
    if finite.size and finite.min() > 0 and finite.max() > 20 * finite.min():
        ax.set_yscale("log")
    for t, label in ((0.0, "start"), (1.0, "now")):
        y = float(np.interp(t, profile.t, profile.values))
        ax.plot([t], [y], marker="o", ms=6, color="#ff7f0e" if t else INK, ls="")
        ax.annotate(label, (t, y), textcoords="offset points", xytext=(4, 6), color=INK,
                    fontsize=8)  # fmt: skip
    ax.set_xlabel("t: weights = start + t (now - start)", color=INK, fontsize=8)
    ax.set_ylabel("loss", color=INK)
    ax.tick_params(colors=INK, labelcolor=INK, labelsize=8)
    for spine in ax.spines.values():
        spine.set_color(INK)
    ax.grid(alpha=0.3, color=INK)
    fig.subplots_adjust(left=0.14, right=0.97, top=0.95, bottom=0.22)
    fig.canvas.draw()
    return encode_png(np.asarray(fig.canvas.buffer_rgba()), level=1)


def render_losses(
    curves: dict[str, Sequence[float]], log_scale: bool = True, width: float = 5.4,
    height: float = 2.8,
) -> bytes:  # fmt: skip
    """Several loss curves on one plot (a comparison's copies), thinned like the loss plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tapemagic.display.lossplot import thin

    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)
    ax = fig.add_subplot()
    ax.set_facecolor("none")
    positive = True
    for k, (label, values) in enumerate(curves.items()):
        y = np.asarray(values, dtype=float)
        x, y = thin(np.arange(1, len(y) + 1, dtype=float), y)
        positive = positive and bool(np.all(y[np.isfinite(y)] > 0))
        ax.plot(x, y, color=f"C{k}", lw=1.4, label=label, marker="o" if len(y) <= 60 else "",
                ms=3)  # fmt: skip
    if log_scale and positive and any(len(v) for v in curves.values()):
        ax.set_yscale("log")
    ax.set_xlabel("epoch", color=INK)
    ax.set_ylabel("loss", color=INK)
    ax.tick_params(colors=INK, labelcolor=INK, labelsize=8)
    for spine in ax.spines.values():
        spine.set_color(INK)
    ax.grid(alpha=0.3, color=INK)
    if curves:
        legend = ax.legend(loc="upper right", fontsize=8, frameon=False)
        for text in legend.get_texts():
            text.set_color(INK)
    fig.subplots_adjust(left=0.14, right=0.97, top=0.95, bottom=0.18)
    fig.canvas.draw()
    return encode_png(np.asarray(fig.canvas.buffer_rgba()), level=1)
