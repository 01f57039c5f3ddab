"""The first two notebooks in a real JupyterLab, driven through headless Chromium with
Playwright: what a user does. Open the notebook, run all, look at the rendered tables,
press the panel's buttons (browser_support.py has the server, the browser and the page
actions).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from browser_support import (
    ARTIFACTS,
    brightness,
    epoch_of,
    open_notebook,
    run_all,
    run_new_cell,
    screenshot,
    set_theme,
    settled,
    wait_until,
)


def test_tape_basics_renders_the_derivative_tables(lab, browser):
    page = open_notebook(browser, lab, "01_tape_basics.ipynb")
    try:
        run_all(page)
        outputs = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output")
        tables = page.locator(".jp-NotebookPanel:visible .jp-RenderedHTMLCommon table")
        texts = tables.all_inner_texts()
        assert any("∂y/∂x" in t and "8.0" in t for t in texts), texts[:3]
        assert any("∂²y/∂x²" in t and "2.0" in t for t in texts)
        assert any("None" in t for t in texts)  # the broken cases
        all_text = " ".join(outputs.all_inner_texts())
        assert "leaves TensorFlow" in all_text and "Traceback" not in all_text
        page.locator(".jp-NotebookPanel:visible img[src^='data:image/png']").first.wait_for()
        screenshot(page, "01_tape_basics.png")
        # The --plot figure reads on the dark theme too: no white block behind it.
        figures = page.locator(
            ".jp-NotebookPanel:visible .jp-RenderedHTMLCommon "
            "img[src^='data:image/png']:not([alt='heatmap'])"
        )
        set_theme(page, "JupyterLab Dark")
        try:
            screenshot(page, "01_tape_basics_dark.png")
            assert figures.count() >= 1
            assert all(brightness(f) < 0.35 for f in figures.all())
        finally:
            set_theme(page, "JupyterLab Light")
    finally:
        page.close()


@pytest.fixture(scope="module")
def training_page(lab, browser):
    """Notebook 02, run all once for the tests below (they run in this file's order)."""
    page = open_notebook(browser, lab, "02_training_panel.ipynb")
    try:
        run_all(page)
        yield page
    finally:
        page.close()


def test_training_panel_buttons_in_the_browser(training_page):
    page = training_page
    assert page.locator("text=Error displaying widget").count() == 0
    panels = page.locator(".jp-NotebookPanel:visible .tapemagic-panel")
    assert panels.count() == 4  # the two shown that the last cell closed stay, controls off
    closed = panels.filter(has_text="closed at epoch")
    assert closed.count() == 2
    assert all(b.is_disabled() for b in closed.locator("button:has-text('Train')").all())
    panel = panels.first
    wait_until(lambda: epoch_of(panel) == 6, what="the 6 epochs run from code")
    screenshot(page, "02_training_panel.png")

    epochs_box = panel.locator(".tapemagic-epochs input")
    epochs_box.fill("10000000")
    epochs_box.press("Enter")
    plot = panel.locator(".tapemagic-plot")
    first_plot = plot.get_attribute("src")
    panel.locator("button:has-text('Train')").click()
    wait_until(lambda: epoch_of(panel) > 100, 10, "the epoch counter to move")
    wait_until(lambda: plot.get_attribute("src") != first_plot, 10, "the plot to change")
    panel.screenshot(path=str(ARTIFACTS / "panel_mid_run.png"))

    panel.locator("button:has-text('Pause')").click()
    pause = panel.locator("button:has-text('Resume')")
    pause.wait_for(timeout=10_000)
    held = settled(panel)  # the run holds after its current call; the view catches up
    time.sleep(1.0)
    assert epoch_of(panel) == held, "the counter moved while paused"

    panel.locator("button:has-text('Step')").click()
    wait_until(lambda: epoch_of(panel) == held + 1, 10, "one more epoch")
    time.sleep(1.0)
    assert epoch_of(panel) == held + 1, "Step ran more than one epoch"

    panel.locator("button:has-text('Resume')").click()
    wait_until(lambda: epoch_of(panel) > held + 100, 10, "the run to go on after Resume")

    panel.locator("button:has-text('Stop')").click()
    train = panel.locator("button:has-text('Train')")
    wait_until(train.is_enabled, 10, "Train to be enabled again after Stop")
    stopped = settled(panel)
    time.sleep(1.0)
    assert epoch_of(panel) == stopped, "the counter moved after Stop"
    assert "stopped" in panel.locator(".tapemagic-status").inner_text()

    panel.locator("button:has-text('Reset')").click()
    wait_until(lambda: epoch_of(panel) == 0, 10, "the reset")
    screenshot(page, "02_training_panel_after.png")


MLP_PANEL = """live = TrainingPanel(
    model=make_mlp(), loss="mse", data=(features, target), validation_split=0.2,
    optimizer="adam", learning_rate=0.003, batch_size=64, seed=0, epochs=100000,
)
live.run(1)  # compiled once, so that Train trains at once
live"""


def test_mlp_plot_keeps_up_and_reads_on_the_dark_theme(training_page):
    page = training_page
    run_new_cell(page, MLP_PANEL)
    panel = page.locator(".jp-NotebookPanel:visible .tapemagic-panel").last
    wait_until(lambda: epoch_of(panel) == 1, 30, "the MLP's first epoch")
    plot = panel.locator(".tapemagic-plot")
    before = plot.get_attribute("src")
    panel.locator("button:has-text('Train')").click()
    clicked, changed = time.monotonic(), None
    while time.monotonic() - clicked < 5:  # a behaviour check, with a generous bound
        if plot.get_attribute("src") != before:
            changed = time.monotonic() - clicked
            break
        time.sleep(0.05)
    assert changed is not None and changed < 1.0, f"the plot changed after {changed} s"
    wait_until(lambda: epoch_of(panel) > 3, 30, "a few MLP epochs")
    assert brightness(plot) > 0.65  # light theme: the page's white through the plot
    set_theme(page, "JupyterLab Dark")
    try:
        screenshot(page, "02_training_panel_dark.png")
        panel.screenshot(path=str(ARTIFACTS / "panel_dark.png"))
        assert brightness(plot) < 0.35  # dark theme: no white block
    finally:
        panel.locator("button:has-text('Stop')").click()
        set_theme(page, "JupyterLab Light")


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_a_saved_notebook_reopens_with_its_panels_drawn(lab, browser, training_page):
    """tapemagic ships a JupyterLab settings default (overrides.d) that saves the widgets'
    state with the notebook: reopened later, with a new kernel that has none of the panels'
    models, the panels show their last plot and status instead of "Error displaying widget".
    Runs last: it shuts notebook 02's kernel down."""
    page = training_page
    setting = page.evaluate(
        """async () => {
            const s = await window.jupyterapp.serviceManager.settings.fetch(
                '@jupyter-widgets/jupyterlab-manager:plugin');
            return {default: s.schema.properties.saveState.default, raw: s.raw};
        }"""
    )
    # The default comes from the shipped overrides.d file; the user's own settings are untouched.
    assert setting["default"] is True and "saveState" not in setting["raw"], setting
    panels = page.locator(".jp-NotebookPanel:visible .tapemagic-panel")
    statuses = [s.strip() for s in panels.locator(".tapemagic-status").all_inner_texts()]
    # Every panel the notebook showed, the two it closed at its end included (a closed
    # panel keeps its view), and the MLP one added above.
    assert len(statuses) == 5, statuses
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    saved = lab["root"] / "02_training_panel.ipynb"
    wait_until(lambda: WIDGET_STATE in saved.read_text(), 30, "the save with the widget state")
    state = json.loads(saved.read_text())["metadata"]["widgets"][WIDGET_STATE]["state"]
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    # Each plot's PNG is saved as a base64 buffer for its "value".
    pngs = [b["data"] for m in images for b in m.get("buffers", []) if b["path"] == ["value"]]
    # Six: the panel made (`resumed`) but never shown is in the kernel's models too.
    assert len(pngs) == 6 and all(d.startswith("iVBORw0KGgo") for d in pngs), len(pngs)
    page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")

    reopened = open_notebook(browser, lab, "02_training_panel.ipynb")  # a new kernel
    try:
        panels = reopened.locator(".jp-NotebookPanel:visible .tapemagic-panel")
        wait_until(lambda: panels.count() == 5, 60, "the panels drawn from the saved state")
        plots = panels.locator("img.tapemagic-plot")
        assert plots.count() == 5
        for plot in plots.all():
            assert re.match(r"(blob|data):", plot.get_attribute("src") or ""), plot
            assert plot.evaluate("img => img.complete && img.naturalWidth") > 100
        after = [s.strip() for s in panels.locator(".tapemagic-status").all_inner_texts()]
        assert after == statuses
        panels.first.scroll_into_view_if_needed()
        screenshot(reopened, "02_training_panel_reopened.png")
        panels.nth(1).screenshot(path=str(ARTIFACTS / "panel_reopened.png"))
        outputs = " ".join(
            reopened.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").all_inner_texts()
        )
        assert "Error displaying widget" not in outputs and "Loading widget" not in outputs
        assert outputs.count("closed at epoch") == 2  # closed by the notebook's last cell
    finally:
        reopened.close()
