"""notebooks/04_live_fit.ipynb, executed top to bottom in a real kernel, read as a user would:
the tutorial's numbers, and each live view's final state as the saved notebook keeps it
(a PNG of the plot and a one-line summary beside the widget view)."""

from __future__ import annotations

import base64

import pytest
from test_notebooks import execute, output_of

SEED_SGD = ["19.457", "8.134604", "4.186867", "2.810262", "2.330071", "2.162411"]


@pytest.fixture(scope="module")
def nb():
    return execute("04_live_fit.ipynb")


def views(nb, source_start: str) -> list[dict]:
    """The display outputs of the first code cell starting with source_start."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(source_start):
            return [o.data for o in cell.outputs if o.output_type == "display_data"]
    raise AssertionError(f"no cell starts with {source_start!r}")


def test_fit_with_live_panel_gives_the_tutorial_losses(nb):
    printed = output_of(nb, 'print("first losses:"')
    first = printed.split("first losses: [")[1].split("]")[0].split(", ")
    seed_adam = [19.457, 10.991247, 5.402445, 2.563472, 2.0541918]
    assert [float(v) for v in first] == pytest.approx(seed_adam, abs=2e-5)
    assert "epochs run: 300" in printed
    [view] = views(nb, "X = tf.constant")
    assert "application/vnd.jupyter.widget-view+json" in view
    assert view["text/plain"].startswith("LivePanel: stopped · epoch 300/300")
    assert base64.b64decode(view["image/png"]).startswith(b"\x89PNG")


def test_the_tutorial_loop_with_three_added_lines(nb):
    loop = next(c.source for c in nb.cells if c.source.startswith("a = tf.Variable"))
    assert loop.count("# added") == 3
    printed = output_of(nb, "losses = board.history()").splitlines()
    assert [line.split()[-1] for line in printed[:6]] == SEED_SGD
    assert printed[6].startswith("after 2000 epochs: Y = ")
    [view] = views(nb, "a = tf.Variable")
    assert view["text/plain"].startswith("live: stopped · epoch 2,000/2,000")
    assert base64.b64decode(view["image/png"]).startswith(b"\x89PNG")


def test_mlp_with_validation_and_early_stopping(nb):
    printed = output_of(nb, "h = mlp_history.history")
    epochs = int(printed.split()[0])
    assert 1 <= epochs <= 8 and "val_loss" in printed and "mae" in printed
    [view] = views(nb, "rng = np.random")
    summary = view["text/plain"]
    assert summary.startswith(f"LivePanel: stopped · epoch {epochs}/8")
    assert "samples/s" in summary and "val_mae" in summary
