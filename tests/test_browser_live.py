"""Notebook 04 in a real JupyterLab through headless Chromium: the live views render, and
Stop, clicked in the page while a `fit` cell is still running, ends that fit at the batch
where the click arrives; the cell then finishes and the view says where it stopped."""

from __future__ import annotations

from browser_support import (
    open_notebook,
    run_all,
    screenshot,
    start_new_cell,
    wait_for_prompts,
    wait_until,
)

LONG_FIT = """clicks = []
class Watch(tf.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        record = live_panel.log
        live_panel.live_view.stop_button.on_click(lambda _: clicks.append(record.batches_run))
live_panel = LivePanel(batch_size=8)
long_history = mlp.fit(features, target, epochs=500, batch_size=8, verbose=0,
                       callbacks=[live_panel, Watch()])
print("clicked at", clicks, "ended at", live_panel.log.batches_run)"""


def test_stop_in_the_page_ends_a_running_fit(lab, browser):
    page = open_notebook(browser, lab, "04_live_fit.ipynb")
    try:
        run_all(page)
        assert page.locator("text=Error displaying widget").count() == 0
        notebook = page.locator(".jp-NotebookPanel:visible")
        views = notebook.locator(".tapemagic-live")
        assert views.count() == 3  # fit, the tutorial's loop, the MLP
        for i in range(3):
            assert views.nth(i).locator(".tapemagic-status").inner_text().startswith("stopped")
            assert (
                views.nth(i).locator("img.tapemagic-plot").get_attribute("src").startswith("blob:")
            )
        start_new_cell(page, LONG_FIT)
        wait_until(lambda: views.count() == 4, what="the new live view")
        view = views.nth(3)
        status = view.locator(".tapemagic-status")
        wait_until(lambda: "running · epoch" in status.inner_text(), 120, "the fit to run")
        wait_until(lambda: "batch" in status.inner_text(), 60, "a batch done")
        screenshot(page, "04_live_fit_running.png")
        stop = view.locator(".widget-button", has_text="Stop")
        assert stop.is_enabled()
        stop.click()
        wait_for_prompts(page, 120)
        text = status.inner_text()
        assert text.startswith("stopped · epoch") and "/500" in text
        assert "(Stop)" in view.locator(".tapemagic-messages").inner_text()
        assert not stop.is_enabled()
        out = notebook.locator(".jp-CodeCell").last.locator(".jp-OutputArea-output").last
        printed = out.inner_text().split()
        # "clicked at [B] ended at B": no batch ran after the one whose hook let the click in
        assert printed[:2] == ["clicked", "at"] and printed[2] == f"[{printed[-1]}]"
        screenshot(page, "04_live_fit_stopped.png")
    finally:
        page.close()
