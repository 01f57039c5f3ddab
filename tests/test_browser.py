"""The notebooks in a real JupyterLab, driven through headless Chromium with Playwright.

This is what a user does: open the notebook, run all, look at the rendered tables, press
the panel's buttons. Chromium comes from Debian (`.ci/run` installs it); Playwright's own
browser download is never used. Without Chromium these tests skip, loudly, except in CI
(CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "Chromium not found: the browser tests did NOT run (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    """A JupyterLab server on a copy of the notebooks, with fresh settings and workspaces."""
    browser_path = chromium_path()
    home = Path(tempfile.mkdtemp(prefix="tapemagic-lab-"))
    notebooks = home / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    port, token = free_port(), uuid.uuid4().hex
    # JupyterLab 4 renders only the cells in view; render them all, so every output and
    # prompt is in the page for the test to read.
    tracker = home / "settings/@jupyterlab/notebook-extension/tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    news = home / "settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
    )
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
        "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False", "--allow-root",
    ]  # fmt: skip
    log = open(home / "lab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(
                        f"jupyter lab did not start: {(home / 'lab.log').read_text()}"
                    ) from None
                time.sleep(0.5)
        yield {
            "url": f"http://127.0.0.1:{port}",
            "token": token,
            "chromium": browser_path,
            "root": notebooks,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright gives each launch a new empty profile directory of its own.
        browser = p.chromium.launch(executable_path=lab["chromium"], args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_notebook(browser, lab, name: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    workspace = uuid.uuid4().hex[:8]
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-NotebookPanel-notebook", timeout=90_000)
    page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=90_000)
    return page


def run_all(page, timeout_s: float = 180) -> None:
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    wait_for_prompts(page, timeout_s)


def run_new_cell(page, code: str, timeout_s: float = 120) -> None:
    """Add a cell at the end of the visible notebook, run it and wait until it is done."""
    page.evaluate(
        """async (code) => {
            const app = window.jupyterapp;
            const notebook = app.shell.currentWidget.content;
            notebook.activeCellIndex = notebook.widgets.length - 1;
            await app.commands.execute('notebook:insert-cell-below');
            notebook.activeCell.model.sharedModel.setSource(code);
            await app.commands.execute('notebook:run-cell');
        }""",
        code,
    )
    wait_for_prompts(page, timeout_s)


def wait_for_prompts(page, timeout_s: float) -> None:
    prompts = page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt")
    deadline = time.monotonic() + timeout_s
    time.sleep(1)
    while time.monotonic() < deadline:
        texts = prompts.all_inner_texts()
        if texts and all(re.fullmatch(r"\[\d+\]:", t.strip()) for t in texts):
            return
        time.sleep(0.5)
    raise AssertionError(f"cells still running after {timeout_s}s: {prompts.all_inner_texts()}")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def set_theme(page, theme: str) -> None:
    """Switch JupyterLab's theme ("JupyterLab Light" or "JupyterLab Dark") and wait for it."""
    page.evaluate(
        f"window.jupyterapp.commands.execute('apputils:change-theme', {{theme: '{theme}'}})"
    )
    light = "true" if "Light" in theme else "false"
    page.wait_for_selector(f"body[data-jp-theme-light='{light}']", state="attached", timeout=30_000)
    time.sleep(0.5)  # the theme's stylesheet applies after the attribute changes


def brightness(element) -> float:
    """Mean brightness (0 black, 1 white) of an element as the page shows it."""
    import io

    from matplotlib.image import imread

    pixels = imread(io.BytesIO(element.screenshot()), format="png")
    return float(pixels[..., :3].mean())


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


def epoch_of(panel) -> int:
    match = re.search(r"epoch ([\d,]+)", panel.locator(".tapemagic-status").inner_text())
    assert match, panel.locator(".tapemagic-status").inner_text()
    return int(match.group(1).replace(",", ""))


def settled(panel, timeout_s: float = 15) -> int:
    """The epoch counter once two readings 0.4 s apart agree (a loaded machine lags)."""
    last, deadline = epoch_of(panel), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.4)
        now = epoch_of(panel)
        if now == last:
            return now
        last = now
    raise AssertionError("the epoch counter never held still")


def wait_until(condition, timeout_s: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


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
    assert panels.count() == 2  # four were shown; the last cell closes two of them
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
    assert len(statuses) == 3  # the two left open by the notebook and the MLP one added above
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    saved = lab["root"] / "02_training_panel.ipynb"
    wait_until(lambda: WIDGET_STATE in saved.read_text(), 30, "the save with the widget state")
    state = json.loads(saved.read_text())["metadata"]["widgets"][WIDGET_STATE]["state"]
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    # Each plot's PNG is saved as a base64 buffer for its "value".
    pngs = [b["data"] for m in images for b in m.get("buffers", []) if b["path"] == ["value"]]
    assert len(pngs) == 3 and all(d.startswith("iVBORw0KGgo") for d in pngs), len(pngs)
    page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")

    reopened = open_notebook(browser, lab, "02_training_panel.ipynb")  # a new kernel
    try:
        panels = reopened.locator(".jp-NotebookPanel:visible .tapemagic-panel")
        wait_until(lambda: panels.count() == 3, 60, "the panels drawn from the saved state")
        plots = panels.locator("img.tapemagic-plot")
        assert plots.count() == 3
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
        assert "Error displaying widget" not in outputs
    finally:
        reopened.close()
