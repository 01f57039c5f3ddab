"""The panel's "gradients" view: a PNG of each layer's gradient norm and update ratio, the
findings in words, and a clear note when health is off or a draw fails."""

from __future__ import annotations

import html

import keras
import numpy as np
from test_panel import until

from tapemagic.display.health_plot import MAX_LINES, HealthPlot, shown_layers
from tapemagic.jupyter.gradients_view import OFF_TEXT, GradientsView
from tapemagic.jupyter.panel import TrainingPanel
from tapemagic.training.health_table import GradientTable

RNG = np.random.default_rng(0)
X = RNG.normal(size=(128, 8)).astype("float32")
Y = (X[:, :1] * X[:, 1:2]).astype("float32")
PNG = b"\x89PNG\r\n\x1a\n"


def sigmoid_panel(layers: int = 9, **kwargs) -> TrainingPanel:
    keras.utils.set_random_seed(0)
    hidden = [keras.layers.Dense(32, activation="sigmoid") for _ in range(layers)]
    model = keras.Sequential([keras.Input((8,)), *hidden, keras.layers.Dense(1)])
    return TrainingPanel(
        model=model, loss="mse", data=(X, Y), optimizer="sgd", learning_rate=0.1,
        view="widget", **kwargs,
    )  # fmt: skip


def test_the_view_draws_each_layer_and_shows_the_findings():
    panel = sigmoid_panel(9)
    try:
        panel.views.show("gradients")
        view = panel.views.view("gradients")
        assert isinstance(view, GradientsView) and panel.views.area.children == (view.widget,)
        assert view.findings.value == "<i>no findings so far</i>"
        panel.run(8)
        until(lambda: not panel.trainer.running and len(panel.trainer.history) == 8)
        until(lambda: "vanishing" in view.findings.value)
        view.refresh(force=True)
        assert bytes(view.image.value).startswith(PNG)
        assert view._plot.lines_drawn == 2 * 10  # 10 layers, in both panels
        first = panel.trainer.findings[0]
        assert html.escape(first.text) in view.findings.value
        assert first.text in panel.trainer.messages  # the panel's messages show them too
        assert view.note.value == ""
    finally:
        panel.close()


def test_health_off_says_so():
    panel = sigmoid_panel(2, health=False)
    try:
        panel.views.show("gradients")
        view = panel.views.view("gradients")
        assert view.note.value == html.escape(OFF_TEXT)
        assert view.image.layout.display == "none"
    finally:
        panel.close()


def test_a_failed_draw_is_shown_in_the_view():
    panel = sigmoid_panel(2)
    try:
        panel.run(2)
        until(lambda: not panel.trainer.running)
        view = GradientsView(panel)

        class Broken(HealthPlot):
            def render(self, table):
                raise RuntimeError("no ink")

        view._plot = Broken()
        view.refresh(force=True)  # does not raise
        assert "could not be drawn: RuntimeError: no ink" in view.note.value
    finally:
        panel.close()


def test_many_layers_are_summarised():
    n = 15
    table = GradientTable([f"l{i}/kernel" for i in range(n)], [f"l{i}" for i in range(n)],
                          list(range(n)))  # fmt: skip
    values = np.logspace(-6, 0, n)[None, :] * np.ones((30, 1))
    table.append(range(30), values, values * 100, values * 0.1)
    plot = HealthPlot()
    png = plot.render(table)
    assert png.startswith(PNG)
    assert plot.lines_drawn == 2 * MAX_LINES
    assert shown_layers(n)[0] == 0 and shown_layers(n)[-1] == n - 1
    labels = [t.get_text() for t in plot.grad_axes.get_legend().get_texts()]
    assert labels[0] == "all 15 layers" and labels[1:] == [f"l{i}" for i in shown_layers(n)]
    colours = {line.get_label(): line.get_color() for line in plot.grad_axes.get_lines()}
    ratio_colours = {line.get_label(): line.get_color() for line in plot.ratio_axes.get_lines()}
    assert colours == ratio_colours  # a layer keeps its colour in both panels


def test_an_empty_table_draws_a_frame():
    table = GradientTable(["a"], ["a"], [0])
    plot = HealthPlot()
    assert plot.render(table).startswith(PNG) and plot.lines_drawn == 0
