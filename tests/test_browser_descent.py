"""Notebook 03 in a real JupyterLab through headless Chromium: the landscape view draws and
redraws while a run goes, the race and the MLP slice show; a screenshot of the landscape
mid-run (test-artifacts/; with TAPEMAGIC_README_IMAGES=1 also the README's picture,
notebooks/images/descent-landscape.png)."""

from __future__ import annotations

import os
import time

from browser_support import (
    ARTIFACTS,
    ROOT,
    open_notebook,
    run_all,
    run_new_cell,
    screenshot,
    wait_until,
)


def test_the_landscape_draws_the_descent_live(lab, browser):
    page = open_notebook(browser, lab, "03_descent.ipynb")
    try:
        run_all(page)
        assert page.locator("text=Error displaying widget").count() == 0
        notebook = page.locator(".jp-NotebookPanel:visible")
        views = notebook.locator(".tapemagic-landscape")
        assert views.count() == 3  # the seed's panel, the too-steep one, the MLP's
        plot = views.first.locator("img.tapemagic-landscape-plot")
        wait_until(lambda: (plot.get_attribute("src") or "").startswith("blob:"),
                   what="the landscape drawn")  # fmt: skip
        assert not views.first.locator("select").is_visible()  # (a, b): no direction choice
        mlp = views.nth(2)
        assert mlp.locator("select").is_visible()
        assert "PCA of the path" in mlp.locator("select").inner_text().replace("\xa0", " ")
        assert mlp.locator("img.tapemagic-landscape-line").is_visible()
        # mid-run: from the first weights again, slowly, so the path is seen being drawn
        run_new_cell(page, "panel.reset()\npanel.trainer.learning_rate = 1e-6\n"
                           "panel.train(2_000_000)")  # fmt: skip
        status = notebook.locator(".tapemagic-panel").first.locator(".tapemagic-status")
        wait_until(lambda: "running" in status.inner_text(), what="the run to start")
        first = plot.get_attribute("src")
        wait_until(lambda: plot.get_attribute("src") != first, what="the landscape redrawn")
        time.sleep(3)  # part way along the valley's floor
        assert "running" in status.inner_text()
        shown = notebook.locator(".tapemagic-panel").first
        ARTIFACTS.mkdir(exist_ok=True)
        shown.screenshot(path=str(ARTIFACTS / "descent-landscape.png"))
        if os.environ.get("TAPEMAGIC_README_IMAGES"):  # the README's picture, made anew
            shown.screenshot(path=str(ROOT / "notebooks" / "images" / "descent-landscape.png"))
        screenshot(page, "03_descent.png")
        run_new_cell(page, "panel.stop()\npanel.wait()")
        race = notebook.locator(".tapemagic-compare")
        assert race.count() == 1
        assert race.locator("img[src^='blob:']").count() == 2  # the losses and the paths
        assert "adam 0.07: epoch 205" in race.inner_text()
    finally:
        page.close()
