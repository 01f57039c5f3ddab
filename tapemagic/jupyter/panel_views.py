"""The training panel's views beside the loss plot, chosen with one row of toggle buttons.

A view is made the first time it is chosen (a view nobody opens costs nothing) as
`View(panel)`, and from then on refreshed by the panel's view thread while it is shown.
The loss plot is the first view and always exists: the saved notebook's snapshot is it.
"""

from __future__ import annotations

import html
import importlib
from typing import TYPE_CHECKING, NamedTuple, Protocol

import ipywidgets as w

if TYPE_CHECKING:
    from tapemagic.jupyter.panel import TrainingPanel

LOSS = "loss"


class PanelView(Protocol):
    """What the panel needs of a view."""

    title: str
    widget: w.Widget

    def refresh(self, force: bool) -> None:
        """Bring the view up to date. Called from the panel's view thread at most ten times
        a second while the view is shown, and with `force` when a run ends; a view paces
        its own redraws and never raises."""


class ViewSpec(NamedTuple):
    """A view the panel offers: its button's title and where its class lives (imported
    on first use, so that the panel loads no view it does not show)."""

    title: str
    module: str
    cls: str


VIEWS: tuple[ViewSpec, ...] = (
    ViewSpec("landscape", "tapemagic.jupyter.landscape_view", "LandscapeView"),
    ViewSpec("gradients", "tapemagic.jupyter.gradients_view", "GradientsView"),
)


class ViewChooser:
    """The toggle row and the area below it that shows the chosen view."""

    def __init__(self, panel: TrainingPanel, loss_view: w.Widget) -> None:
        self._panel = panel
        self._loss_view = loss_view
        self._made: dict[str, PanelView] = {}
        self.buttons = w.ToggleButtons(
            options=[LOSS, *(spec.title for spec in VIEWS)], value=LOSS,
            tooltips=["the loss plot", *(f"the {spec.title} view" for spec in VIEWS)],
        )  # fmt: skip
        self.buttons.style.button_width = "auto"
        if not VIEWS:
            self.buttons.layout.display = "none"
        self.area = w.Box([loss_view])
        self.buttons.observe(lambda ch: self.show(ch.new), "value")

    @property
    def current(self) -> str:
        return self.buttons.value

    def show(self, title: str) -> None:
        """Show the view called `title` (the buttons call this; so can code)."""
        if title not in self.buttons.options:
            names = ", ".join(self.buttons.options)
            raise ValueError(f"the panel has no view {title!r}: choose one of {names}")
        if self.buttons.value != title:
            self.buttons.value = title  # comes back here through the observer
            return
        if title == LOSS:
            self.area.children = [self._loss_view]
            self._panel.refresh(force_plot=True)
            return
        view = self.view(title)
        self.area.children = [view.widget]
        self.refresh_shown(force=True)

    def view(self, title: str) -> PanelView:
        """The view called `title` (one of the buttons' titles), made on first use."""
        if title not in self._made:
            spec = next(s for s in VIEWS if s.title == title)
            cls = getattr(importlib.import_module(spec.module), spec.cls)
            self._made[title] = cls(self._panel)
        return self._made[title]

    def refresh_shown(self, force: bool) -> None:
        """Refresh the shown view unless it is the loss plot (the panel draws that one).
        A view that fails says so in its place instead of stopping the view thread."""
        title = self.current
        if title == LOSS or title not in self._made:
            return
        view = self._made[title]
        try:
            view.refresh(force)
            if self.area.children[0] is not view.widget:  # recovered from a failure
                self.area.children = [view.widget]
        except Exception as err:  # a view must never stop the panel's view thread
            self.area.children = [
                w.HTML(
                    f"the {html.escape(title)} view failed: "
                    f"{html.escape(type(err).__name__)}: {html.escape(str(err))}"
                )
            ]
