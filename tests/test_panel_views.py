"""The panel's view chooser: views are made when first chosen, refreshed while shown and
while a run goes on, and a view that fails says so in its place without stopping training."""

from __future__ import annotations

import ipywidgets as w
import pytest
from test_panel import seed_panel, until

from tapemagic.jupyter import panel_views
from tapemagic.jupyter.panel_views import LOSS, ViewSpec


class CountingView:
    """A view that shows how many epochs it has seen."""

    made = 0
    title = "epochs"

    def __init__(self, panel) -> None:
        CountingView.made += 1
        self.panel = panel
        self.widget = w.HTML()
        self.forced = 0

    def refresh(self, force: bool) -> None:
        self.forced += force
        self.widget.value = f"{len(self.panel.trainer.history)} epochs"


class BrokenView(CountingView):
    title = "broken"

    def refresh(self, force: bool) -> None:
        raise RuntimeError("no picture today")


@pytest.fixture
def views(monkeypatch):
    monkeypatch.setattr(
        panel_views, "VIEWS",
        (ViewSpec("epochs", __name__, "CountingView"), ViewSpec("broken", __name__, "BrokenView")),
    )  # fmt: skip
    CountingView.made = 0


def test_no_extra_views_hides_the_chooser(monkeypatch):
    monkeypatch.setattr(panel_views, "VIEWS", ())
    panel, *_ = seed_panel()
    try:
        assert panel.views.buttons.layout.display == "none"
        assert panel.views.area.children[0].children[0] is panel.plot
    finally:
        panel.close()


def test_the_panel_offers_the_landscape_and_gradients_views():
    panel, *_ = seed_panel()
    try:
        assert panel.views.buttons.options == (LOSS, "landscape", "gradients")
        assert panel.views.buttons.layout.display != "none"
    finally:
        panel.close()


def test_a_view_is_made_when_chosen_and_follows_the_run(views):
    panel, *_ = seed_panel()
    try:
        assert panel.views.buttons.options == (LOSS, "epochs", "broken")
        assert CountingView.made == 0  # nobody chose it yet
        panel.views.buttons.value = "epochs"  # as a click does
        view = panel.views.view("epochs")
        assert CountingView.made == 1 and panel.views.area.children == (view.widget,)
        assert view.widget.value == "0 epochs"
        panel.run(7)
        until(lambda: view.widget.value == "7 epochs")
        assert view.forced >= 2  # shown, and the run's end
        panel.views.show(LOSS)
        assert panel.views.area.children[0].children[0] is panel.plot
        assert bytes(panel.plot.value)  # the loss plot was drawn when shown again
        panel.views.show("epochs")
        assert CountingView.made == 1  # made once
    finally:
        panel.close()


def test_a_failing_view_says_so_and_training_goes_on(views):
    panel, a, _ = seed_panel()
    try:
        panel.views.show("broken")
        shown = panel.views.area.children[0]
        assert "the broken view failed: RuntimeError: no picture today" in shown.value
        panel.run(5)
        assert len(panel.trainer.history) == 5 and float(a.numpy()) != 0.0
    finally:
        panel.close()


def test_an_unknown_view_is_named(views):
    panel, *_ = seed_panel()
    try:
        with pytest.raises(ValueError, match="no view 'landscap': choose one of loss, epochs"):
            panel.views.show("landscap")
    finally:
        panel.close()
