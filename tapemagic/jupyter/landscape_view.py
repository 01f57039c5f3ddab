"""The panel's "landscape" view: the loss around the run, with the path drawn as it runs.

Two scalar parameters are drawn in their own coordinates; any other model on a 2-D slice
through its current weights (a direction chooser: filter-normalised random or PCA of the
path), with the 1-D line from the first weights to the current ones beneath. The grids are
computed in this view's own thread, never in the training thread or the kernel's: a click
never waits for one. While training runs, that thread rests between chunks of grid points
long enough that it takes at most `SHARE` of the time (so training keeps its speed); the
panel's view thread only asks for a new grid and draws the latest one, paced like the plot.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from tapemagic.display.landscape_plot import LandscapePlot, render_line
from tapemagic.jupyter.panel_timing import PLOT_EVERY_S, RedrawPacer
from tapemagic.training.landscape import Landscape, LandscapeMaker, LineProfile

if TYPE_CHECKING:
    from tapemagic.jupyter.panel import TrainingPanel

SHARE = 0.08  # while training runs, grids take at most this share of the wall time
MAX_REST_S = 2.0  # the longest rest between two chunks of grid points
SLICE_RESOLUTION = 41  # grid points per side of a slice (a 2-parameter grid has 61)
DIRECTIONS = (("random (filter-normalised)", "random"), ("PCA of the path", "pca"))


class LandscapeView:
    """The loss landscape of `panel.trainer`, recomputed as training moves."""

    title = "landscape"

    def __init__(self, panel: TrainingPanel):
        self._panel = weakref.proxy(panel)  # the view must not keep a closed panel alive
        self._trainer = panel.trainer  # the last one seen (the device menu replaces it)
        self.plot = LandscapePlot()
        self.image = w.Image(format="png", layout=w.Layout(width="432px", height="336px"))
        self.line_image = w.Image(format="png", layout=w.Layout(width="432px"))
        self.note = w.HTML()
        self.directions = w.Dropdown(
            options=DIRECTIONS, value="random", description="directions",
            layout=w.Layout(width="330px"),
        )  # fmt: skip
        self.directions.observe(lambda change: self._wake(), "value")
        self.widget = w.VBox([self.directions, self.image, self.line_image, self.note])
        self.widget.add_class("tapemagic-landscape")  # for styling and browser tests
        self.image.add_class("tapemagic-landscape-plot")
        self.line_image.add_class("tapemagic-landscape-line")
        self.maker: LandscapeMaker | None = None
        self.landscape: Landscape | None = None  # the latest grid computed
        self.line: LineProfile | None = None
        self.error: str | None = None
        self._serial = 0  # grids computed so far
        self._drawn = -1  # the serial last drawn
        self._computed_at: tuple | None = None  # what the latest grid was computed for
        self._rest_until = 0.0
        self._busy = False
        self._again = False  # asked (forced) while busy: compute once more
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._pacer = RedrawPacer()
        self._want = threading.Event()
        try:
            self.maker = LandscapeMaker(self.trainer, resolution=61)
        except ValueError as err:  # e.g. a bare step=: nothing to evaluate
            self.error = str(err)
        slices = self.maker is not None and self.maker.kind != "parameters"
        self._one_weight = self.maker is not None and self.maker.n < 2  # a line, no plane
        self.directions.layout.display = None if slices and not self._one_weight else "none"
        self.image.layout.display = "none" if self._one_weight else None
        self.line_image.layout.display = None if slices else "none"
        self._thread = threading.Thread(target=self._work, name="tapemagic-landscape", daemon=True)
        self._thread.start()
        self._show_note()

    @property
    def trainer(self) -> Any:
        """The panel's trainer now (choosing another device makes a new one)."""
        with contextlib.suppress(ReferenceError):  # a panel gone: the last trainer seen
            self._trainer = self._panel.trainer
        return self._trainer

    # -- what the panel calls ----------------------------------------------------------

    def refresh(self, force: bool) -> None:
        """Ask for a new grid when training has moved (or `force`), draw the latest one
        when it is due. Never raises: a failure shows in the view's note."""
        try:
            self._maybe_ask(force)
            self._draw(force)
        except Exception as err:  # a view must never stop the panel's view thread
            self.error = f"{type(err).__name__}: {err}"
            self._show_note()

    def _wake(self) -> None:
        self._computed_at = None
        self._maybe_ask(True)

    def _key(self) -> tuple:
        t = self.trainer
        return (t.epoch, len(t.trajectory), self.directions.value)

    def _maybe_ask(self, force: bool) -> None:
        if self.maker is None:
            return
        if self._busy:
            self._again = self._again or force  # asked again while computing: once more after
            return
        key = self._key()
        if key == self._computed_at and not force:
            return
        if time.monotonic() < self._rest_until and not force:
            return
        self._busy = True
        self._want.set()

    # -- the view's own thread: grids ------------------------------------------------

    def _rest(self, took: float) -> None:
        """Between chunks of grid points: rest while training runs, so it keeps its pace."""
        if self.trainer.running:
            time.sleep(min(took * (1 / SHARE - 1), MAX_REST_S))

    def _work(self) -> None:
        while True:
            asked = self._want.wait(1.0)
            self._want.clear()
            try:
                if getattr(self._panel, "_closed", True):
                    return
            except ReferenceError:  # the panel is gone: so is this thread
                return
            if not asked:
                continue
            key = self._key()
            started = time.monotonic()
            try:
                self._compute(key)
                self.error = None
            except Exception as err:  # shown in the note; the next request tries again
                self.error = f"{type(err).__name__}: {err}"
            took = time.monotonic() - started
            # while training runs: no more often than the plot redraws, and at most SHARE
            # of the time
            rest = max(took * (1 / SHARE - 1), PLOT_EVERY_S) if self.trainer.running else 0.0
            self._rest_until = time.monotonic() + rest
            self._computed_at = key
            again, self._again = self._again, False
            self._busy = False
            if again or (key != self._key() and not self.trainer.running):
                self._maybe_ask(True)  # training moved on while this grid was computed
            try:
                self._draw(force=not self.trainer.running)
            except Exception as err:
                self.error = f"{type(err).__name__}: {err}"
                self._show_note()

    def _compute(self, key: tuple) -> None:
        if self.maker.trainer is not self.trainer:  # a new trainer: compiled anew
            self.maker = LandscapeMaker(self.trainer, resolution=self.maker.resolution)
        maker = self.maker
        if maker.kind != "parameters":
            if maker.directions != key[2]:
                maker.directions = key[2]
            maker.resolution = SLICE_RESOLUTION
        if maker.kind == "pca" and len(self.trainer.trajectory) < 2:
            raise ValueError("PCA directions need a path: train a few epochs first")
        land = None if self._one_weight else maker.compute(pause=self._rest)
        line = None
        if maker.kind != "parameters" and len(self.trainer.trajectory) >= 2:
            try:
                line = maker.line(pause=self._rest)
            except ValueError:  # the weights have not moved: no line yet
                line = None
        with self._lock:
            self.landscape, self.line = land, line
            self._serial += 1

    # -- drawing ---------------------------------------------------------------------

    def _draw(self, force: bool) -> None:
        with self._lock:
            land, line, serial = self.landscape, self.line, self._serial
        now = time.monotonic()
        if (land is None and line is None) or serial == self._drawn:
            self._show_note()
            return
        if not (force or self._pacer.due(now, serial, None)):
            return
        with self._draw_lock:
            started = time.monotonic()
            if land is not None:
                epoch = int(land.path_epochs[-1]) if len(land.path_epochs) else 0
                title = self._title(land)
                self.image.value = self.plot.render(land, title=title, caption=f"epoch {epoch:,}")
            self._pacer.rendered(time.monotonic() - started)
            if line is not None:
                self.line_image.value = render_line(line)
            self._pacer.drew(now, serial, None)
            self._drawn = serial
        self._show_note()

    def _title(self, land: Landscape) -> str:
        """The same for every frame: a title that changed would redraw the contours."""
        where = "loss on a 2-D slice"
        if land.kind == "parameters":
            where = f"loss over ({land.axis_names[0]}, {land.axis_names[1]})"
        return f"{where} · log-spaced levels"

    def _show_note(self) -> None:
        parts = []
        land = self.landscape
        if land is not None:
            parts.append(f"loss here {land.current_loss:.6g}")
            if land.minimum is not None:
                at = ", ".join(f"{v:.4g}" for v in land.minimum)
                parts.append(f"minimum {land.minimum_loss:.6g} at ({at})")
            if land.note:
                parts.append(land.note)
            parts.append(f"grid {land.values.shape[1]}x{land.values.shape[0]} in "
                         f"{1000 * land.seconds:.0f} ms")  # fmt: skip
        elif self._one_weight:
            parts.append(
                f"one weight ({self.maker.names[0]}): the loss along it, from its first value "
                "(t=0) to the current one (t=1), once it has moved"
            )
        elif self.error is None:
            parts.append("computing the landscape…")
        text = html.escape(" · ".join(parts))
        if self.error:
            text += f'<br><span style="color:#d62728">{html.escape(self.error)}</span>'
        self.note.value = f'<span style="font-size:12px">{text}</span>'


# -- TrainingPanel.landscape() -----------------------------------------------------------

_makers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def panel_landscape(panel: Any, directions: Any = "auto", resolution: int = 61) -> Landscape:
    """The landscape around `panel`'s run, computed now in the caller's thread, with a
    maker kept per panel so that later calls are warm."""
    maker = _makers.get(panel)
    if maker is None or maker.trainer is not panel.trainer:
        maker = _makers[panel] = LandscapeMaker(panel.trainer, directions, resolution)
    elif not (isinstance(directions, str) and isinstance(maker.directions, str)
              and directions == maker.directions):  # fmt: skip
        maker.directions = directions
    return maker.compute(resolution)
