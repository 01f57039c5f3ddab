"""Gradient health as PNG bytes: each layer's gradient norm and update ratio over epochs.

Two panels sharing the epoch axis, both on log scales: the gradient norm (a vanishing
layer sits orders of magnitude below the others, an exploding one climbs) and the update
ratio (update per step over weight norm; a band marks the usual ~1e-3). One line per
layer, coloured along one colour map in layer order (first layer dark, last light), so a
layer keeps its colour in both panels and between redraws. Beyond `MAX_LINES` layers,
evenly spaced ones are drawn and a grey band spans all layers' range. Long runs are
thinned as the loss plot thins them (`lossplot.thin`). Transparent background and mid-grey
ink: readable on light and dark notebook themes. No pyplot: a Figure on the Agg canvas.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tapemagic.display.heatmap import encode_png
from tapemagic.display.lossplot import INK, MIN_EPOCHS_SHOWN, thin

MAX_LINES = 10  # layers drawn as lines; more are summarised by a band
COLOURS = "viridis"  # perceptually ordered, and its ends read on white and on dark grey
USUAL_RATIO = (1e-4, 1e-2)  # the band around the usual update ratio of about 1e-3


def shown_layers(n: int, max_lines: int = MAX_LINES) -> list[int]:
    """Which of n layers get a line: all, or `max_lines` evenly spaced, first and last in."""
    if n <= max_lines:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_lines)})


def layer_colour(i: int, n: int) -> Any:
    """The colour of layer i of n (its place in the layer order)."""
    from matplotlib import colormaps

    return colormaps[COLOURS](0.05 + 0.85 * (i / max(n - 1, 1)))


class HealthPlot:
    """Renders a `GradientTable` (history.gradients) to PNG on demand."""

    def __init__(self, width: float = 6.0, height: float = 4.4, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.figure.patch.set_alpha(0.0)
        self.grad_axes, self.ratio_axes = self.figure.subplots(2, 1, sharex=True)
        self.figure.subplots_adjust(left=0.14, right=0.78, top=0.95, bottom=0.11, hspace=0.12)
        self.lines_drawn = 0  # for tests: lines in the last render, both panels

    def render(self, table: Any) -> bytes:
        """PNG bytes of the table's curves (a 'no epochs yet' frame when it is empty)."""
        epochs = table.epochs.astype(float) + 1.0  # epoch 0 ends at 1, as in the loss plot
        grads = table.layer_stat("grad_norm")
        ratios = table.layer_stat("update_ratio")
        layers = list(table.layers)
        shown = shown_layers(len(layers))
        self.lines_drawn = 0
        for ax, values, label in (
            (self.grad_axes, grads, "gradient norm"),
            (self.ratio_axes, ratios, "update ratio"),
        ):
            ax.clear()
            self._style(ax, label)
            if not len(epochs):
                continue
            if len(shown) < len(layers):  # the others: the range of all layers
                with np.errstate(all="ignore"):
                    lo, hi = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
                x, lo_t = thin(epochs, lo)
                _, hi_t = thin(epochs, hi)
                n = min(len(lo_t), len(hi_t))
                ax.fill_between(x[:n], lo_t[:n], hi_t[:n], color=INK, alpha=0.18, lw=0,
                                label=f"all {len(layers)} layers")  # fmt: skip
            for i in shown:
                x, y = thin(epochs, np.where(values[:, i] > 0, values[:, i], np.nan))
                ax.plot(x, y, color=layer_colour(i, len(layers)), lw=1.3, label=layers[i],
                        marker="o" if len(x) <= 60 else "", ms=3)  # fmt: skip
                self.lines_drawn += 1
        if len(epochs):
            self.ratio_axes.axhspan(*USUAL_RATIO, color="C2", alpha=0.08, lw=0)
            right = max(float(epochs[-1]), MIN_EPOCHS_SHOWN) + 0.5
            self.grad_axes.set_xlim(0.0, right)
            for ax in (self.grad_axes, self.ratio_axes):
                if any(line.get_visible() for line in ax.get_lines()):
                    ax.set_yscale("log")
            handles, labels = self.grad_axes.get_legend_handles_labels()
            legend = self.grad_axes.legend(
                handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                frameon=False,
            )  # fmt: skip
            for text in legend.get_texts():
                text.set_color(INK)
        else:
            self.grad_axes.text(0.5, 0.5, "no epochs yet", transform=self.grad_axes.transAxes,
                                ha="center", va="center", color=INK)  # fmt: skip
        self.ratio_axes.set_xlabel("epoch", color=INK)
        self.figure.canvas.draw()
        return encode_png(np.asarray(self.figure.canvas.buffer_rgba()), level=1)

    @staticmethod
    def _style(ax: Any, label: str) -> None:
        ax.set_facecolor("none")
        ax.set_ylabel(label, color=INK, fontsize=9)
        ax.tick_params(colors=INK, labelcolor=INK, labelsize=8)
        for spine in ax.spines.values():
            spine.set_color(INK)
        ax.grid(alpha=0.3, color=INK)
