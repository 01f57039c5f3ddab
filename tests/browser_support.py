"""What the browser tests share: a JupyterLab server and headless Chromium (session-wide
fixtures in conftest.py, made from the functions here), and the page actions a user does:
open a notebook, run cells, wait for prompts, switch theme, take screenshots.

Chromium comes from Debian (`.ci/run` installs it); Playwright's own browser download is
never used. Without Chromium the browser tests skip, loudly, except in CI (CI=true), where
they fail.
"""

from __future__ import annotations

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
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def jupyterlab() -> Iterator[dict]:
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


@contextmanager
def chromium(lab: dict) -> Iterator:
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


def start_new_cell(page, code: str) -> None:
    """Add a cell at the end of the visible notebook and start it, without waiting for it."""
    page.evaluate(
        """async (code) => {
            const app = window.jupyterapp;
            const notebook = app.shell.currentWidget.content;
            notebook.activeCellIndex = notebook.widgets.length - 1;
            await app.commands.execute('notebook:insert-cell-below');
            notebook.activeCell.model.sharedModel.setSource(code);
            app.commands.execute('notebook:run-cell');
        }""",
        code,
    )


def run_new_cell(page, code: str, timeout_s: float = 120) -> None:
    """Add a cell at the end of the visible notebook, run it and wait until it is done."""
    start_new_cell(page, code)
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
